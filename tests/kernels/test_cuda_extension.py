"""The optional CUDA extension (csrc/): it compiles wherever nvcc is present; it runs only on a GPU.

On this project's CPU machine the compile test is all that can be checked; on a GPU the same file
also compares the compiled kernels with the references (run: `pytest tests/kernels/test_cuda_extension.py`).
The installed `fastwsss._C` (FASTWSSS_BUILD_CUDA=1 pip install -e .) is tested where it imports; otherwise the
sources are compiled with torch's `cpp_extension.load`, which needs ninja (skipped, saying so, without it).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fastwsss.kernels.cam_norm import cam_norm_reference
from fastwsss.kernels.random_walk import apply_taps, transition_taps

CSRC = Path(__file__).resolve().parents[2] / "csrc"

def _cuda_home() -> Path | None:
    """CUDA_HOME, else /usr/local/cuda, else the toolkit around the nvcc on PATH; None without nvcc."""
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").is_file():
            return Path(candidate)
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parents[1] if nvcc else None


CUDA_HOME = _cuda_home()

pytestmark = pytest.mark.gpu  # FASTWSSS_REQUIRE_GPU=1 (bench/gpu.sh) turns these skips into failures


@pytest.fixture(scope="module")
def extension(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a compiled module
    try:
        return importlib.import_module("fastwsss._C")
    except ImportError:
        pass
    if CUDA_HOME is None:
        pytest.skip("nvcc is not installed: the CUDA extension cannot be compiled here")
    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed: cpp_extension.load needs it (or install with FASTWSSS_BUILD_CUDA=1)")
    os.environ["CUDA_HOME"] = str(CUDA_HOME)
    import torch.utils.cpp_extension as cpp_extension

    cpp_extension.CUDA_HOME = str(CUDA_HOME)  # read once at import; another test may have imported it first
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    sources = sorted(str(p) for p in CSRC.glob("*.cu")) + [str(CSRC / "bindings.cpp")]
    return cpp_extension.load(name="fastwsss_C_test", sources=sources, build_directory=str(tmp_path_factory.mktemp("cext")),
                extra_cflags=["-O2"], extra_cuda_cflags=["-O2"], verbose=False)


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(p.name for p in CSRC.glob("*.cu")))
def test_kernels_compile_for_sm90_without_spills_or_stack(source: str, tmp_path: Path) -> None:
    """nvcc alone (no torch headers): every kernel builds for sm_90 with no local memory (a tap table indexed at
    run time, a register array or the WalkTaps parameter copied to the stack would show as a stack frame)."""
    if CUDA_HOME is None:
        pytest.skip("nvcc is not installed: the CUDA kernels cannot be compiled here")
    done = subprocess.run(
        [str(CUDA_HOME / "bin" / "nvcc"), "-std=c++17", "-arch=sm_90", "-O3", "-Xptxas", "-v", "-c", str(CSRC / source),
         "-o", str(tmp_path / "k.o")], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stderr
    assert "Compiling entry function" in report
    assert re.findall(r"(\d+) bytes stack frame", report) and set(re.findall(r"(\d+) bytes stack frame", report)) == {"0"}
    assert set(re.findall(r"(\d+) bytes spill stores", report)) == {"0"}


@pytest.mark.slow
def test_extension_compiles_and_exposes_the_ops(extension) -> None:  # noqa: ANN001
    assert callable(extension.cam_norm) and callable(extension.random_walk_steps)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA tensor"):
            extension.cam_norm(torch.rand(1, 1, 2, 2), 1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to run the compiled kernels")
def test_kernels_equal_the_references_on_gpu(extension) -> None:  # noqa: ANN001
    cams = torch.randn(3, 20, 13, 17, device="cuda")
    torch.testing.assert_close(extension.cam_norm(cams, 1e-5), cam_norm_reference(cams), atol=1e-6, rtol=1e-6)
    edge = torch.rand(2, 1, 11, 9, device="cuda")
    x = torch.rand(2, 3, 11, 9, device="cuda")
    offsets, weights = transition_taps(edge, 10.0, 5)
    dy, dx = [o[0] for o in offsets], [o[1] for o in offsets]
    for launch in (0, 1, 2):  # auto, one launch per step, one persistent cooperative launch
        for steps in (0, 1, 3, 16, 256):
            got = extension.random_walk_steps(x, weights.contiguous(), dy, dx, steps, launch)
            want = apply_taps(x.double(), offsets, weights.double(), steps).float()
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"launch {launch}, {steps} steps")
    # More elements than co-resident threads: the persistent kernel's blocks loop over several tiles.
    edge = torch.rand(1, 1, 300, 310, device="cuda")
    x = torch.rand(1, 21, 300, 310, device="cuda")
    offsets, weights = transition_taps(edge, 10.0, 5)
    for launch in (1, 2):
        got = extension.random_walk_steps(x, weights.contiguous(), dy, dx, 8, launch)
        torch.testing.assert_close(got, apply_taps(x, offsets, weights, 8), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to run the compiled kernels")
def test_cam_norm_dtypes_nan_and_split_planes_on_gpu(extension) -> None:  # noqa: ANN001
    """fp16/bf16 in their own dtype (no fp32 copy), NaN like the reference, and few large planes (chunked)."""
    for dtype, tolerance in ((torch.float16, 1e-3), (torch.bfloat16, 8e-3)):
        cams = torch.randn(2, 5, 33, 47, device="cuda").to(dtype)
        out = extension.cam_norm(cams, 1e-5)
        assert out.dtype == dtype
        torch.testing.assert_close(out, cam_norm_reference(cams), atol=tolerance, rtol=0)
    cams = torch.randn(1, 2, 512, 512, device="cuda")  # 2 planes, 262144 pixels: the partial-maxima path
    cams[0, 1, 100, 200] = float("nan")
    want = cam_norm_reference(cams)
    got = extension.cam_norm(cams, 1e-5)
    assert got[0, 1].isnan().all() and torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)  # the reference's fp32 operations
    cams = torch.randn(2, 21, 512, 512, device="cuda")  # 88 MB: launched in L2-sized groups of planes
    torch.testing.assert_close(extension.cam_norm(cams, 1e-5), cam_norm_reference(cams), atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to run the compiled kernels")
def test_walk_tiles_radii_and_device_checks_on_gpu(extension) -> None:  # noqa: ANN001
    """Grids that end inside a 32 x 8 tile, radius 3 and 7 (other halos), and weights off the device."""
    for (height, width), radius in (((37, 45), 3), ((9, 70), 7), ((1, 1), 5)):
        edge = torch.rand(2, 1, height, width, device="cuda")
        x = torch.rand(2, 3, height, width, device="cuda")
        offsets, weights = transition_taps(edge, 10.0, radius)
        dy, dx = [o[0] for o in offsets], [o[1] for o in offsets]
        want = apply_taps(x.double(), offsets, weights.double(), 16).float()
        for launch in (0, 1, 2):
            got = extension.random_walk_steps(x, weights.contiguous(), dy, dx, 16, launch)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{height}x{width} r{radius} launch {launch}")
    with pytest.raises(RuntimeError, match="weights must be a CUDA tensor"):  # two GPUs would test "are on cuda:1"
        extension.random_walk_steps(x, weights.cpu().contiguous(), dy, dx, 1, 1)
