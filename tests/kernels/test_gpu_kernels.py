"""The kernel ops on a real CUDA GPU: every GPU backend (Triton, and the CUDA extension fastwsss._C where an op
has one) against the op's pure-PyTorch reference computed on the CPU, mostly in float64.

Run on a GPU machine, with compiled Triton rather than the interpreter that tests/conftest.py sets by default:

    TRITON_INTERPRET=0 pytest tests/kernels/test_gpu_kernels.py -q

Without a GPU every test skips. With TRITON_INTERPRET=1 the cases that launch Triton kernels skip (the CUDA
walk then builds its taps with torch and still runs). The "cuda" cases skip unless the extension is built
(FASTWSSS_BUILD_CUDA=1 pip install -e .). bench/gpu.sh sets FASTWSSS_REQUIRE_GPU=1, under which every such skip
fails instead (tests/conftest.py).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence

import pytest
import torch

from fastwsss.kernels import cam_norm as cam_norm_module
from fastwsss.kernels import confounder_attention as ca_module
from fastwsss.kernels import random_walk as rw_module
from fastwsss.kernels.cam_norm import cam_norm, cam_norm_reference
from fastwsss.kernels.confounder_attention import confounder_attention, confounder_attention_reference
from fastwsss.kernels.dispatch import _cuda_extension_loaded, kernel_backend, preference, registered_backends
from fastwsss.kernels.random_walk import random_walk, random_walk_reference, random_walk_reference_dense

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

DEVICE = torch.device("cuda")
INTERPRETED = "compiled Triton on a GPU: run with TRITON_INTERPRET=0"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_BACKENDS = ["triton", "cuda"]


def _name(value: object) -> str:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return "x".join("K" if v is None else str(v) for v in value) if isinstance(value, tuple) else str(value)


def require(implementations: dict[str, Callable], backend: str, uses_triton: bool = True) -> Callable:
    """The implementation of `backend`, or skip saying why it cannot run here."""
    if backend not in implementations:
        pytest.skip(f"no {backend} backend registered (is triton installed?)")
    if backend == "cuda" and not _cuda_extension_loaded():
        pytest.skip("the CUDA extension fastwsss._C is not built (FASTWSSS_BUILD_CUDA=1 pip install -e .)")
    if uses_triton and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip(INTERPRETED)
    return implementations[backend]


def poison_allocator(numel: int, dtype: torch.dtype) -> None:
    """Leave a freed NaN block in the caching allocator, which usually hands it to the next allocation of that size
    (the op's torch.empty output): an element the kernel never writes then reads NaN. Best effort, no out= here."""
    if DEVICE.type == "cuda":
        poison = torch.full((max(1, numel),), float("nan"), dtype=dtype, device=DEVICE)
        del poison


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTWSSS_KERNELS", raising=False)


# ----------------------------------------------------------------------------------------------------------------
# cam_norm
# ----------------------------------------------------------------------------------------------------------------

CAM_SHAPES = [
    (1, 1, 1, 1),  # one pixel of one plane
    (2, 1, 7, 5),  # one class, odd sizes
    (1, 20, 13, 17),  # VOC's 20 classes, 221 pixels: a partial block
    (3, 80, 9, 11),  # COCO's 80 classes: many small planes packed ROWS to a program
    (2, 4, 1, 33),  # a single row
    (1, 3, 64, 1),  # a single column
    (2, 1, 45, 47),  # 2115 pixels: three BLOCK = 1024 steps, the last partial
    (2, 3, 257, 259),  # big planes, few of them: split into chunks (partial maxima, then a scale launch)
    (16, 20, 128, 128),  # 320 planes of 16384 pixels, the largest unsplit plane
]
# Against cam_norm_reference in the same dtype (the contract: fp32 maths, one rounding to the dtype). fp32: Triton
# does the reference's operations with an IEEE division; the CUDA kernel multiplies by the reciprocal (<= 2 ulp of
# a value <= 1). fp16/bf16: one ulp of the dtype below 1.0 (2^-11, 2^-8), where the fp32 values straddle a rounding.
CAM_TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# Against the float64 maps: fp32 rounding, or half an ulp of the dtype below 1.0 (round to nearest on a GPU), x2.
CAM_TOL64 = {torch.float32: 1e-6, torch.float16: 5e-4, torch.bfloat16: 4e-3}


def random_cams(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(shape) * 7 + len(shape))
    return (torch.randn(shape, generator=generator) * 3.0).to(dtype)


def cam_norm_float64(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = cams.double().relu()
    return x / (x.amax(dim=(2, 3), keepdim=True) + eps)


def check_cam_norm(out: torch.Tensor, cams: torch.Tensor) -> None:
    """`out` (on DEVICE) against both references of the CPU tensor `cams`: no NaN, every element compared."""
    assert out.device.type == DEVICE.type and out.dtype == cams.dtype and out.shape == cams.shape
    out = out.cpu()
    assert not out.isnan().any()
    torch.testing.assert_close(out, cam_norm_reference(cams), rtol=0, atol=CAM_TOL[cams.dtype])
    torch.testing.assert_close(out.double(), cam_norm_float64(cams), rtol=0, atol=CAM_TOL64[cams.dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", CAM_SHAPES, ids=_name)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cam_norm(backend: str, shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    op = require(cam_norm_module._IMPLEMENTATIONS, backend, uses_triton=backend == "triton")
    cams = random_cams(shape, dtype)
    poison_allocator(cams.numel(), dtype)
    check_cam_norm(op(cams.to(DEVICE), 1e-5), cams)


@pytest.mark.parametrize("view", ["crop", "transpose", "channels_last"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cam_norm_noncontiguous_views(backend: str, view: str) -> None:
    """Views on the device, read through their strides (a crop of big planes also takes the split path)."""
    op = require(cam_norm_module._IMPLEMENTATIONS, backend, uses_triton=backend == "triton")
    base = random_cams((2, 3, 150, 161), torch.float32).to(DEVICE)
    cams = {
        "crop": base[..., 3:147, 1:160],
        "transpose": base.transpose(2, 3),
        "channels_last": base[:, :, :20, :30].contiguous(memory_format=torch.channels_last),
    }[view]
    check_cam_norm(op(cams, 1e-5), cams.cpu())


# ----------------------------------------------------------------------------------------------------------------
# confounder_attention (forward and backward)
# ----------------------------------------------------------------------------------------------------------------

# (B, n, hw): B in {1, 3, 16}, n in {1, 2, 20, 80}, hw in {1, 7 x 9, 64 x 64, 128 x 128 (small B and n only)}.
CA_SHAPES = [
    (1, 1, 1),
    (3, 20, 1),
    (1, 2, 63),
    (16, 1, 63),
    (3, 80, 63),
    (16, 20, 63),
    (1, 80, 4096),
    (16, 2, 4096),
    (3, 20, 4096),
    (16, 80, 4096),
    (1, 2, 16384),
    (3, 20, 16384),
]
# ||out - ref|| / ||ref|| against the reference in float64 on the same (upcast) inputs. The kernels' tl.dot use
# input_precision="ieee" (no TF32, which would be ~1e-3 off and fail), so fp32 differs by fp32 rounding and
# summation order only (expected well under the tolerances; not yet run on a GPU); fp16/bf16 add
# one rounding of every result to the dtype, at most the unit roundoff (2^-11, 2^-8): allowed 4x that.
CA_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
CA_GRAD_TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def ca_inputs(batch: int, n: int, hw: int, dtype: torch.dtype) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([xm, w1, w2, confounders], upstream gradient) on the CPU: masks in [0, 1], scores spread over a few units."""
    generator = torch.Generator().manual_seed(batch * 10007 + n * 101 + hw)
    xm = torch.rand(batch, hw, generator=generator)
    confounders = torch.rand(n, hw, generator=generator)
    w1 = torch.randn(n, hw, generator=generator) * 3.0 / math.sqrt(hw)
    w2 = torch.randn(n, hw, generator=generator) * 3.0 / math.sqrt(hw)
    upstream = torch.randn(batch, hw, generator=generator)
    return [t.to(dtype) for t in (xm, w1, w2, confounders)], upstream.to(dtype)


def ca_run(
    fn: Callable,
    inputs: Sequence[torch.Tensor],
    upstream: torch.Tensor,
    device: torch.device,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output, [grad xm, grad w1, grad w2, grad confounders]) of `fn` on fresh leaves on `device`, on the CPU."""
    leaves = [t.detach().to(device).clone().requires_grad_() for t in inputs]
    out = fn(*leaves, None if prior is None else prior.to(device))
    out.backward(upstream.to(device))
    return out.detach().cpu(), [t.grad.cpu() for t in leaves]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected||, or ||got|| where expected is exactly zero (n = 1 has zero gradients)."""
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    norm = expected.norm().item()
    return ((got - expected).norm().item() / norm) if norm > 0 else got.norm().item()


def check_ca(fn: Callable, shape: tuple[int, int, int], dtype: torch.dtype, prior: torch.Tensor | None = None) -> None:
    inputs, upstream = ca_inputs(*shape, dtype)
    out, grads = ca_run(fn, inputs, upstream, DEVICE, prior)
    again, grads_again = ca_run(fn, inputs, upstream, DEVICE, prior)
    # Deterministic reductions (per-split partial sums summed by torch, no atomics): bitwise-identical reruns.
    assert torch.equal(out, again) and all(torch.equal(a, b) for a, b in zip(grads, grads_again, strict=True))
    upcast = [t.double() for t in inputs]
    prior64 = None if prior is None else prior.double()
    expected, expected_grads = ca_run(
        confounder_attention_reference, upcast, upstream.double(), torch.device("cpu"), prior64
    )
    assert out.dtype == dtype and out.shape == (shape[0], shape[2])
    assert relative_error(out, expected) <= CA_TOL[dtype]
    for name, grad, want, leaf in zip(("xm", "w1", "w2", "confounders"), grads, expected_grads, inputs, strict=True):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
        assert relative_error(grad, want) <= CA_GRAD_TOL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", CA_SHAPES, ids=_name)
def test_confounder_attention_triton(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    check_ca(require(ca_module._IMPLEMENTATIONS, "triton"), shape, dtype)


# ----------------------------------------------------------------------------------------------------------------
# random_walk
# ----------------------------------------------------------------------------------------------------------------

# (batch, or None for (K, h, w) cams; classes, height, width, exp_times, radius); beta is 10 throughout.
RW_CASES = [
    (None, 3, 1, 1, 8, 5),  # 1 x 1: only the self tap
    (None, 1, 7, 5, 3, 5),  # one class, odd sizes
    (2, 21, 7, 5, 1, 3),  # radius 3, two images
    (2, 3, 45, 47, 8, 5),  # a different edge per image, 256 steps
    (None, 21, 45, 47, 0, 3),  # a single step
    (None, 21, 94, 125, 8, 5),  # a 500 x 375 VOC image at stride 4, all VOC classes, 256 steps
    (2, 1, 94, 125, 1, 3),
    (2, 3, 128, 128, 3, 5),
    (None, 3, 128, 128, 8, 3),
]
RW_PARAMS = [(case, torch.float32) for case in RW_CASES] + [
    (case, dtype) for case in (RW_CASES[3], RW_CASES[7]) for dtype in (torch.float16, torch.bfloat16)
]
# Relative to max|ref| (float64 on the CPU). fp32: rounding of the fp32 weights and sums grows linearly with the
# 2^exp_times steps (tests/kernels/test_random_walk.py: ~1e-6 per step; the CPU fp32 reference itself is 0.9e-4 to
# 1.9e-4 off after 256 steps on a 94 x 125 grid), so max(1e-5, 2e-6 * 2^exp_times). fp16/bf16 add one output ulp.
RW_HALF_TOL = {torch.float32: 0.0, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def fp32_tolerance(exp_times: int) -> float:
    return max(1e-5, 2e-6 * 2**exp_times)


def rw_inputs(batch: int | None, classes: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU (cams, edge): cams in [0, 1]; boundary noise, strong boundaries, exact 0.0 and 1.0 (walls) pixels."""
    generator = torch.Generator().manual_seed(height * 1000 + width * 10 + classes + (batch or 0))
    images = batch or 1
    cams = torch.rand(images, classes, height, width, generator=generator)
    edge = torch.rand(images, height, width, generator=generator) * 0.3
    strong = torch.rand(edge.shape, generator=generator)
    edge = torch.where(strong < 0.15, 0.5 + 0.5 * torch.rand(edge.shape, generator=generator), edge)
    pick = torch.rand(edge.shape, generator=generator)
    edge = torch.where(pick < 0.1, 1.0, torch.where(pick > 0.9, 0.0, edge))
    return (cams, edge) if batch is not None else (cams[0], edge[0])


def max_relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    return ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


@functools.cache
def rw_expected(case: tuple, dtype: torch.dtype) -> torch.Tensor:
    """random_walk_reference in float64 on the CPU, on the inputs rounded to `dtype` (cached across backends)."""
    batch, classes, height, width, exp_times, radius = case
    cams, edge = (t.to(dtype).double() for t in rw_inputs(batch, classes, height, width))
    return random_walk_reference(cams, edge, 10.0, exp_times, radius)


@pytest.mark.parametrize(("case", "dtype"), RW_PARAMS, ids=[f"{_name(c)}-{_name(d)}" for c, d in RW_PARAMS])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_random_walk(backend: str, case: tuple, dtype: torch.dtype) -> None:
    # The cuda backend builds its taps with Triton's kernel 1 where Triton runs compiled, else with torch.
    op = require(rw_module._IMPLEMENTATIONS, backend, uses_triton=backend == "triton")
    batch, classes, height, width, exp_times, radius = case
    cams, edge = (t.to(dtype) for t in rw_inputs(batch, classes, height, width))
    out = op(cams.to(DEVICE), edge.to(DEVICE), 10.0, exp_times, radius)
    assert out.device.type == DEVICE.type and out.dtype == dtype and out.shape == cams.shape
    assert not out.isnan().any()
    tolerance = fp32_tolerance(exp_times) + RW_HALF_TOL[dtype]
    assert max_relative_error(out, rw_expected(case, dtype)) <= tolerance


@functools.cache
def dense_expected() -> torch.Tensor:
    """IRNet's dense walk on the 94 x 125 grid, K = 3, 256 steps, in float64 on DEVICE (n x n = 1.1 GB)."""
    cams, edge = rw_inputs(None, 3, 94, 125)
    dense = random_walk_reference_dense(
        cams.to(DEVICE).double(), edge.to(DEVICE).double(), 10.0, 8, 5, dtype=torch.float64, max_pixels=94 * 125
    )
    return dense.cpu()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_random_walk_equals_the_dense_walk(backend: str) -> None:
    """The kernels' target: outputs equal within 1e-4 of the maximum, on a VOC-sized grid with exp_times = 8.

    In fp64 (Triton keeps fp64) that should hold with a wide margin (not yet run on a GPU). In fp32 the floor
    is fp32 itself: after 256 steps a fp32 walk is about 2e-4 off the fp64 one (1.1e-4 to 2.4e-4 measured on the
    CPU, README "Benchmarks"), so fp32 is held to fp32_tolerance(8) = 5.1e-4.
    """
    op = require(rw_module._IMPLEMENTATIONS, backend, uses_triton=backend == "triton")
    cams, edge = rw_inputs(None, 3, 94, 125)
    expected = dense_expected()
    assert max_relative_error(op(cams.to(DEVICE), edge.to(DEVICE), 10.0, 8, 5), expected) <= fp32_tolerance(8)
    if backend == "triton":
        out64 = op(cams.to(DEVICE).double(), edge.to(DEVICE).double(), 10.0, 8, 5)
        assert out64.dtype == torch.float64
        assert max_relative_error(out64, expected) <= 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Dispatch and the public entry points on CUDA tensors
# ----------------------------------------------------------------------------------------------------------------

OPS = {
    "cam_norm": cam_norm_module._IMPLEMENTATIONS,
    "confounder_attention": ca_module._IMPLEMENTATIONS,
    "random_walk": rw_module._IMPLEMENTATIONS,
}


@pytest.mark.parametrize("op", list(OPS))
def test_kernel_backend_on_cuda_prefers_cuda_then_triton(op: str) -> None:
    """The first backend of the preference order (measured table, else cuda > triton) that can run here."""
    implemented = registered_backends(op)
    assert implemented == tuple(OPS[op])
    runnable = {"reference", "triton"} | ({"cuda"} if _cuda_extension_loaded() else set())
    expected = next(b for b in preference(op, torch.float32) if b in implemented and b in runnable)
    assert kernel_backend(torch.zeros(1, device=DEVICE), op) == expected


def test_public_functions_match_the_references_on_cuda() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip(INTERPRETED)
    cams = random_cams((3, 20, 45, 47), torch.float32)
    check_cam_norm(cam_norm(cams.to(DEVICE)), cams)

    prior = torch.softmax(torch.linspace(-2.0, 3.0, 20), dim=0)
    check_ca(confounder_attention, (3, 20, 4096), torch.float32, prior)

    case = (2, 3, 45, 47, 3, 5)
    cams, edge = rw_inputs(*case[:4])
    out = random_walk(cams.to(DEVICE), edge.to(DEVICE), 10.0, case[4], case[5])
    assert out.device.type == DEVICE.type
    assert max_relative_error(out, rw_expected(case, torch.float32)) <= fp32_tolerance(case[4])


# ----------------------------------------------------------------------------------------------------------------
# The batched walk, graph capture, NaN
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_batched_walk_equals_the_per_image_walk(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """VOC-like mixed grids (landscape, portrait, 1-3 classes) in one padded batch, per-image results."""
    from fastwsss.kernels.random_walk_batch import random_walk_batch

    require(rw_module._IMPLEMENTATIONS, backend, uses_triton=backend == "triton")
    monkeypatch.setenv("FASTWSSS_KERNELS", f"random_walk={backend}")
    shapes = [(3, 94, 125), (1, 125, 94), (2, 94, 125), (1, 63, 83)]
    inputs = [rw_inputs(None, *shape) for shape in shapes]
    cams, edges = [c.to(DEVICE) for c, _ in inputs], [e.to(DEVICE) for _, e in inputs]
    got = random_walk_batch(cams, edges, 10.0, 8, 5)
    for c, e, g in zip(cams, edges, got, strict=True):
        assert max_relative_error(g, random_walk(c, e, 10.0, 8, 5)) <= fp32_tolerance(8)


def test_triton_walk_replays_from_a_cuda_graph() -> None:
    """After one call has cached its tables, the Triton walk (taps + 2^k steps) captures into a CUDA graph: no
    host synchronisation on its path (a sync inside a capture raises)."""
    from fastwsss.benchmarking.kernel_bench import _graphed

    op = require(rw_module._IMPLEMENTATIONS, "triton")
    cams, edge = (t.to(DEVICE) for t in rw_inputs(16, 3, 94, 125))
    want = op(cams, edge, 10.0, 8, 5)
    graphed = _graphed(op)
    graphed(cams, edge, 10.0, 8, 5)
    torch.testing.assert_close(graphed(cams, edge, 10.0, 8, 5), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cam_norm_nan_like_the_reference(backend: str) -> None:
    op = require(cam_norm_module._IMPLEMENTATIONS, backend, uses_triton=backend == "triton")
    cams = random_cams((2, 3, 300, 310), torch.float32)
    cams[0, 1, 7, 9] = float("nan")
    cams[1, 2, 3, 4] = float("inf")
    got = op(cams.to(DEVICE), 1e-5).cpu()
    want = cam_norm_reference(cams)
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, rtol=0, atol=CAM_TOL[torch.float32], equal_nan=True)
