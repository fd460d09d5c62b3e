"""Image and mask transforms for classifier and segmentation training (docs/algorithms.md section 2).

Plain numpy + PIL. Every random choice is drawn from a `np.random.Generator` passed in by the caller,
so a sample is a pure function of (image, generator state): the data sets seed one generator per
(seed, epoch, index) and get the same crops whatever the worker scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from fastwsss.data.palette import IGNORE_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

CropBox = tuple[int, int, int, int, int, int]
"""(src_top, src_left, dst_top, dst_left, height, width): copy src[top:top+h, left:left+w] to dst[...]."""


def _resize(array: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    if array.shape[:2] == (height, width):
        return array.copy()
    return np.asarray(Image.fromarray(array).resize((width, height), resample=resample))


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled so that max(h, w) == long_side, aspect kept, each side at least 1 pixel."""
    scale = long_side / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def draw_long_side(lo: int, hi: int, rng: np.random.Generator) -> int:
    """A long-side length drawn uniformly from the integers lo..hi (both included)."""
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < lo <= hi, got lo={lo}, hi={hi}")
    return int(rng.integers(lo, hi + 1))


def resize_long(image: np.ndarray, long_side: int) -> np.ndarray:
    """An (H, W, 3) uint8 image resized bicubically so its long side is `long_side`."""
    height, width = long_side_size(image.shape[0], image.shape[1], long_side)
    return _resize(image, height, width, Image.Resampling.BICUBIC)


def resize_long_mask(mask: np.ndarray, long_side: int) -> np.ndarray:
    """An (H, W) uint8 class mask resized with nearest neighbour (no invented class ids) to `long_side`."""
    height, width = long_side_size(mask.shape[0], mask.shape[1], long_side)
    return _resize(mask, height, width, Image.Resampling.NEAREST)


def random_resize_long(image: np.ndarray, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Resize an image so its long side is a uniform integer in [lo, hi] (bicubic)."""
    return resize_long(image, draw_long_side(lo, hi, rng))


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror left-right (works for HWC images and HW masks); returns a contiguous copy."""
    return np.ascontiguousarray(array[:, ::-1])


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC, (x / 255 - ImageNet mean) / ImageNet std."""
    return ((image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _axis_box(length: int, size: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(src_start, dst_start, extent) along one axis: crop where longer than `size`, pad where shorter."""
    space = length - size
    if space >= 0:
        return int(rng.integers(0, space + 1)), 0, size
    return 0, int(rng.integers(0, -space + 1)), length


def random_crop_box(height: int, width: int, size: int, rng: np.random.Generator) -> CropBox:
    """A random size x size window over an H x W array; a short side is placed at a random offset instead."""
    src_top, dst_top, crop_h = _axis_box(height, size, rng)
    src_left, dst_left, crop_w = _axis_box(width, size, rng)
    return src_top, src_left, dst_top, dst_left, crop_h, crop_w


def top_left_box(height: int, width: int, size: int) -> CropBox:
    """The deterministic box of evaluation: the top-left size x size window, padding right/bottom."""
    return 0, 0, 0, 0, min(height, size), min(width, size)


def apply_crop(array: np.ndarray, box: CropBox, size: int, pad_value: float) -> np.ndarray:
    """Cut `box` out of `array` into a size x size canvas filled with `pad_value` (trailing dims kept)."""
    src_top, src_left, dst_top, dst_left, crop_h, crop_w = box
    canvas = np.full((size, size, *array.shape[2:]), pad_value, dtype=array.dtype)
    canvas[dst_top : dst_top + crop_h, dst_left : dst_left + crop_w] = array[
        src_top : src_top + crop_h, src_left : src_left + crop_w
    ]
    return canvas


def random_crop(
    arrays: Sequence[np.ndarray],
    size: int,
    rng: np.random.Generator,
    pad_values: Sequence[float] | None = None,
) -> list[np.ndarray]:
    """IRNet's random crop: one size x size box shared by all arrays (image, mask, ...).

    Where an array is larger than `size` a random window is cut; where it is smaller it is placed at a
    random offset in a padded canvas. Default pad values: 0 for the first array (a normalised image, so 0
    is the mean colour) and 255 (ignore) for the rest (masks).
    """
    if not arrays:
        raise ValueError("random_crop needs at least one array")
    height, width = arrays[0].shape[:2]
    for other in arrays[1:]:
        if other.shape[:2] != (height, width):
            raise ValueError(f"random_crop: arrays differ in size, {other.shape[:2]} vs {(height, width)}")
    if pad_values is None:
        pad_values = [0.0] + [float(IGNORE_INDEX)] * (len(arrays) - 1)
    if len(pad_values) != len(arrays):
        raise ValueError(f"random_crop: {len(arrays)} arrays but {len(pad_values)} pad values")
    box = random_crop_box(height, width, size, rng)
    return [apply_crop(array, box, size, pad) for array, pad in zip(arrays, pad_values, strict=True)]


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """float32 HWC array -> contiguous float32 CHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def scale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 image resized to round(H*scale) x round(W*scale) for multi-scale CAM inference.

    Bicubic: the filter of the training-time resize (and of IRNet's multi-scale inference data set), so
    the classifier sees the same kind of resampled image at inference as during training.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    height = max(1, int(round(image.shape[0] * scale)))
    width = max(1, int(round(image.shape[1] * scale)))
    return _resize(image, height, width, Image.Resampling.BICUBIC)
