"""CONTA's context adjustment (docs/algorithms.md section 7; CONTA paper, Section 3.2, Eq. 1-3).

Round t >= 1 of CONTA:
    X_m  = the foreground of an image's predicted mask (round t-1), area-averaged onto an S x S grid and
           flattened to hw = S^2 values in [0, 1]                      -> `foreground_map`
    c_i  = the mean over the training images tagged with class i of the indicator of class i in their
           predicted masks, on the same grid (background dropped)      -> `ConfounderSetBuilder`
    M_t  = sum_i alpha_i c_i P(c_i), alpha = softmax_i((W1 X_m)^T (W2 c_i) / sqrt(n)), P(c_i) = 1/n
                                                                       -> `ConfounderAttention`
    s    = f([X, M_t]): M_t resized to the feature grid and concatenated (block 5 by default)
                                                                       -> `ContextClassifier`, CAMNet
W1 and W2 (n x hw) are trained with the classifier. M_t is a prior in image-normalised coordinates, so
the crop and flip of training augmentation are not applied to it (the paper does not say either way);
at CAM time the flipped image gets the flipped map.

The module ends with `METHOD`, CONTA's declaration for the method registry (fastwsss.methods.base): its
stage confounder (fastwsss/stages/confounder.py, which also holds the classifier's M_t input), its section
`conta` and its rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastwsss.config import RunConfig
from fastwsss.engine.files import atomic_path
from fastwsss.engine.rundir import CONFOUNDER
from fastwsss.errors import CheckpointError
from fastwsss.kernels.confounder_attention import confounder_attention
from fastwsss.methods.base import ClassifierInput, ExtraMap, Method, Need, ReportSection
from fastwsss.models.cam_net import CAMNet
from fastwsss.stages import BASELINE, Stage, lazy
from fastwsss.stages.context import StageContext

IGNORE = 255


def _grid_average(indicator: np.ndarray, size: int) -> np.ndarray:
    """Area average of a (H, W) 0/1 map onto size x size cells (fractional cells where sizes do not divide)."""
    x = torch.from_numpy(np.ascontiguousarray(indicator, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(x, size)[0, 0].reshape(-1).numpy()


def foreground_map(mask: np.ndarray, size: int) -> np.ndarray:
    """X_m: the share of object pixels (id not 0 and not 255) of a class-id mask per grid cell, flattened."""
    return _grid_average((mask != 0) & (mask != IGNORE), size)


class ConfounderSetBuilder:
    """Accumulates the confounder set C (n x hw) from (predicted mask, image labels) pairs."""

    def __init__(self, num_classes: int, size: int) -> None:
        self.size = size
        self.total = np.zeros((num_classes, size * size), np.float64)
        self.counts = np.zeros(num_classes, np.int64)

    def add(self, mask: np.ndarray, labels: np.ndarray) -> None:
        for i in np.flatnonzero(np.asarray(labels) > 0.5):
            self.total[i] += _grid_average(mask == i + 1, self.size)
            self.counts[i] += 1

    def result(self) -> np.ndarray:
        """c_i = mean over the images tagged i; a class no image is tagged with keeps a zero row."""
        return (self.total / np.maximum(self.counts, 1)[:, None]).astype(np.float32)


class ConfounderAttention(nn.Module):
    """Eq. 3: the X-specific context prior M from the image's mask X_m and the fixed confounder set C."""

    def __init__(self, confounders: torch.Tensor, seed: int = 0) -> None:
        super().__init__()
        if confounders.dim() != 2:
            raise ValueError(f"confounders must be (n, hw), got shape {tuple(confounders.shape)}")
        n, hw = confounders.shape
        size = math.isqrt(hw)
        if size * size != hw:
            raise ValueError(f"confounders: hw = {hw} is not a square grid")
        self.size = size
        self.register_buffer("confounders", confounders.detach().float().clone())
        generator = torch.Generator().manual_seed(seed)
        # 1/sqrt(hw) keeps W x at the scale of x's mean, so the initial softmax is neither flat nor saturated.
        self.w1 = nn.Parameter(torch.randn(n, hw, generator=generator) / math.sqrt(hw))
        self.w2 = nn.Parameter(torch.randn(n, hw, generator=generator) / math.sqrt(hw))

    def forward(self, xm: torch.Tensor) -> torch.Tensor:
        """(B, hw) masks -> (B, 1, S, S) maps M."""
        m = confounder_attention(xm.float(), self.w1, self.w2, self.confounders)
        return m.view(xm.shape[0], 1, self.size, self.size)


class ContextClassifier(nn.Module):
    """s = f([X, M_t]): a CAMNet with one extra channel, fed by `ConfounderAttention` of the image's X_m."""

    def __init__(self, net: CAMNet, attention: ConfounderAttention, attention_lr_mult: float | None = None) -> None:
        super().__init__()
        if net.extra_channels != 1:
            raise ValueError(f"CONTA's CAMNet needs extra_channels=1, got {net.extra_channels}")
        self.net = net
        self.attention = attention
        self.attention_lr_mult = attention_lr_mult

    def forward(self, image: torch.Tensor, xm: torch.Tensor) -> torch.Tensor:
        return self.net(image, self.attention(xm))

    def param_groups(self) -> list[dict[str, Any]]:
        """[backbone, head, attention (W1, W2)]; the attention takes the head's lr unless `attention_lr_mult`
        (a multiple of the base lr) is given."""
        backbone, head = self.net.param_groups()
        attention: dict[str, Any] = {"name": "attention", "params": list(self.attention.parameters())}
        if self.attention_lr_mult is not None:
            attention["lr_mult"] = self.attention_lr_mult
        return [backbone, head, attention]


