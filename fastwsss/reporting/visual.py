"""Small pictures for people who would rather look than read: heat-map sheets of per-class maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fastwsss.engine.files import atomic_path

# Anchors of a dark-blue -> red -> yellow -> white ramp (perceptually ordered, readable in grey).
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                  [250, 193, 39], [252, 255, 164]], dtype=np.float32)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 RGB through the ramp above."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(v).astype(np.int64)
    high = np.minimum(low + 1, len(_RAMP) - 1)
    frac = (v - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[high] * frac).astype(np.uint8)


def heatmap_sheet(maps: np.ndarray, titles: list[str], path: str | Path, tile: int = 96, columns: int = 5,
                  normalise: str = "shared") -> Path:
    """Write a PNG grid of (K, h, w) maps with a title above each.

    `normalise`: "shared" divides every map by the largest value of all (so maps compare), "each" by its own.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or len(titles) != maps.shape[0]:
        raise ValueError(f"need (K, h, w) maps and K titles, got {maps.shape} and {len(titles)}")
    if normalise == "shared":
        scaled = maps / max(float(maps.max(initial=0.0)), 1e-12)
    else:
        scaled = maps / np.maximum(maps.reshape(len(maps), -1).max(axis=1, initial=0.0), 1e-12)[:, None, None]
    columns = max(1, min(columns, len(maps)))
    rows = (len(maps) + columns - 1) // columns
    label, pad = 14, 4
    sheet = Image.new("RGB", (columns * (tile + pad) + pad, rows * (tile + label + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for k, (plane, title) in enumerate(zip(scaled, titles, strict=True)):
        r, c = divmod(k, columns)
        x, y = pad + c * (tile + pad), pad + r * (tile + label + pad)
        picture = Image.fromarray(heat_colors(plane)).resize((tile, tile), Image.Resampling.BILINEAR)
        sheet.paste(picture, (x, y + label))
        draw.text((x, y), title[:16], fill=(230, 230, 230))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
