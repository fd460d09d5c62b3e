"""Multi-scale CAM inference against a hand-written direct computation, the npz format and seed masks."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastwsss.algorithms.cam_inference import (
    CamResult,
    cam_seed_mask,
    load_cam_npz,
    multiscale_cam,
    save_cam_npz,
)
from fastwsss.errors import DataError
from fastwsss.models.cam_net import CAMNet

H, W = 37, 50
SCALES = (1.0, 0.5)


def random_image(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def direct_cams(
    model: nn.Module, image: np.ndarray, scales: tuple[float, ...], extra: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised (cam4, high_res) for ALL classes, one image and one flip at a time."""
    height, width = image.shape[:2]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
    size4 = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
    size16 = (16 * math.ceil(height / 16), 16 * math.ceil(width / 16))
    cam4, high = 0.0, 0.0
    with torch.no_grad():
        for scale in scales:
            xs = F.interpolate(
                x, size=(round(height * scale), round(width * scale)), mode="bilinear", align_corners=False
            )
            if extra is None:
                plain = model.cam(xs)[0]
                flipped = model.cam(xs.flip(3))[0].flip(2)
            else:
                plain = model.cam(xs, extra[None])[0]
                flipped = model.cam(xs.flip(3), extra[None].flip(3))[0].flip(2)
            total = (plain + flipped)[None]
            cam4 = cam4 + F.interpolate(total, size=size4, mode="bilinear", align_corners=False)[0]
            high = high + F.interpolate(total, size=size16, mode="bilinear", align_corners=False)[0]
    return cam4, high[:, :height, :width]


def max_normalise(maps: torch.Tensor) -> torch.Tensor:
    maps = maps.clamp(min=0)
    return maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-5)


