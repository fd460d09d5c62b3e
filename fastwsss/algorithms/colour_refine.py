"""Colour-affinity refinement of class maps: each pixel repeatedly takes the average of its neighbours' map
values, weighted by how alike their colours are (docs/algorithms.md, "Colour refinement").

This is the pixel-adaptive refinement of Ru et al., "Learning Affinity from Attention" (CVPR 2022), without
its small position term. For every pixel i and each of its 8 neighbours j at every dilation d:

    a_ij = -( |I_i - I_j| / (sigma_i + 1e-8) / scale )^2, averaged over the colour channels,
    w_ij = softmax_j(a_ij),            maps_i <- sum_j w_ij maps_j   (`iterations` times),

with I in [0, 1] and sigma_i the standard deviation of the neighbours' colours (per channel), so the weights
adapt to how much the colour varies around i. Each step is a convex combination, so maps stay within their
range. It needs the image and no mask: a blob that spills over an object's border is pulled back to where
the colour changes. The averaging is not mass-preserving: where a uniform region holds no confident value
of its own, a value that spills into it near its edge can spread over the whole region (in a test image, a
class sure over a 2-pixel spill into a flat 32-pixel-wide scene where elsewhere both classes are equally
likely takes the whole scene over; with the scene confidently background, the spill is pulled back to the
edge; both in tests/test_colour_refine.py). The `synthetic` preset applies it to the walked maps
(`pseudo.refine_iterations`) and to DeepLab's softmax at test time (`seg.refine_iterations`); the `voc` and
`coco` presets leave it off, as IRNet and DeepLab do.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DILATIONS = (1, 2, 4, 8)
COLOUR_SCALE = 0.3


def neighbour_offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    """(dy, dx) of the 8 neighbours at each dilation, in the order every function here uses."""
    return [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d) if dy or dx]


def neighbour_values(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """(C, H, W) -> (C, 8 * len(dilations), H, W): the 8 neighbours at each dilation, the border replicated."""
    pad, (height, width) = max(dilations), x.shape[-2:]
    padded = F.pad(x[None], (pad, pad, pad, pad), mode="replicate")[0]
    return torch.stack([padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
                        for dy, dx in neighbour_offsets(dilations)], dim=1)  # fmt: skip


def colour_affinity(image: np.ndarray, dilations: tuple[int, ...] = DILATIONS, scale: float = COLOUR_SCALE) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (8 * len(dilations), H, W) float32 weights that sum to 1 over the neighbours."""
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    neighbours = neighbour_values(rgb, dilations)
    centred = neighbours - neighbours.mean(dim=1, keepdim=True)  # two-pass std: torch.std over dim 1 is 10x slower
    sigma = centred.mul_(centred).sum(dim=1, keepdim=True).div_(neighbours.shape[1] - 1).sqrt_()
    ratio = (neighbours - rgb[:, None]).div_(sigma.add_(1e-8).mul_(scale))
    return torch.softmax(ratio.mul_(ratio).neg_().mean(dim=0), dim=0)


def refine_maps(
    maps: torch.Tensor,
    image: np.ndarray,
    iterations: int,
    dilations: tuple[int, ...] = DILATIONS,
    scale: float = COLOUR_SCALE,
) -> torch.Tensor:
    """(k, H, W) class maps of `image` (H, W, 3) -> the same maps after `iterations` colour-weighted averages."""
    if iterations <= 0 or maps.shape[0] == 0:
        return maps
    if tuple(maps.shape[-2:]) != tuple(image.shape[:2]):
        raise ValueError(f"maps {tuple(maps.shape[-2:])} and image {tuple(image.shape[:2])} differ in size")
    weights = colour_affinity(image, dilations, scale).to(device=maps.device)
    offsets = neighbour_offsets(dilations)
    pad, (height, width) = max(dilations), maps.shape[-2:]
    out = maps.float()
    for _ in range(iterations):  # one padded copy per step; no (k, 8 * len(dilations), H, W) stack
        padded = F.pad(out[None], (pad, pad, pad, pad), mode="replicate")[0]
        total = torch.zeros_like(out)
        for weight, (dy, dx) in zip(weights, offsets, strict=True):
            total.addcmul_(padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width], weight)
        out = total
    return out
