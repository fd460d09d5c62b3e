"""Pair labels and the affinity loss of IRN training (docs/algorithms.md section 4).

IR labels (0 = sure background, 1..K = class, 255 = unsure) are taken at the stride-4 grid by nearest
sampling, `label[::4, ::4]`, which has ((H - 1) // 4 + 1) rows like the boundary map. For every direction
d of the half disc of `radius` (in `fastwsss.algorithms.affinity.half_disc_directions` order) and every source cell
p whose partner p + d lies inside the grid, the pair is

    bg_pos  both labels 0,
    fg_pos  the same label > 0,
    neg     different labels, neither 255,

and a pair touching 255 (or leaving the grid) is in no set. Masks are boolean (B, D, h, w), indexed like
the affinities of `fastwsss.algorithms.affinity.path_max_affinity`.

IRNet's released definitions (misc/indexing.py PathIndex, voc12/dataloader.py) are options:
- `pair_masks(..., window=True)`: PathIndex takes sources only inside one window for every direction, rows
  [0, h - f) and columns [f, w - f) with f = radius - 1 (its radius_floor), so a source near the left,
  right or bottom edge has no pairs even in directions that stay inside the grid.
- `downsample_labels(..., offset=2)`: IRNet shrinks the 512 crop's labels with PIL's nearest x0.25, which
  samples the centre of each 4 x 4 cell, rows and columns 2, 6, 10, ...
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fastwsss.algorithms.affinity import half_disc_directions
from fastwsss.data.palette import IGNORE_INDEX
from fastwsss.engine.distributed import BatchMean, local_mean

STRIDE = 4
EPS = 1e-5


class PairMasks(NamedTuple):
    """Boolean (B, D, h, w) masks of the three pair sets."""

    bg_pos: torch.Tensor
    fg_pos: torch.Tensor
    neg: torch.Tensor

    def counts(self) -> dict[str, int]:
        return {name: int(mask.sum()) for name, mask in zip(self._fields, self, strict=True)}


def downsample_labels(labels: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Nearest x0.25: (B, H, W) or (H, W) labels -> every 4th row and column from `offset`.

    With offset > 0 the grid keeps (H - 1) // 4 + 1 rows like the boundary map: where the last cell has no
    sample at row 4i + offset it takes the image's last row (PIL on a crop of a multiple of 4 never needs it).
    """
    if offset == 0:
        return labels[..., ::STRIDE, ::STRIDE]
    height, width = labels.shape[-2:]
    rows = torch.clamp(torch.arange(0, height, STRIDE) + offset, max=height - 1)
    cols = torch.clamp(torch.arange(0, width, STRIDE) + offset, max=width - 1)
    return labels[..., rows[:, None], cols[None, :]]


def source_window(height: int, width: int, radius: int) -> torch.Tensor:
    """(h, w) bool: PathIndex's source cells, rows [0, h - f) and columns [f, w - f) with f = radius - 1."""
    floor = radius - 1
    window = torch.zeros(height, width, dtype=torch.bool)
    window[: max(height - floor, 0), floor : max(width - floor, floor)] = True
    return window


def pair_masks(grid_labels: torch.Tensor, radius: int, window: bool = False) -> PairMasks:
    """The bg_pos / fg_pos / neg masks of (B, h, w) stride-4 labels for the half disc of `radius`.

    `window`: only PathIndex's source cells (see `source_window`) have pairs.
    """
    if grid_labels.dim() == 2:
        grid_labels = grid_labels.unsqueeze(0)
    if grid_labels.dim() != 3:
        raise ValueError(f"labels must be (B, h, w), got shape {tuple(grid_labels.shape)}")
    if radius < 2:
        raise ValueError(f"radius must be >= 2 (radius 1 has no pairs), got {radius}")
    labels = grid_labels.long()
    height, width = labels.shape[-2:]
    reach = radius - 1
    # Pad left, right and bottom with the ignore label: a partner outside the grid then reads 255 and
    # the pair drops out like any pair touching an unsure pixel.
    padded = F.pad(labels, (reach, reach, 0, reach), value=IGNORE_INDEX)
    partners = torch.stack(
        [padded[:, dy : dy + height, reach + dx : reach + dx + width] for dy, dx in half_disc_directions(radius)],
        dim=1,
    )
    source = labels.unsqueeze(1)
    valid = (source != IGNORE_INDEX) & (partners != IGNORE_INDEX)
    if window:
        valid = valid & source_window(height, width, radius).to(valid.device)
    same = source == partners
    return PairMasks(
        bg_pos=valid & same & (source == 0),
        fg_pos=valid & same & (source > 0),
        neg=valid & ~same,
    )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, batch_mean: BatchMean) -> torch.Tensor:
    """Mean of `values` over `mask` (over the whole batch); 0 for an empty mask, never NaN."""
    return batch_mean(torch.where(mask, values, torch.zeros_like(values)).sum(), mask.sum())


def affinity_loss(
    aff: torch.Tensor, masks: PairMasks, batch_mean: BatchMean = local_mean
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IRN's affinity loss on affinities `aff` (B, D, h, w) in [0, 1].

    bg_pos = mean over bg_pos pairs of -log(a + 1e-5), fg_pos likewise, neg = mean over neg pairs of
    -log(1 + 1e-5 - a); each mean is taken over all pairs of the batch and an empty set gives 0. The two
    positive parts are averaged, pos = bg_pos / 2 + fg_pos / 2, and the total averages the positive and
    negative parts, (pos + neg) / 2, as IRNet's edge branch does (docs/algorithms.md section 4).
    Returns (total, {"bg_pos", "fg_pos", "pos", "neg"}) as tensors.
    """
    if aff.shape != masks.bg_pos.shape:
        raise ValueError(f"affinities {tuple(aff.shape)} and pair masks {tuple(masks.bg_pos.shape)} differ in shape")
    pos_term = -torch.log(aff + EPS)
    neg_term = -torch.log(1.0 + EPS - aff)
    bg_pos = _masked_mean(pos_term, masks.bg_pos, batch_mean)
    fg_pos = _masked_mean(pos_term, masks.fg_pos, batch_mean)
    neg = _masked_mean(neg_term, masks.neg, batch_mean)
    pos = bg_pos / 2 + fg_pos / 2
    return (pos + neg) / 2, {"bg_pos": bg_pos, "fg_pos": fg_pos, "pos": pos, "neg": neg}
