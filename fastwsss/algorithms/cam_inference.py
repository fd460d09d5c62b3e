"""Multi-scale, flip-summed class activation maps of one image (docs/algorithms.md section 2).

For every scale s the image is resized to (round(H*s), round(W*s)), at least 1 x 1, the pair [x, hflip(x)] goes through
`CAMNet.cam`, and `A = cam[0] + hflip(cam[1])`. The A of all scales are resized (bilinear,
align_corners=False) and summed at two sizes:
    cam4:     the stride-4 grid ((H-1)//4+1, (W-1)//4+1), used by the random walk;
    high_res: (16*ceil(H/16), 16*ceil(W/16)), cropped to H x W, used for evaluation and IR labels.
Only present classes are kept, and each map is divided by its maximum + 1e-5 (`cam_norm`).

The image resize is `resize_image`: bilinear, align_corners=False, no antialiasing, applied to the
ImageNet-normalised float tensor. IRNet resizes with PIL bicubic instead; one torch resize keeps this
module, its tests and an exported graph (which resizes by `size=`) in agreement.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastwsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fastwsss.engine.files import atomic_path
from fastwsss.errors import DataError
from fastwsss.kernels.cam_norm import cam_norm
from fastwsss.models import eval_mode
from fastwsss.models.cam_net import CAMNet

CAM_EPS = 1e-5


@dataclass
class CamResult:
    """CAMs of the present classes of one image.

    keys: int64 (k,) zero-based class indices; cam4: float32 (k, (H-1)//4+1, (W-1)//4+1);
    high_res: float32 (k, H, W). Maps are max-normalised per class (maximum = max / (max + 1e-5)).
    """

    keys: np.ndarray
    cam4: np.ndarray
    high_res: np.ndarray


def stride4_size(height: int, width: int) -> tuple[int, int]:
    return (height - 1) // 4 + 1, (width - 1) // 4 + 1


def padded16_size(height: int, width: int) -> tuple[int, int]:
    return 16 * math.ceil(height / 16), 16 * math.ceil(width / 16)


def normalize_image(image: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32, ImageNet mean/std normalised."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image))
    if device is not None:
        x = x.to(device)
    x = x.permute(2, 0, 1).float().div_(255.0)
    mean = torch.from_numpy(IMAGENET_MEAN).to(x.device).view(3, 1, 1)
    std = torch.from_numpy(IMAGENET_STD).to(x.device).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The one image resize of the CAM stage: bilinear, align_corners=False, no antialiasing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _flip_pair_cam(model: CAMNet, x: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    """A = cam(x) + hflip(cam(hflip(x))) for one (1, 3, h, w) image, as (K, h', w')."""
    batch = torch.cat([x, x.flip(-1)], dim=0)
    pair_extra = None if extra is None else torch.stack([extra, extra.flip(-1)], dim=0)
    cams = model.cam(batch, pair_extra) if pair_extra is not None else model.cam(batch)
    return cams[0] + cams[1].flip(-1)


def multiscale_cam(
    model: CAMNet,
    image: np.ndarray,
    labels: np.ndarray,
    scales: tuple[float, ...],
    device: torch.device | str | None = None,
    extra: torch.Tensor | None = None,
) -> CamResult:
    """CAMs of `image` (H, W, 3 uint8) for the classes with labels > 0.5, per the module docstring.

    `model` must already be on `device` (default: the device of its first parameter); it runs in eval
    mode and its previous mode is restored. `extra` (C, h, w) is the CONTA map for a model built with
    extra_channels=C; the flipped image gets the flipped map. An image without present classes gets
    empty (0, ...) arrays and the model is not run.
    """
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    height, width = image.shape[:2]
    keys = np.flatnonzero(np.asarray(labels) > 0.5).astype(np.int64)
    size4 = stride4_size(height, width)
    if keys.size == 0:
        return CamResult(
            keys=keys,
            cam4=np.zeros((0, *size4), np.float32),
            high_res=np.zeros((0, height, width), np.float32),
        )
    if device is None:
        device = next(model.parameters()).device
    with eval_mode(model), torch.inference_mode():
        x = normalize_image(image, device)
        if extra is not None:
            extra = extra.to(device=device, dtype=torch.float32)
        index = torch.from_numpy(keys).to(device)
        cam4 = torch.zeros((1, keys.size, *size4), device=device)
        high = torch.zeros((1, keys.size, *padded16_size(height, width)), device=device)
        for scale in scales:
            scaled = resize_image(x, (max(1, round(height * scale)), max(1, round(width * scale))))
            a = _flip_pair_cam(model, scaled, extra).float().index_select(0, index).unsqueeze(0)
            cam4 += F.interpolate(a, size=size4, mode="bilinear", align_corners=False)
            high += F.interpolate(a, size=high.shape[-2:], mode="bilinear", align_corners=False)
        cam4 = cam_norm(cam4, CAM_EPS)[0]
        high = cam_norm(high[..., :height, :width], CAM_EPS)[0]
    return CamResult(keys=keys, cam4=cam4.cpu().numpy(), high_res=high.cpu().numpy())


def save_cam_npz(path: str | Path, result: CamResult) -> None:
    """Write a CamResult atomically as a compressed .npz with float16 maps."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            keys=result.keys.astype(np.int64),
            cam4=result.cam4.astype(np.float16),
            high_res=result.high_res.astype(np.float16),
        )


def load_cam_npz(path: str | Path) -> CamResult:
    """Read a file written by `save_cam_npz` (maps back to float32); DataError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CAM file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = data["keys"].astype(np.int64)
            cam4 = data["cam4"].astype(np.float32)
            high_res = data["high_res"].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: corrupt CAM file ({type(exc).__name__}: {exc})") from exc
    if keys.ndim != 1 or cam4.ndim != 3 or high_res.ndim != 3 or not (len(keys) == len(cam4) == len(high_res)):
        raise DataError(
            f"{path}: inconsistent CAM file (keys {keys.shape}, cam4 {cam4.shape}, high_res {high_res.shape})"
        )
    return CamResult(keys=keys, cam4=cam4, high_res=high_res)


def cam_seed_mask(high_res: np.ndarray, keys: np.ndarray, bg_threshold: float) -> np.ndarray:
    """Class-id mask (H, W) uint8 from normalised CAMs: a constant background plane, then argmax.

    Plane 0 is background (id 0); plane j > 0 maps to class id keys[j-1] + 1. Ties go to the lower plane,
    so a pixel exactly at the threshold is background.
    """
    if high_res.ndim != 3 or len(keys) != high_res.shape[0]:
        raise ValueError(f"high_res (k, H, W) and keys (k,) disagree: {high_res.shape} vs {np.shape(keys)}")
    background = np.full((1, *high_res.shape[1:]), bg_threshold, dtype=np.float32)
    planes = np.concatenate([background, high_res.astype(np.float32, copy=False)], axis=0)
    ids = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    if ids.max() > 255:
        raise ValueError(f"class ids up to {ids.max()} do not fit a uint8 mask")
    return ids[planes.argmax(axis=0)].astype(np.uint8)
