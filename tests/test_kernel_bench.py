"""The kernel benchmark harness on the CPU with tiny cases (the real sizes run on a GPU: README)."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.kernel_bench import Case, _attention_case, _cam_norm_case, run_case


def test_cpu_rows_time_eager_only_and_report_rates() -> None:
    device = torch.device("cpu")
    rows = run_case(Case("cam_norm", "tiny", _cam_norm_case(2, 8)), device, repeats=2, use_compile=False, dense=False)
    assert [r["backend"] for r in rows] == ["eager"]  # triton/cuda rows need a GPU
    row = rows[0]
    assert row["status"] == "ok" and row["median_ms"] > 0 and row["p10_ms"] <= row["p90_ms"]
    assert row["gbps"] > 0 and row["speedup_vs_eager"] == 1.0
    attention = run_case(Case("confounder_attention", "tiny", _attention_case(4, True)), device, 2, False, False)
    assert attention[0]["status"] == "ok" and attention[0]["gflops"] > 0


def test_cli_rejects_unknown_op_and_writes_json(tmp_path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "kernels", "--only", "nope"])
    assert bad.exit_code == 2 and "confounder_attention" in bad.output
    out = tmp_path / "k.json"
    done = runner.invoke(app, ["bench", "kernels", "--only", "cam_norm", "--device", "cpu", "--repeats", "1",
                               "--no-compile", "--json", str(out)])
    assert done.exit_code == 0, done.output
    payload = json.loads(out.read_text())
    assert payload["copy"]["gbps"] > 0 and {r["case"] for r in payload["rows"]} == {"B16 K20 32x32", "B16 K20 128x128"}
