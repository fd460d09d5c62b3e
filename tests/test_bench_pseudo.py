"""bench/pseudo.py on the CPU at a tiny size: both paths run, the dense and fused pseudo masks agree."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

import fastwsss.stages.pseudo as pseudo_stage
from fastwsss.kernels.random_walk import random_walk

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_pseudo_bench_cpu_fused_and_dense(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # bench/ is a folder of the repository, not of the package
    monkeypatch.delenv("FASTWSSS_KERNELS", raising=False)
    bench = importlib.import_module("bench.pseudo")
    out = tmp_path / "pseudo.json"
    argv = ["--device", "cpu", "--images", "2", "--size", "64x48", "--backbone", "resnet18_quarter",
            "--dense-images", "1", "--threads", "1", "--batch", "2", "--json", str(out)]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert pseudo_stage.random_walk is random_walk  # the stage's walk is restored
    payload = json.loads(out.read_text())
    rows = {r["path"]: r for r in payload["results"]}
    assert set(rows) == {"fused", "batched 2", "dense"} and all(r["status"] == "ok" for r in rows.values())
    assert rows["fused"]["backend"] == "reference" and rows["fused"]["images"] == 2 and rows["dense"]["images"] == 1
    assert all(r["images_per_s"] > 0 and 0 < r["walk_share_pct"] <= 100 for r in rows.values())
    assert 99.0 <= rows["fused"]["agreement_vs_dense_pct"] <= 100.0
    assert rows["batched 2"]["batch"] == 2 and rows["batched 2"]["images"] == 2
    assert rows["batched 2"]["agreement_vs_dense_pct"] == rows["fused"]["agreement_vs_dense_pct"]
    assert payload["speedup_fused_vs_dense"] > 0 and payload["settings"]["grid"] == [12, 16]
