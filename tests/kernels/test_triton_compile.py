"""The Triton kernels compile for sm_90 on a machine without a GPU (see triton_compile_check.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_cam_norm_and_walk_kernels_compile_for_sm90() -> None:
    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, str(HERE / "triton_compile_check.py")], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = {line.removeprefix("compiled ") for line in done.stdout.splitlines() if line.startswith("compiled ")}
    assert compiled == {"_cam_norm_fused_kernel", "_partial_max_kernel", "_cam_norm_scale_kernel", "_taps_kernel",
                        "_step_kernel"}, done.stdout
