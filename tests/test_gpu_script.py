"""bench/gpu.sh: its --check mode runs every phase's Python entry points on the CPU at toy sizes, so that no
phase of a short GPU lease can crash on a typo; failures and missing packages are never hidden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "gpu.sh"


def _run(tmp_path: Path, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PY": python, "OMP_NUM_THREADS": "1"}
    env.pop("FASTWSSS_KERNELS", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@pytest.mark.slow
def test_check_mode_runs_every_phase_on_the_cpu(tmp_path: Path) -> None:
    done = _run(tmp_path, "--check")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = tmp_path / "out"
    log = (out / "gpu.log").read_text()
    for phase in ("env", "setup", "tests", "kernels", "walk", "pseudo", "serving"):
        assert f"phase {phase} ok" in log
    assert "failed: none, skipped: none" in log
    kernels = json.loads((out / "kernels.json").read_text())
    walk = json.loads((out / "walk.json").read_text())
    assert kernels["rows"] and all(r["status"] == "ok" for r in kernels["rows"] + walk["rows"])
    assert {r["backend"] for r in walk["rows"]} == {"eager", "dense (IRNet)"}
    for name in ("env", "random_walk", "pseudo", "serving"):
        assert json.loads((out / f"{name}.json").read_text())
    table = json.loads((out / "preference.json").read_text())  # CPU rows have one backend each: nothing to order
    assert table["ops"] == {} and "kernels.json" in table["source"]


def test_a_failing_phase_is_reported_and_the_next_still_runs(tmp_path: Path) -> None:
    """A python that fails for the kernel benchmark only: `kernels` FAILED, `setup` ok, exit status non-zero."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nfor a in "$@"; do [ "$a" = bench.kernels ] && exit 7; done\n'
                    f'exec {sys.executable} "$@"\n')  # fmt: skip
    fake.chmod(0o755)
    done = _run(tmp_path, "--check", "kernels", "setup", python=str(fake))
    assert done.returncode != 0
    assert "phase kernels FAILED (exit 7)" in done.stdout and "phase setup ok" in done.stdout
    assert "failed: kernels," in done.stdout


def test_missing_packages_skip_the_phase_and_fail_the_run(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\n[ "$2" = bench.gpu_env ] && [ "$3" = --missing ] && echo onnx && exit 0\n'
                    f'exec {sys.executable} "$@"\n')  # fmt: skip
    fake.chmod(0o755)
    done = _run(tmp_path, "--check", "serving", python=str(fake))
    assert done.returncode != 0 and "phase serving SKIPPED: the machine lacks onnx" in done.stdout


def test_unknown_phase_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, "kernel")
    assert done.returncode == 2 and "unknown phase or option 'kernel'" in done.stderr


def test_required_gpu_tests_fail_instead_of_skipping(tmp_path: Path) -> None:
    """The GPU phase sets FASTWSSS_REQUIRE_GPU=1: on a machine where the GPU tests would skip they fail."""
    target = "tests/kernels/test_gpu_kernels.py::test_public_functions_match_the_references_on_cuda"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("FASTWSSS_REQUIRE_GPU", None)
    plain = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout
    required = subprocess.run(command, cwd=REPO_ROOT, env={**env, "FASTWSSS_REQUIRE_GPU": "1"}, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert required.returncode == 1 and "FASTWSSS_REQUIRE_GPU=1 and this GPU test skipped" in required.stdout
