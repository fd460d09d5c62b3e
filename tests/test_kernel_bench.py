"""The kernel benchmark harness on the CPU with tiny cases (the real sizes run on a GPU: docs/gpu.md)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import fastwsss.benchmarking.kernel_bench as kb
from fastwsss.benchmarking.kernel_bench import (
    Case,
    _attention_case,
    _cam_norm_case,
    _walk_case,
    bytes_touched,
    run_case,
)
from fastwsss.cli import app


def test_cpu_rows_time_eager_only_and_report_rates() -> None:
    device = torch.device("cpu")
    rows = run_case(Case("cam_norm", "tiny", _cam_norm_case(2, 8)), device, repeats=2, use_compile=False, dense=False)
    assert [r["backend"] for r in rows] == ["eager"]  # triton/cuda rows need a GPU
    row = rows[0]
    assert row["status"] == "ok" and row["median_ms"] > 0 and row["p10_ms"] <= row["p90_ms"]
    assert row["gbps"] > 0 and row["speedup_vs_eager"] == 1.0
    assert row["bytes"] == 2 * 16 * 2 * 8 * 8 * 4  # the cams read once, the output written once
    attention = run_case(Case("confounder_attention", "tiny", _attention_case(4, True)), device, 2, False, False)
    assert attention[0]["status"] == "ok" and attention[0]["gflops"] > 0


def test_bytes_come_from_the_tensors_of_the_call() -> None:
    half = torch.zeros(2, 3, 4, 5, dtype=torch.float16)
    assert bytes_touched((half, 1e-5), torch.zeros(2, 3, 4, 5, dtype=torch.float16), False) == 2 * 120 * 2
    xm = torch.zeros(2, 6, requires_grad=True)
    c = torch.zeros(3, 6)
    out = torch.zeros(2, 6)
    forward = (12 + 18 + 12) * 4
    # backward: the output gradient, the inputs again, and the gradient of xm (c needs none)
    assert bytes_touched((xm, c, None), out, True) == forward + (12 + 12 + 18 + 12) * 4


def test_dense_rows_run_next_to_the_sparse_walk() -> None:
    """IRNet's dense walk takes (K, h, w) maps: the benchmark's (B, K, h, w) inputs go through it per image."""
    case = Case("random_walk", "tiny", _walk_case(5, 6, 2, batch=2, exp_times=2))
    rows = run_case(case, torch.device("cpu"), repeats=1, use_compile=False, dense=True)
    assert [r["backend"] for r in rows] == ["eager", "dense (IRNet)"]
    assert all(r["status"] == "ok" for r in rows), rows
    eager = rows[0]
    assert eager["speedup_vs_dense"] > 0 and 0 <= eager["max_diff_vs_dense"] <= 1e-5
    assert eager["max_diff_vs_eager"] == 0.0 and rows[1]["max_diff_vs_eager"] <= 1e-5
    cams, edge, beta, exp_times, radius = case.make(torch.device("cpu"), 0)["args"]
    dense = kb._dense_walk(cams, edge, beta, exp_times, radius)
    sparse = kb.implementations("random_walk")["reference"](cams, edge, beta, exp_times, radius)
    torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=1e-5)


def test_rows_reach_the_json_as_they_are_measured(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after its second row still leaves the first two rows in the JSON."""
    out = tmp_path / "k.json"
    seen: list[int] = []
    real = kb.run_case

    def counting_emit(case, device, repeats, use_compile, dense, copy_gbps=None, emit=None):  # noqa: ANN001, ANN202
        def wrapped(row: dict) -> None:
            emit(row)
            seen.append(len(json.loads(out.read_text())["rows"]))
            if len(seen) == 2:
                raise KeyboardInterrupt

        return real(case, device, repeats, use_compile, dense, copy_gbps, wrapped)

    monkeypatch.setattr(kb, "run_case", counting_emit)
    with pytest.raises(KeyboardInterrupt):
        kb.run_kernel_bench(torch.device("cpu"), 1, None, False, False, out, tiny=True)
    assert seen == [1, 2] and len(json.loads(out.read_text())["rows"]) == 2


def test_cli_rejects_unknown_op_and_writes_json(tmp_path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "kernels", "--only", "nope"])
    assert bad.exit_code == 2 and "confounder_attention" in bad.output
    out = tmp_path / "k.json"
    done = runner.invoke(app, ["bench", "kernels", "--only", "cam_norm", "--device", "cpu", "--repeats", "1",
                               "--no-compile", "--tiny", "--json", str(out)])
    assert done.exit_code == 0, done.output
    payload = json.loads(out.read_text())
    assert payload["copy"]["gbps"] > 0
    assert {r["case"] for r in payload["rows"]} == {c.label for c in kb.TINY_CASES if c.op == "cam_norm"}


def test_verdict_names_every_missed_target() -> None:
    row = {"op": "cam_norm", "backend": "triton", "median_ms": 1.0, "speedup_vs_eager": 4.0, "gbps": 900.0}
    assert kb._verdict(row, compile_ms=2.0, copy_gbps=1000.0) == "met"
    assert kb._verdict(row, compile_ms=1.2, copy_gbps=1000.0) == "< 1.5x torch.compile"
    assert kb._verdict({**row, "gbps": 700.0}, 2.0, 1000.0) == "< 80% of copy bandwidth"
    walk = {"op": "random_walk", "backend": "cuda", "median_ms": 1.0, "speedup_vs_eager": 50.0,
            "speedup_vs_dense": 400.0, "max_diff_vs_dense": 2e-4}  # fmt: skip
    assert kb._verdict(walk, None, 1000.0) == (
        "no torch.compile row (the walk's 2^k-step loop is not compiled); < 1000x IRNet's dense walk; "
        "differs from the dense walk by > 0.0001 of the maximum"
    )
