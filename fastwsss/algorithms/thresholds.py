"""Background thresholds of class maps: a fixed level, or one that each map chooses itself (Otsu).

IRNet thresholds its max-normalised CAMs at fixed levels (seeds 0.15, IR labels 0.30 / 0.05, pseudo masks
0.25), values tuned on PASCAL VOC. How far a CAM spreads past its object depends on the data and the
network, so a fixed level that suits VOC can mark the scene around every object as the object on another
data set. Otsu's rule needs no masks and no tuning: for each class map it picks the level that best splits
the map's values into two groups (the largest between-group variance of a 64-bin histogram over [0, 1]),
so a map whose object is bright against a dimmer surround is cut between the two (docs/default-job.md).

`class_thresholds(maps, rule, level)` gives one threshold per map: `level` itself for rule "fixed", each
map's Otsu level for rule "otsu", with `level` as a floor (a map with no bright part is not cut low). `seed_mask` then labels a pixel with the class whose map is
highest among the maps above their thresholds, and background where none is (a pixel exactly at its
threshold is background, as in IRNet's argmax against a constant background plane).
"""

from __future__ import annotations

import numpy as np

THRESHOLD_RULES = ("fixed", "otsu")
OTSU_BINS = 64


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's level of `values` in [0, 1]: the upper edge of the histogram bin that maximises the
    between-class variance; 0.5 for a map with no spread (every value in one bin)."""
    counts, edges = np.histogram(np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts, dtype=np.float64)
    total = weight_low[-1]
    if total == 0:
        return 0.5
    weight_high = total - weight_low
    mass_low = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass_low[-1] * weight_low / total - mass_low) ** 2 / (weight_low * weight_high)
    between = np.where(np.isfinite(between), between, -1.0)
    best = int(np.argmax(between))
    return float(edges[best + 1]) if between[best] > 0 else 0.5


def class_thresholds(maps: np.ndarray, rule: str, level: float) -> np.ndarray:
    """One threshold per map of (k, H, W) `maps`: `level` (rule "fixed"), or each map's Otsu level but at
    least `level` (rule "otsu")."""
    if rule == "fixed":
        return np.full(maps.shape[0], level, dtype=np.float32)
    if rule == "otsu":
        return np.array([max(level, otsu_threshold(m)) for m in maps], dtype=np.float32)
    raise ValueError(f"unknown threshold rule {rule!r}; valid: {', '.join(THRESHOLD_RULES)}")


def seed_mask(maps: np.ndarray, keys: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids: keys[j] + 1 where map j is the highest of the maps above their thresholds
    (ties to the lower j), 0 where no map exceeds its threshold. With one threshold for all maps this is
    `fastwsss.algorithms.cam_inference.cam_seed_mask`."""
    if maps.ndim != 3 or len(keys) != maps.shape[0] or len(thresholds) != maps.shape[0]:
        raise ValueError(f"maps (k, H, W), keys (k,) and thresholds (k,) disagree: {maps.shape}, {np.shape(keys)}, {np.shape(thresholds)}")
    if maps.shape[0] == 0:
        return np.zeros(maps.shape[1:], dtype=np.uint8)
    above = maps > np.asarray(thresholds, dtype=np.float32)[:, None, None]
    score = np.where(above, maps, -np.inf)
    ids = np.asarray(keys, dtype=np.int64) + 1
    if ids.max() > 255:
        raise ValueError(f"class ids up to {ids.max()} do not fit a uint8 mask")
    return np.where(above.any(axis=0), ids[score.argmax(axis=0)], 0).astype(np.uint8)
