"""C2AM's front-door adjustment (docs/algorithms.md section 6; C2AM paper, Eq. 6-7).

    G   = mean over training images of their baseline CAMs, each resized to S x S (aspect ratio ignored),
          max-normalised per present class, absent classes zero        -> `GlobalCamAccumulator`
    M_c = gamma * mean_{h,w} G_c                                        -> `logit_constants`
    s_c <- s_c * M_c inside BCE-with-logits while fine-tuning           -> `scaled_logits`, `c2am_loss`

Validation and CAM inference use the plain logits; only the fine-tuning loss sees the scaled ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_to_global(cams: np.ndarray, size: int) -> np.ndarray:
    """(k, H, W) normalised CAMs -> (k, size, size), bilinear, align_corners=False, aspect ratio ignored."""
    if cams.ndim != 3:
        raise ValueError(f"expected (k, H, W) CAMs, got shape {cams.shape}")
    if cams.shape[0] == 0:
        return np.zeros((0, size, size), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32)).unsqueeze(0)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()


class GlobalCamAccumulator:
    """Running sums for the global CAM G of `num_classes` classes at `size` x `size`.

    `add` takes one image's CAMs of its present classes (`keys`, zero-based); `result(by_class=False)` is
    the released C2AM definition (divide by the number of ALL images, so an absent class counts as a zero
    map); `by_class=True` divides class c by the number of images that contain c.
    """

    def __init__(self, num_classes: int, size: int) -> None:
        if num_classes < 1 or size < 1:
            raise ValueError(f"need num_classes >= 1 and size >= 1, got {num_classes} and {size}")
        self.total = np.zeros((num_classes, size, size), np.float64)
        self.class_images = np.zeros(num_classes, np.int64)
        self.images = 0
        self.size = size

    def add(self, keys: np.ndarray, cams: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        if cams.shape[0] != keys.size:
            raise ValueError(f"{keys.size} keys but {cams.shape[0]} CAM planes")
        resized = resize_to_global(cams, self.size)
        self.total[keys] += resized
        self.class_images[keys] += 1
        self.images += 1

    def result(self, by_class: bool = False) -> np.ndarray:
        if self.images == 0:
            raise ValueError("the global CAM needs at least one image")
        if by_class:
            counts = np.maximum(self.class_images, 1).reshape(-1, 1, 1)
            return (self.total / counts).astype(np.float32)
        return (self.total / self.images).astype(np.float32)


def logit_constants(global_cam: np.ndarray | torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """M_c = gamma * mean over (h, w) of G_c, as a float32 tensor (K,)."""
    g = torch.as_tensor(np.asarray(global_cam), dtype=torch.float32)
    if g.dim() != 3:
        raise ValueError(f"expected a (K, S, S) global CAM, got shape {tuple(g.shape)}")
    return gamma * g.mean(dim=(1, 2))


def scaled_logits(logits: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """s_c * M_c for a (B, K) batch of logits and the (K,) constants."""
    if logits.dim() != 2 or constants.shape != (logits.shape[1],):
        raise ValueError(f"logits (B, K) and constants (K,) disagree: {tuple(logits.shape)} vs {tuple(constants.shape)}")
    return logits * constants.to(logits.dtype)


def c2am_loss(logits: torch.Tensor, labels: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits (mean over batch and classes) of the scaled logits: the fine-tuning objective."""
    return F.binary_cross_entropy_with_logits(scaled_logits(logits, constants), labels.to(logits.dtype))