class RampCam(nn.Module):
    """A CAM that ignores the image: class k at column j of the stride-4 grid is amp * (k + 1) * (j + 1).

    It is not flip-symmetric, but cam(x) + flip(cam(flip(x))) is constant along the width.
    """

    def __init__(self, num_classes: int, amp: float) -> None:
        super().__init__()
        self.num_classes, self.amp = num_classes, amp
        self.anchor = nn.Parameter(torch.zeros(()))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        h, w = -(-x.shape[2] // 4), -(-x.shape[3] // 4)
        cls = torch.arange(1, self.num_classes + 1, dtype=torch.float32).view(1, -1, 1, 1)
        col = torch.arange(1, w + 1, dtype=torch.float32).view(1, 1, 1, -1)
        return (self.amp * cls * col).expand(x.shape[0], -1, h, -1) + self.anchor


@pytest.fixture(scope="module")
def tiny_model() -> CAMNet:
    torch.manual_seed(0)
    return CAMNet("resnet18_quarter", num_classes=4, freeze_bn=True, detach_early=True)


def test_matches_direct_computation(tiny_model: CAMNet) -> None:
    image = random_image()
    labels = np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    tiny_model.train()
    result = multiscale_cam(tiny_model, image, labels, SCALES, "cpu")
    assert tiny_model.training, "the caller's training mode is restored"
    assert all(not m.training for m in tiny_model.modules() if isinstance(m, nn.BatchNorm2d))

    tiny_model.eval()
    cam4, high = direct_cams(tiny_model, image, SCALES)
    assert result.keys.dtype == np.int64 and result.keys.tolist() == [1, 3]
    assert result.cam4.dtype == np.float32 and result.cam4.shape == (2, (H - 1) // 4 + 1, (W - 1) // 4 + 1)
    assert result.high_res.dtype == np.float32 and result.high_res.shape == (2, H, W)
    np.testing.assert_allclose(result.cam4, max_normalise(cam4[[1, 3]]).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.high_res, max_normalise(high[[1, 3]]).numpy(), rtol=1e-4, atol=1e-5)
    peaks = cam4[[1, 3]].amax(dim=(1, 2)).numpy()
    np.testing.assert_allclose(result.cam4.max(axis=(1, 2)), peaks / (peaks + 1e-5), rtol=1e-6)


def test_flip_sum_and_eps_with_asymmetric_cam() -> None:
    amp = 1e-7
    model = RampCam(num_classes=3, amp=amp)
    result = multiscale_cam(model, random_image(1), np.array([1.0, 1.0, 0.0]), SCALES, "cpu")
    # Per scale the flip sum is amp * (k + 1) * (w4 + 1) everywhere, w4 = ceil(scaled width / 4).
    total = sum(math.ceil(round(W * s) / 4) + 1 for s in SCALES) * amp
    for k in range(2):
        expected = total * (k + 1) / (total * (k + 1) + 1e-5)
        assert expected < 0.9, "amp is small enough that eps shows"
        np.testing.assert_allclose(result.cam4[k], expected, rtol=1e-5)
        np.testing.assert_allclose(result.high_res[k], expected, rtol=1e-5)


def test_zero_class_image(tiny_model: CAMNet) -> None:
    result = multiscale_cam(tiny_model, random_image(2), np.zeros(4, np.float32), SCALES, "cpu")
    assert result.keys.shape == (0,) and result.keys.dtype == np.int64
    assert result.cam4.shape == (0, 10, 13) and result.high_res.shape == (0, H, W)
    assert cam_seed_mask(result.high_res, result.keys, 0.15).shape == (H, W)
    assert not cam_seed_mask(result.high_res, result.keys, 0.15).any()


def test_extra_map_is_flipped_with_the_image() -> None:
    torch.manual_seed(1)
    model = CAMNet("resnet18_quarter", num_classes=2, extra_channels=1).eval()
    with torch.no_grad():
        model.head.weight[:, -1] = 3.0
    extra = torch.linspace(0, 1, 8).view(1, 1, 8).expand(1, 6, 8).contiguous()
    image = random_image(3, 29, 33)
    result = multiscale_cam(model, image, np.array([1.0, 1.0]), (1.0, 1.5), "cpu", extra=extra)
    cam4, _ = direct_cams(model, image, (1.0, 1.5), extra)
    np.testing.assert_allclose(result.cam4, max_normalise(cam4).numpy(), rtol=1e-4, atol=1e-5)


def test_npz_round_trip(tmp_path, tiny_model: CAMNet) -> None:
    result = multiscale_cam(tiny_model, random_image(4), np.array([1.0, 0.0, 1.0, 1.0]), SCALES, "cpu")
    path = tmp_path / "cams" / "2007_000032.npz"
    save_cam_npz(path, result)
    with np.load(path) as raw:
        assert raw["cam4"].dtype == np.float16 and raw["high_res"].dtype == np.float16
    assert zipfile.ZipFile(path).infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    loaded = load_cam_npz(path)
    assert loaded.keys.tolist() == [0, 2, 3] and loaded.keys.dtype == np.int64
    assert loaded.cam4.dtype == np.float32 and loaded.high_res.dtype == np.float32
    np.testing.assert_allclose(loaded.cam4, result.cam4, atol=5e-4)
    np.testing.assert_allclose(loaded.high_res, result.high_res, atol=5e-4)

    empty = CamResult(np.zeros(0, np.int64), np.zeros((0, 3, 4), np.float32), np.zeros((0, 9, 13), np.float32))
    save_cam_npz(tmp_path / "empty.npz", empty)
    back = load_cam_npz(tmp_path / "empty.npz")
    assert back.keys.shape == (0,) and back.cam4.shape == (0, 3, 4) and back.high_res.shape == (0, 9, 13)


def test_corrupt_and_missing_npz(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_cam_npz(bad)
    with pytest.raises(DataError, match="gone.npz"):
        load_cam_npz(tmp_path / "gone.npz")
    partial = tmp_path / "partial.npz"
    np.savez_compressed(partial, keys=np.array([1]), cam4=np.zeros((1, 2, 2), np.float16))
    with pytest.raises(DataError, match="partial.npz"):
        load_cam_npz(partial)


def test_cam_seed_mask_hand_built() -> None:
    high_res = np.array(
        [
            [[0.9, 0.1, 0.5], [0.0, 0.3, 0.15]],  # class index 2 -> id 3
            [[0.2, 0.8, 0.6], [0.1, 0.1, 0.15]],  # class index 5 -> id 6
        ],
        dtype=np.float32,
    )
    mask = cam_seed_mask(high_res, np.array([2, 5]), bg_threshold=0.15)
    assert mask.dtype == np.uint8
    # (1, 0): background wins over 0.1; (1, 2): a three-way tie at 0.15 goes to background.
    np.testing.assert_array_equal(mask, [[3, 6, 6], [0, 3, 0]])
    np.testing.assert_array_equal(cam_seed_mask(high_res, np.array([2, 5]), 0.55), [[3, 6, 6], [0, 0, 0]])
