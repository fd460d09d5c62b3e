"""DeepLab's training definitions as released with CONTA and C2AM (kazuto1011/deeplab-pytorch layout).

- `msc_pyramid`: multi-scale inputs (MSC). The logits of the image and of the image resized by each extra
  scale (bilinear, align_corners=False), and the pixel-wise max of all of them resized to the first's
  grid. Training uses every output, prediction the max.
- `nearest_labels`: labels brought to a logit grid the way PIL's nearest resize does it (the sample of
  output cell i is input index floor((i + 0.5) * in / out)).
- `deeplab_param_groups`: backbone convolutions at lr (weight decay), head weights at lr x head_lr_mult
  (weight decay), head biases at 2 x that without weight decay: the released 1x / 10x / 20x groups. Only
  convolutions of the backbone are optimised, as in the released get_params; BatchNorm stays frozen.

docs/reproduce.md lists where each of these comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def msc_pyramid(
    logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales: tuple[float, ...]
) -> list[torch.Tensor]:
    """[logits, logits at each scale (their own grids), max over all at the logits' grid].

    `logits_of(images)` gives logits on the model's output grid, not upsampled.
    """
    logits = logits_of(images)
    pyramid = [logits_of(F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)) for s in scales]
    size = logits.shape[-2:]
    resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
    return [logits, *pyramid, torch.stack([logits, *resized]).max(dim=0).values]


def msc_outputs(model: nn.Module, images: torch.Tensor, scales: tuple[float, ...]) -> list[torch.Tensor]:
    """The MSC outputs of a SegModel (or its DistributedDataParallel wrapper); [logits] without scales."""
    if not scales:
        return [model(images, upsample=False)]
    return model(images, scales=scales)


def msc_prediction_logits(model: nn.Module, images: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """Logits at the input's size: the MSC max (or the single-scale logits) upsampled bilinearly."""
    best = msc_outputs(model, images, scales)[-1]
    return F.interpolate(best, size=images.shape[-2:], mode="bilinear", align_corners=False)


def nearest_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer labels resized to `size` by PIL's nearest rule (cell centres)."""
    height, width = labels.shape[-2:]
    out_h, out_w = size
    rows = ((torch.arange(out_h, dtype=torch.float64) + 0.5) * height / out_h).floor().long().clamp(max=height - 1)
    cols = ((torch.arange(out_w, dtype=torch.float64) + 0.5) * width / out_w).floor().long().clamp(max=width - 1)
    return labels[..., rows.to(labels.device)[:, None], cols.to(labels.device)[None, :]]


def deeplab_param_groups(model: nn.Module, head_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
    """The released three groups (see the module docstring), each with its `lr_mult` and `weight_decay`
    (for `fastwsss.engine.training.sgd_optimizer`)."""
    backbone = [p for m in model.backbone.modules() if isinstance(m, nn.Conv2d) for p in m.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    weights = [p for p in head if p.dim() > 1]
    biases = [p for p in head if p.dim() <= 1]
    groups = [("backbone", backbone, 1.0, weight_decay), ("head", weights, head_lr_mult, weight_decay),
              ("head_bias", biases, 2 * head_lr_mult, 0.0)]
    return [{"name": name, "params": params, "lr_mult": mult, "weight_decay": decay}
            for name, params, mult, decay in groups if params]
