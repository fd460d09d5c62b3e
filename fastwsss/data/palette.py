"""The PASCAL VOC colour palette, used for every mask PNG fastwsss writes."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


@functools.lru_cache(maxsize=4)
def _palette(num_colors: int) -> tuple[int, ...]:
    return tuple(voc_palette(num_colors).reshape(-1).tolist())


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The standard VOC bit-interleaved palette as a (num_colors, 3) uint8 array; index 255 is white-ish void."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def mask_to_image(mask: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """A P-mode PIL image of a class-index mask (uint8, 255 = ignore) with `palette` ((N, 3) uint8,
    default the VOC palette)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(list(_palette(256)) if palette is None else np.asarray(palette, np.uint8).reshape(-1).tolist())
    return image


def save_mask_png(mask: np.ndarray, path: str | Path, palette: np.ndarray | None = None) -> None:
    """Write a palette PNG atomically (temporary name, then rename)."""
    from fastwsss.engine.files import atomic_path

    with atomic_path(path) as tmp:
        mask_to_image(mask, palette).save(tmp, format="PNG")