class MaskTable:
    """X_m of every image of a round, by id (float16 on disk, float32 in batches)."""

    def __init__(self, ids: list[str], maps: np.ndarray) -> None:
        if len(ids) != maps.shape[0]:
            raise ValueError(f"{len(ids)} ids but {maps.shape[0]} masks")
        self.index = {image_id: i for i, image_id in enumerate(ids)}
        self.ids = list(ids)
        self.maps = maps

    def batch(self, ids: list[str] | tuple[str, ...]) -> torch.Tensor:
        try:
            rows = [self.index[i] for i in ids]
        except KeyError as exc:
            raise CheckpointError(f"no X_m for image {exc.args[0]!r}; rerun the confounder stage") from None
        return torch.from_numpy(self.maps[rows].astype(np.float32))

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, ids=np.asarray(self.ids), maps=self.maps.astype(np.float16))

    @classmethod
    def load(cls, path: str | Path) -> MaskTable:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: X_m table not found (run the confounder stage first)")
        with np.load(path, allow_pickle=False) as data:
            return cls([str(i) for i in data["ids"]], data["maps"])


@dataclass
class ContaConfig:
    """CONTA's context adjustment (docs/algorithms.md section 7).

    `rounds`: CONTA rounds after the baseline round 0 (the paper's best is 3); `extra_at`: where M_t is
    concatenated (block5 = after layer4, the paper's choice; block2..block4; dense = all four);
    `mask_size`: side of the grid of the confounder set C and of X_m (hw = mask_size^2); `mask_source`:
    seg (the paper's choice) or pseudo (its Q4 ablation); `attention_lr_mult`: lr of W1, W2 as a multiple of
    the classifier head's (the paper does not say; 1 = trained like the head).
    """

    rounds: int = 3
    extra_at: str = "block5"
    mask_size: int = 64
    mask_source: str = "seg"
    attention_lr_mult: float = 1.0


CONTA_EXTRA_AT = ("block2", "block3", "block4", "block5", "dense")
"""Where M_t may be concatenated (`conta.extra_at`): after block 2..5 (ResNet numbering) or all four."""


def _check(config: RunConfig, need: Need) -> None:
    t = config.conta
    need(t.mask_size <= 512, "conta.mask_size", f"must be <= 512, got {t.mask_size}")
    need(t.rounds <= 100, "conta.rounds", f"must be <= 100, got {t.rounds}")
    need(t.rounds >= 0, "conta.rounds", f"must be >= 0, got {t.rounds}")
    need(t.extra_at in CONTA_EXTRA_AT, "conta.extra_at", f"one of {', '.join(CONTA_EXTRA_AT)}, got {t.extra_at!r}")
    need(t.mask_size >= 1, "conta.mask_size", f"must be >= 1, got {t.mask_size}")
    need(t.mask_source in ("seg", "pseudo"), "conta.mask_source", f"seg or pseudo, got {t.mask_source!r}")
    need(t.attention_lr_mult > 0, "conta.attention_lr_mult", f"must be > 0, got {t.attention_lr_mult}")


def _sources(preset: str) -> dict[str, str]:
    from fastwsss.engine.provenance import CONTA_SOURCES

    return dict(CONTA_SOURCES)


def _classifier_input(ctx: StageContext) -> ClassifierInput | None:
    """M_t in rounds >= 1; round 0 is the baseline classifier."""
    if (ctx.round or 0) < 1:
        return None
    from fastwsss.stages.confounder import ContextInput

    return ContextInput(ctx)


def _cam_input(ctx: StageContext) -> ExtraMap | None:
    if (ctx.round or 0) < 1:
        return None
    from fastwsss.stages.confounder import context_maps

    return context_maps(ctx)


METHOD = Method(
    name="conta",
    description="backdoor adjustment: the classifier also sees the context prior M_t, over --rounds",
    links=("https://arxiv.org/abs/2009.12547", "https://github.com/dongzhang89/CONTA"),
    stages=("confounder", *BASELINE),
    added_stages=(Stage("confounder", CONFOUNDER, lazy("fastwsss.stages.confounder", "run_confounder"),
                        reads=("cam_split", "train_split"), loads="previous round's seg"),),
    section="conta",
    settings=ContaConfig,
    preset_settings={"tiny": partial(ContaConfig, mask_size=16), "synthetic": partial(ContaConfig, mask_size=32)},
    check=_check,
    sources=_sources,
    rounds="conta.rounds",
    first_round_skips=("confounder",),
    classifier_input=_classifier_input,
    cam_input=_cam_input,
    report_sections=(ReportSection("conta", "CONTA rounds", lazy("fastwsss.reporting.method_sections", "rounds_section")),),
)
