"""How much of a CAM lands on context: the confounding the causal methods target, measured directly.

The synthetic set records, per image, which background pixels belong to a class's preferred context scene
(SegmentationContext/). Context leakage = the share of above-threshold CAM mass that falls on those pixels:

    leakage = sum over images, present classes, pixels p in context with A_c(p) > t of A_c(p)
              ----------------------------------------------------------------------------
              sum over images, present classes, pixels p with A_c(p) > t of A_c(p)

with A the max-normalised CAMs and t the seed background threshold. Lower is better; a CAM that covers its
object only scores 0.
"""

from __future__ import annotations

import numpy as np


class ContextLeakageMeter:
    """Accumulates the numerator and denominator of the leakage over images."""

    def __init__(self, threshold: float) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.threshold = threshold
        self.on_context = 0.0
        self.total = 0.0
        self.images = 0

    def update(self, cams: np.ndarray, context: np.ndarray) -> None:
        """`cams` (k, H, W) normalised maps of the present classes; `context` (H, W), nonzero = context pixel."""
        if cams.ndim != 3 or cams.shape[1:] != context.shape:
            raise ValueError(f"CAMs {cams.shape} and context map {context.shape} disagree")
        hot = np.where(cams > self.threshold, cams, 0.0).astype(np.float64)
        self.total += float(hot.sum())
        self.on_context += float(hot[:, context != 0].sum())
        self.images += 1

    def value(self) -> float | None:
        """The leakage in [0, 1]; None before any above-threshold mass was seen."""
        return self.on_context / self.total if self.total > 0 else None
