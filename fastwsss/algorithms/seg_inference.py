"""One segmentation network's mask for one image at test time: single scale or MSC, then the argmax of the
logits, of their softmax refined by the dense CRF (`seg.crf`) or by colour affinity (`seg.refine_iterations`).

The seg stage scores and writes its predictions with it, and CONTA's confounder stage segments the images
of a round with it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastwsss.algorithms.cam_inference import normalize_image
from fastwsss.algorithms.colour_refine import refine_maps
from fastwsss.algorithms.crf import crf_refine_probs
from fastwsss.models import eval_mode
from fastwsss.models.msc import msc_prediction_logits


def predict_mask(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device | str | None = None,
    msc_scales: tuple[float, ...] = (),
    crf: bool = False,
    refine_iterations: int = 0,
) -> np.ndarray:
    """Class-id mask (H, W) uint8 of one (H, W, 3) uint8 RGB image: full image, argmax.

    Single scale, or with `msc_scales` the max of the MSC logits (fastwsss.models.msc); with `crf` the
    softmax is refined by DeepLab's dense CRF first, with `refine_iterations` by colour affinity
    (fastwsss.algorithms.colour_refine). `model` must already be on `device` (default: the
    device of its parameters); it runs in eval mode and its previous mode is restored.
    """
    if device is None:
        device = next(model.parameters()).device
    with eval_mode(model), torch.inference_mode():
        x = normalize_image(image, device)
        logits = msc_prediction_logits(model, x, msc_scales) if msc_scales else model(x)
        if crf:
            probs = torch.softmax(logits[0], dim=0).cpu().numpy()
            return crf_refine_probs(image, probs).astype(np.uint8)
        if refine_iterations > 0:
            probs = refine_maps(torch.softmax(logits[0].float(), dim=0).cpu(), image, refine_iterations)
            return probs.argmax(dim=0).to(torch.uint8).numpy()
        mask = logits[0].argmax(dim=0).to(torch.uint8)
    return mask.cpu().numpy()
