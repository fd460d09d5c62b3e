"""Backend choice (kernels/dispatch.py): never the Triton interpreter on CUDA tensors, per-op forcing, the
measured per-op, per-dtype preference table, and the table writer bench/preference.py. CUDA tensors are
stood in for by an object with the attributes the dispatcher reads, so this runs on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import fastwsss.kernels.cam_norm  # noqa: F401  (registers its ops)
import fastwsss.kernels.random_walk  # noqa: F401
from fastwsss.errors import ConfigError
from fastwsss.kernels import dispatch
from fastwsss.kernels.dispatch import forced_backend, kernel_backend, preference

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CudaStandIn:
    dtype: torch.dtype = torch.float32
    is_cuda: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cuda", 0))


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTWSSS_KERNELS", raising=False)
    monkeypatch.delenv("FASTWSSS_KERNEL_TABLE", raising=False)
    monkeypatch.setattr(dispatch, "_triton_installed", lambda: True)


def _extension(monkeypatch: pytest.MonkeyPatch, built: bool) -> None:
    monkeypatch.setattr(dispatch, "_cuda_extension_loaded", lambda: built)


def test_interpreter_never_runs_on_cuda_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    _extension(monkeypatch, False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_backend(CudaStandIn(), "random_walk") == "reference"
    monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="interpreter on CUDA tensors"):
        kernel_backend(CudaStandIn(), "random_walk")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("FASTWSSS_KERNELS")
    assert kernel_backend(CudaStandIn(), "random_walk") == "triton"
    assert not dispatch.triton_runs_on(torch.zeros(1))  # the CPU needs the interpreter


def test_per_op_forcing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTWSSS_KERNELS", "reference, random_walk=triton")
    assert forced_backend("random_walk") == "triton" and forced_backend("cam_norm") == "reference"
    assert forced_backend() == "reference"
    monkeypatch.setenv("FASTWSSS_KERNELS", "cam_norm=reference")
    assert forced_backend("cam_norm") == "reference" and forced_backend("random_walk") is None
    for bad in ("cam_norms=triton", "random_walk=fast", "gpu"):
        monkeypatch.setenv("FASTWSSS_KERNELS", bad)
        with pytest.raises(ConfigError, match="FASTWSSS_KERNELS"):
            forced_backend("cam_norm")


def test_measured_table_orders_backends_per_op_and_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _extension(monkeypatch, True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    table = tmp_path / "preference.json"
    table.write_text(json.dumps({"ops": {"cam_norm": {"float16": ["triton", "cuda"], "float32": ["cuda", "triton"]}}}))
    monkeypatch.setenv("FASTWSSS_KERNEL_TABLE", str(table))
    assert kernel_backend(CudaStandIn(torch.float16), "cam_norm") == "triton"
    assert kernel_backend(CudaStandIn(torch.float32), "cam_norm") == "cuda"
    assert preference("cam_norm", torch.bfloat16) == dispatch.PREFERENCE  # not measured: the default order
    assert preference("cam_norm", torch.float16) == ("triton", "cuda", "reference")
    _extension(monkeypatch, False)  # the measured first choice cannot run: the next one
    assert kernel_backend(CudaStandIn(torch.float32), "cam_norm") == "triton"


def test_bad_table_is_a_config_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("{", json.dumps({"ops": {"cam_norm": {"float32": ["gpu"]}}}), json.dumps({"rows": []})):
        table = tmp_path / f"t{len(text)}.json"
        table.write_text(text)
        monkeypatch.setenv("FASTWSSS_KERNEL_TABLE", str(table))
        with pytest.raises(ConfigError, match=str(table)):
            preference("cam_norm", torch.float32)


def test_shipped_table_is_valid_and_claims_no_measurement() -> None:
    shipped = json.loads(dispatch.TABLE_PATH.read_text())
    assert shipped["device"] is None and shipped["ops"] == {}
    assert preference("random_walk", torch.float32) == dispatch.PREFERENCE


def _payload(device: str, rows: list[tuple[str, str, str, str, float]]) -> dict:
    return {"environment": {"device": device, "gpu": device},
            "rows": [{"op": op, "case": case, "backend": b, "dtype": dt, "status": "ok", "median_ms": ms}
                     for op, case, b, dt, ms in rows]}  # fmt: skip


def test_preference_writer_ranks_by_common_cases(tmp_path: Path) -> None:
    rows = [("cam_norm", "a", "eager", "float32", 4.0), ("cam_norm", "a", "triton", "float32", 1.0),
            ("cam_norm", "a", "cuda", "float32", 2.0), ("cam_norm", "b", "eager", "float32", 8.0),
            ("cam_norm", "b", "triton", "float32", 4.0), ("cam_norm", "b", "cuda", "float32", 1.0),
            ("cam_norm", "c", "triton", "float32", 100.0),  # no cuda row: not compared
            ("cam_norm", "a", "compile", "float32", 0.1),  # not a dispatcher backend
            ("cam_norm", "h", "eager", "float16", 1.0), ("cam_norm", "h", "cuda", "float16", 3.0)]  # fmt: skip
    gpu = tmp_path / "kernels.json"
    gpu.write_text(json.dumps(_payload("nvidia-h200", rows)))
    cpu = tmp_path / "cpu.json"
    cpu.write_text(json.dumps(_payload("cpu", [("random_walk", "x", "eager", "float32", 1.0)])))
    out = tmp_path / "preference.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.preference", str(gpu), str(cpu), str(tmp_path / "none.json"),
                           "--json", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "CPU results, skipped" in done.stdout and "none.json: not found" in done.stdout
    table = json.loads(out.read_text())
    # geometric means: triton sqrt(1 * 4) = 2, cuda sqrt(2 * 1) = 1.41, eager sqrt(4 * 8) = 5.7
    assert table["ops"] == {"cam_norm": {"float32": ["cuda", "triton", "reference"], "float16": ["reference", "cuda"]}}
    assert table["cases_compared"]["cam_norm"]["float32"] == 2 and table["device"] == "nvidia-h200"
    assert dispatch._load_table(str(out))["cam_norm"]["float16"] == ("reference", "cuda")
