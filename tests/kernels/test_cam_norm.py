"""cam_norm against its reference and a direct loop, the Triton kernels under
TRITON_INTERPRET=1 (tests/conftest.py), backend dispatch through FASTWSSS_KERNELS."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from fastwsss.errors import ConfigError
from fastwsss.kernels import cam_norm as cam_norm_module
from fastwsss.kernels import dispatch
from fastwsss.kernels.cam_norm import cam_norm, cam_norm_reference
from fastwsss.kernels.dispatch import kernel_backend, register_backends, registered_backends

# Output tolerance per dtype, relative to values in [0, 1]: one rounding of the fp32 result to the dtype.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
SHAPES = [(1, 1, 1, 1), (2, 1, 7, 5), (1, 20, 13, 17), (3, 80, 9, 11), (2, 4, 1, 33), (1, 3, 64, 1)]

HAS_TRITON = "triton" in cam_norm_module._IMPLEMENTATIONS
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
# Shapes for the Triton interpreter (~1 ms per program instance): every case runs a handful of programs.
TRITON_SHAPES = [
    (1, 1, 1, 1),
    (2, 1, 7, 5),
    (1, 20, 13, 17),
    (3, 80, 3, 5),
    (2, 4, 1, 33),
    (1, 3, 64, 1),
    (1, 2, 45, 47),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Triton vs the reference. fp32: the kernel computes exactly the reference's fp32 operations (max, + eps,
# IEEE-rounded division), so it is exact in practice; 1e-6 leaves room for a 2-ulp division. fp16: one ulp at
# 1.0 (the fp32 results are equal, the downcast may differ at most by one rounding). bf16: the interpreter
# truncates fp32 -> bf16 instead of rounding to nearest, one bf16 ulp (3.9e-3 below 1.0). fp64 is computed
# in fp32 like the reference.
TRITON_TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-6}


def direct_loop(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    out = torch.empty(cams.shape, dtype=torch.float64)
    for b in range(cams.shape[0]):
        for k in range(cams.shape[1]):
            plane = cams[b, k].double().clamp(min=0)
            out[b, k] = plane / (plane.max() + eps)
    return out


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTWSSS_KERNELS", raising=False)


@pytest.fixture
def op_all(monkeypatch: pytest.MonkeyPatch) -> str:
    """A throw-away op that claims every backend, removed from the registry after the test."""
    monkeypatch.setitem(dispatch._REGISTRY, "_test_op_all", ("reference", "triton", "cuda"))
    return "_test_op_all"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_and_loop(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    cams = (torch.randn(shape, generator=generator) * 3.0).to(dtype)
    out = cam_norm(cams)
    assert out.dtype == dtype and out.shape == cams.shape
    torch.testing.assert_close(out, cam_norm_reference(cams), rtol=0, atol=0)
    torch.testing.assert_close(out.double(), direct_loop(cams), rtol=0, atol=TOLERANCE[dtype])
    assert (out >= 0).all() and (out.float() <= 1).all()


def test_maximum_is_max_over_max_plus_eps() -> None:
    cams = torch.zeros(1, 2, 3, 4)
    cams[0, 0, 1, 2] = 2e-5
    cams[0, 1, 2, 3] = 7.0
    out = cam_norm(cams, eps=1e-5)
    assert out[0, 0].max().item() == pytest.approx(2 / 3, rel=1e-6)
    assert out[0, 1].max().item() == pytest.approx(7.0 / (7.0 + 1e-5), rel=1e-7)
    assert out[0, 0, 1, 2] == out[0, 0].max() and out[0, 1, 2, 3] == out[0, 1].max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_zero_and_negative_maps_stay_finite(dtype: torch.dtype) -> None:
    cams = torch.stack([torch.zeros(5, 6), -torch.rand(5, 6) - 0.1]).view(1, 2, 5, 6).to(dtype)
    out = cam_norm(cams)
    assert torch.isfinite(out.float()).all()
    assert (out == 0).all()


def test_relu_before_max() -> None:
    cams = torch.tensor([[[[-10.0, 1.0], [2.0, -3.0]]]])
    expected = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]]]]) / (2.0 + 1e-5)
    torch.testing.assert_close(cam_norm(cams), expected)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        cam_norm(torch.rand(3, 4, 5))
    with pytest.raises(TypeError, match="floating"):
        cam_norm(torch.ones(1, 1, 2, 2, dtype=torch.int64))


class TestDispatch:
    def test_default_on_cpu_is_reference(self) -> None:
        expected = ("reference", "triton") if HAS_TRITON else ("reference",)
        assert registered_backends("cam_norm") == (*expected, "cuda")
        assert kernel_backend(torch.zeros(1), "cam_norm") == "reference"

    def test_forcing_reference_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "reference")
        assert kernel_backend(torch.zeros(1), "cam_norm") == "reference"
        cams = torch.randn(2, 3, 4, 5)
        torch.testing.assert_close(cam_norm(cams), cam_norm_reference(cams))

    def test_invalid_value_names_variable_and_choices(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "fastest")
        with pytest.raises(ConfigError, match=r"FASTWSSS_KERNELS.*'fastest'.*reference, triton, cuda"):
            cam_norm(torch.rand(1, 1, 2, 2))

    def test_forcing_cuda_on_cpu_errors(self, monkeypatch: pytest.MonkeyPatch, op_all: str) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "cuda")
        with pytest.raises(RuntimeError, match="FASTWSSS_KERNELS=cuda.*not a CUDA device"):
            kernel_backend(torch.zeros(1), op_all)
        with pytest.raises(RuntimeError, match="FASTWSSS_KERNELS=cuda.*cam_norm.*not a CUDA device"):
            cam_norm(torch.rand(1, 1, 2, 2))

    def test_forcing_triton_needs_interpreter_on_cpu(self, monkeypatch: pytest.MonkeyPatch, op_all: str) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert kernel_backend(torch.zeros(1), op_all) == "triton"
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            kernel_backend(torch.zeros(1), op_all)

    def test_default_never_picks_triton_on_cpu(self, monkeypatch: pytest.MonkeyPatch, op_all: str) -> None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert kernel_backend(torch.zeros(1), op_all) == "reference"

    def test_unknown_op_and_bad_registration(self) -> None:
        with pytest.raises(KeyError, match="cam_norm"):
            kernel_backend(torch.zeros(1), "no_such_op")
        with pytest.raises(ValueError, match="reference"):
            register_backends("_bad", ("triton",))
        with pytest.raises(ValueError, match="among"):
            register_backends("_bad", ("reference", "opencl"))
        assert "_bad" not in dispatch._REGISTRY


def random_cams(shape: tuple[int, ...], dtype: torch.dtype, seed: int | None = None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(shape) if seed is None else seed)
    return (torch.randn(shape, generator=generator) * 3.0).to(dtype)


def noncontiguous_views() -> list[torch.Tensor]:
    """Awkward layouts: a crop (as cam_inference crops the padded maps), a transpose, channels-last, a broadcast."""
    base = random_cams((2, 3, 20, 31), torch.float32, seed=7)
    return [
        base[..., 1:18, 2:29],
        base.transpose(2, 3),
        base.permute(1, 0, 2, 3)[:, :, ::3],
        base[:, :, 1:6, 2:9].contiguous(memory_format=torch.channels_last),
        base[:1, :1, :4, :9].expand(2, 3, 4, 9),
    ]


@requires_triton
class TestCamNormTriton:
    @pytest.mark.parametrize("shape", TRITON_SHAPES)
    @pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
    def test_matches_reference_and_loop(self, shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
        cams = random_cams(shape, dtype)
        out = cam_norm_module._cam_norm_triton(cams, 1e-5)
        assert out.dtype == dtype and out.shape == cams.shape
        torch.testing.assert_close(out, cam_norm_reference(cams), rtol=0, atol=TRITON_TOLERANCE[dtype])
        torch.testing.assert_close(out.double(), direct_loop(cams), rtol=0, atol=TOLERANCE.get(dtype, 1e-6))
        assert (out >= 0).all() and (out.float() <= 1).all()

    @pytest.mark.parametrize("n_chunks", [2, 3, 40])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_split_planes_match_reference(self, n_chunks: int, dtype: torch.dtype) -> None:
        """The big-plane scheme (partial maxima, then scale per chunk), forced on small planes; 40 > chunks."""
        cams = random_cams((1, 2, 45, 47), dtype)
        out = cam_norm_module._cam_norm_triton(cams, 1e-5, n_chunks=n_chunks)
        torch.testing.assert_close(out, cam_norm_reference(cams), rtol=0, atol=TRITON_TOLERANCE[dtype])

    @pytest.mark.parametrize("view", range(5))
    @pytest.mark.parametrize("n_chunks", [None, 2])
    def test_noncontiguous_input(self, view: int, n_chunks: int | None) -> None:
        cams = noncontiguous_views()[view]
        assert not cams.is_contiguous()
        out = cam_norm_module._cam_norm_triton(cams, 1e-5, n_chunks=n_chunks)
        assert out.shape == cams.shape
        torch.testing.assert_close(out, cam_norm_reference(cams), rtol=0, atol=TRITON_TOLERANCE[torch.float32])

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("n_chunks", [None, 3])
    def test_zero_and_negative_planes_give_zeros(self, dtype: torch.dtype, n_chunks: int | None) -> None:
        positive = torch.rand(45, 47) + 0.5
        cams = torch.stack([torch.zeros(45, 47), -torch.rand(45, 47) - 0.1, positive]).view(1, 3, 45, 47).to(dtype)
        out = cam_norm_module._cam_norm_triton(cams, 1e-5, n_chunks=n_chunks)
        assert torch.isfinite(out.float()).all()
        assert (out[0, :2] == 0).all()
        torch.testing.assert_close(out, cam_norm_reference(cams), rtol=0, atol=TRITON_TOLERANCE[dtype])

    def test_single_pixel_and_eps(self) -> None:
        cams = torch.tensor([3.0, -2.0, 0.0, 2e-5]).view(2, 2, 1, 1)
        out = cam_norm_module._cam_norm_triton(cams, 1e-5)
        torch.testing.assert_close(out.flatten(), torch.tensor([3.0 / (3.0 + 1e-5), 0.0, 0.0, 2 / 3]))

    @pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)])
    def test_empty_input(self, shape: tuple[int, int, int, int]) -> None:
        out = cam_norm_module._cam_norm_triton(torch.zeros(shape), 1e-5)
        assert out.shape == shape and out.dtype == torch.float32

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
            cam_norm_module._cam_norm_triton(torch.rand(3, 4, 5), 1e-5)
        with pytest.raises(TypeError, match="floating"):
            cam_norm_module._cam_norm_triton(torch.ones(1, 1, 2, 2, dtype=torch.int64), 1e-5)


@requires_triton
class TestTritonDispatch:
    @pytest.fixture
    def spies(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
        """Count calls of the Triton implementations behind the public functions."""
        calls = {"cam_norm": 0}
        triton_norm = cam_norm_module._IMPLEMENTATIONS["triton"]

        def norm_spy(*args: object) -> torch.Tensor:
            calls["cam_norm"] += 1
            return triton_norm(*args)

        monkeypatch.setitem(cam_norm_module._IMPLEMENTATIONS, "triton", norm_spy)
        return calls

    def test_forced_triton_runs_the_kernels_on_cpu(self, monkeypatch: pytest.MonkeyPatch, spies: dict) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        cams = random_cams((2, 3, 7, 9), torch.float32)
        assert kernel_backend(cams, "cam_norm") == "triton"
        torch.testing.assert_close(cam_norm(cams), cam_norm_reference(cams), rtol=0, atol=1e-6)
        assert spies == {"cam_norm": 1}

    def test_default_on_cpu_does_not_run_triton(self, monkeypatch: pytest.MonkeyPatch, spies: dict) -> None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        cams = random_cams((1, 2, 3, 4), torch.float32)
        cam_norm(cams)
        assert spies == {"cam_norm": 0}

    def test_forced_triton_without_interpreter_errors(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="FASTWSSS_KERNELS=triton.*cam_norm.*TRITON_INTERPRET=1"):
            cam_norm(torch.rand(1, 1, 2, 2))


def test_module_imports_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without triton the module imports and registers only the references (and the optional CUDA extension)."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.setattr(dispatch, "_REGISTRY", dict(dispatch._REGISTRY))
    spec = importlib.util.spec_from_file_location("_cam_norm_without_triton", cam_norm_module.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.triton is None
    assert set(module._IMPLEMENTATIONS) == {"reference", "cuda"}
    assert registered_backends("cam_norm") == ("reference", "cuda")
    cams = random_cams((1, 2, 3, 4), torch.float32)
    torch.testing.assert_close(module.cam_norm(cams), cam_norm_reference(cams))


def _with_nans(dtype: torch.dtype) -> torch.Tensor:
    """(2, 3, 45, 47): image 0 plane 1 holds one NaN, image 1 plane 2 one +inf, the rest ordinary."""
    cams = torch.rand(2, 3, 45, 47) - 0.2
    cams[0, 1, 10, 20] = float("nan")
    cams[1, 2, 3, 4] = float("inf")
    return cams.to(dtype)


@requires_triton
class TestNanSemantics:
    """The kernels treat NaN and inf like the reference: a plane holding a NaN becomes NaN (tl.maximum and
    tl.max drop NaN unless told not to)."""

    @pytest.mark.parametrize("n_chunks", [None, 3])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_cam_norm(self, n_chunks: int | None, dtype: torch.dtype) -> None:
        cams = _with_nans(dtype)
        want = cam_norm_reference(cams)
        assert want[0, 1].isnan().all() and want[1, 2, 3, 4].isnan() and not want[1, 2, 0, 0].isnan()
        got = cam_norm_module._cam_norm_triton(cams, 1e-5, n_chunks=n_chunks)
        torch.testing.assert_close(got, want, rtol=0, atol=TRITON_TOLERANCE[dtype], equal_nan=True)
        assert torch.equal(got.isnan(), want.isnan())

def test_plane_groups_fit_the_budget() -> None:
    assert cam_norm_module._plane_groups(10, 100, 0) == [(0, 10)]  # no budget (the CPU): one group
    assert cam_norm_module._plane_groups(10, 100, 1000) == [(0, 10)]
    assert cam_norm_module._plane_groups(10, 100, 350) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert cam_norm_module._plane_groups(3, 100, 50) == [(0, 1), (1, 2), (2, 3)]  # at least one plane each


@requires_triton
@pytest.mark.parametrize("n_chunks", [2, 3])
def test_split_scheme_in_l2_sized_plane_groups_matches_reference(n_chunks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The split scheme run group by group (as on a GPU whose L2 holds a few planes) gives the same maps."""
    groups: list[int] = []
    real = cam_norm_module._split_scale
    monkeypatch.setattr(cam_norm_module, "_split_scale", lambda c, *a: (groups.append(c.shape[0]), real(c, *a)))
    cams = random_cams((2, 3, 45, 47), torch.float32)
    out = cam_norm_module._cam_norm_triton(cams, 1e-5, n_chunks=n_chunks, group_bytes=2 * 45 * 47 * 4)
    assert groups == [2, 2, 2]  # six planes, two per group
    torch.testing.assert_close(out, cam_norm_reference(cams), rtol=0, atol=TRITON_TOLERANCE[torch.float32])
