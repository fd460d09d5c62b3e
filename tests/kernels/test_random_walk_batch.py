"""random_walk_batch: images of different sizes and class counts walked as one padded batch equal the
per-image walk (reference, and Triton under the interpreter), and the launch path makes no host
synchronisation once its device tables are cached (what CUDA graph capture requires)."""

from __future__ import annotations

import sys

import pytest
import torch

from fastwsss.kernels import random_walk as rw_module
from fastwsss.kernels.random_walk import random_walk
from fastwsss.kernels.random_walk_batch import pack, random_walk_batch

HAS_TRITON = "triton" in rw_module._IMPLEMENTATIONS
SIZES = [(2, 9, 11), (1, 11, 7), (3, 6, 6), (0, 5, 8)]  # (K, h, w); an image without classes too


def _images(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    cams = [torch.rand(k, h, w, generator=generator).to(dtype) for k, h, w in SIZES]
    edges = [torch.rand(h, w, generator=generator).to(dtype) for _, h, w in SIZES]
    return cams, edges


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTWSSS_KERNELS", raising=False)


def test_pack_pads_cams_with_zero_and_edges_with_one() -> None:
    cams, edges = _images()
    packed_cams, packed_edge = pack(cams, edges)
    assert packed_cams.shape == (4, 3, 11, 11) and packed_edge.shape == (4, 1, 11, 11)
    assert torch.equal(packed_cams[1, :1, :11, :7], cams[1]) and (packed_cams[1, 1:] == 0).all()
    assert (packed_cams[1, :, :, 7:] == 0).all() and (packed_edge[1, 0, :, 7:] == 1).all()
    assert torch.equal(packed_edge[0, 0, :9, :11], edges[0]) and (packed_edge[0, 0, 9:] == 1).all()


@pytest.mark.parametrize("exp_times", [0, 3, 6])
def test_reference_batch_equals_the_per_image_walk(exp_times: int) -> None:
    """fp32: equal up to rounding (torch's CPU kernels may sum in another order on a wider canvas; the float64
    test below shows the padding itself changes nothing)."""
    cams, edges = _images(1)
    got = random_walk_batch(cams, edges, 10.0, exp_times, 5)
    for c, e, g in zip(cams, edges, got, strict=True):
        assert g.shape == c.shape
        if c.numel():
            want = random_walk(c, e, 10.0, exp_times, 5)
            # fp32 rounding grows with the steps: ~one ulp per step at most, relative to the maximum
            assert (g - want).abs().max() <= (1e-6 + 1e-6 * 2**exp_times) * want.abs().max()


def test_float64_batch_equals_the_per_image_walk() -> None:
    cams, edges = _images(2, torch.float64)
    for c, e, g in zip(cams, edges, random_walk_batch(cams, edges, 10.0, 4, 3), strict=True):
        if c.numel():
            torch.testing.assert_close(g, random_walk(c, e, 10.0, 4, 3), rtol=1e-13, atol=1e-15)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_batch_equals_the_per_image_triton_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
    cams, edges = _images(3)
    got = random_walk_batch(cams[:3], edges[:3], 10.0, 2, 5)
    for c, e, g in zip(cams, edges, got, strict=False):
        torch.testing.assert_close(g, random_walk(c, e, 10.0, 2, 5), rtol=1e-6, atol=1e-7)


def test_rejects_mismatched_inputs() -> None:
    cams, edges = _images()
    with pytest.raises(ValueError, match="as many"):
        random_walk_batch(cams, edges[:2])
    with pytest.raises(ValueError, match="image 1"):
        random_walk_batch(cams[:2], [edges[0], edges[0]])


SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"}


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_launch_path_makes_no_host_synchronisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a first call has cached the device tables, no code of fastwsss.kernels reads a tensor back to the
    host or builds one from host data during the Triton walk (the interpreter's own copies are not ours)."""
    monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
    cams, edges = _images(4)
    random_walk_batch(cams, edges, 10.0, 2, 5)  # fills the caches
    calls: list[str] = []

    def spy(name: str, original):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("fastwsss.kernels"):
                calls.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
            return original(*args, **kwargs)

        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, "tensor", spy("torch.tensor", torch.tensor))
    random_walk_batch(cams, edges, 10.0, 2, 5)
    assert calls == []
    rw_module._device_table.cache_clear()  # the spy sees a fresh table being made: the check can fail
    random_walk_batch(cams, edges, 10.0, 2, 5)
    assert any(c.startswith("torch.tensor from fastwsss.kernels.random_walk") for c in calls)
