"""cam_norm against its reference and a direct loop; backend dispatch through FASTWSSS_KERNELS."""

from __future__ import annotations

import pytest
import torch

from fastwsss.errors import ConfigError
from fastwsss.kernels import dispatch
from fastwsss.kernels.cam_norm import cam_norm, cam_norm_reference
from fastwsss.kernels.dispatch import kernel_backend, register_backends, registered_backends

# Output tolerance per dtype, relative to values in [0, 1]: one rounding of the fp32 result to the dtype.
TOLERANCE = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
SHAPES = [(1, 1, 1, 1), (2, 1, 7, 5), (1, 20, 13, 17), (3, 80, 9, 11), (2, 4, 1, 33), (1, 3, 64, 1)]


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
        assert registered_backends("cam_norm") == ("reference",)
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
        with pytest.raises(RuntimeError, match="FASTWSSS_KERNELS=cuda.*no cuda implementation"):
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
