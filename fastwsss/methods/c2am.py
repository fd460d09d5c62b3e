"""C2AM's front-door adjustment (docs/algorithms.md section 6; C2AM paper, Eq. 6-7).

    G   = mean over training images of their baseline CAMs, each resized to S x S (aspect ratio ignored),
          max-normalised per present class, absent classes zero        -> `GlobalCamAccumulator`
    M_c = gamma * mean_{h,w} G_c                                        -> `logit_constants`
    s_c <- s_c * M_c inside BCE-with-logits while fine-tuning           -> `scaled_logits`, `c2am_loss`

Validation and CAM inference use the plain logits; only the fine-tuning loss sees the scaled ones.

The module ends with `METHOD`, C2AM's declaration for the method registry (fastwsss.methods.base): its
stages global_cam and c2am (fastwsss/stages/global_cam.py, c2am_cls.py), its settings section `c2am`
(`C2AMConfig`), its changes to
the released presets and the fine-tuned classifier that the later stages read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastwsss.config import MAX_BATCH, MAX_EPOCHS, MAX_SIDE, RunConfig
from fastwsss.engine.rundir import C2AM, GLOBAL_CAM
from fastwsss.errors import CheckpointError
from fastwsss.methods.base import Method, Need, ReportSection
from fastwsss.stages import Stage, lazy


@dataclass
class C2AMConfig:
    """C2AM's front-door adjustment (docs/algorithms.md section 6); defaults are the released schedule.

    `global_size`: side of the global CAM G; `by_class`: average each class over the images that contain it
    instead of over all images (absent classes count as zero in the default); `gamma` scales
    M_c = gamma * mean(G_c). The fine-tune starts from the baseline classifier with BatchNorm in train mode
    and every layer trainable (`freeze_bn` False), as the released code does. `scale_logits` False is the
    ablation control: the same fine-tune with plain logits (M_c = 1), which separates C2AM's effect from that
    of the extra epochs.
    """

    global_size: int = 128
    by_class: bool = False
    gamma: float = 1.0
    epochs: int = 4
    batch_size: int = 16
    lr: float = 5e-4
    head_lr_mult: float = 10.0
    freeze_bn: bool = False
    scale_logits: bool = True
    output_stride: int = 0
    """Output stride of the fine-tune (C2AM: torchvision's 32); 0 = the classifier's. The saved classifier
    keeps the classifier's stride for CAM inference."""
    freeze_stem: bool = False
    """Freeze conv1 and bn1's affine parameters during the fine-tune (C2AM's Net.train)."""


def _small_c2am(**changes: Any) -> C2AMConfig:
    """C2AM fine-tune for the CPU presets: a tenth of the from-scratch classifier lr, as the released schedule
    is a small fraction of its baseline's (5e-4 vs 0.1)."""
    base = C2AMConfig(global_size=64, epochs=3, batch_size=32, lr=0.005, head_lr_mult=10.0)
    return dataclasses.replace(base, **changes)


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


def load_global_cam(path: Path) -> np.ndarray:
    """G as the global_cam stage wrote it (`RunDir.global_cam_file`); CheckpointError when it is missing."""
    if not path.is_file():
        raise CheckpointError(f"{path}: global CAM not found (run the global_cam stage first)")
    return np.load(path, allow_pickle=False)


def scaled_logits(logits: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """s_c * M_c for a (B, K) batch of logits and the (K,) constants."""
    if logits.dim() != 2 or constants.shape != (logits.shape[1],):
        raise ValueError(f"logits (B, K) and constants (K,) disagree: {tuple(logits.shape)} vs {tuple(constants.shape)}")
    return logits * constants.to(logits.dtype)


def c2am_loss(logits: torch.Tensor, labels: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits (mean over batch and classes) of the scaled logits: the fine-tuning objective."""
    return F.binary_cross_entropy_with_logits(scaled_logits(logits, constants), labels.to(logits.dtype))


def _released_c2am(config: RunConfig) -> RunConfig:
    """C2AM's fine-tune network: torchvision's stride-32 ResNet-50 with conv1/bn1 frozen (net/resnet50_cam.py)."""
    return dataclasses.replace(config, c2am=dataclasses.replace(config.c2am, output_stride=32, freeze_stem=True))


def _voc_c2am(config: RunConfig) -> RunConfig:
    """C2AM's released VOC settings: its fine-tune network, two more CAM scales, IR thresholds 0.375 / 0.10, sem
    bg 0.20 (cfg/c2am.yml) and its DeepLab schedule (batch 10 x 2, 30k iterations, scales 0.5..2.0)."""
    config = _released_c2am(config)
    return dataclasses.replace(
        config,
        cam=dataclasses.replace(config.cam, scales=(*config.cam.scales, 2.5, 3.0)),
        ir_label=dataclasses.replace(config.ir_label, fg_threshold=0.375, bg_threshold=0.10),
        pseudo=dataclasses.replace(config.pseudo, bg_threshold=0.20),
        seg=dataclasses.replace(config.seg, batch_size=20, iterations=30_000, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)),
    )


def _check(config: RunConfig, need: Need) -> None:
    m = config.c2am
    need(1 <= m.epochs <= MAX_EPOCHS, "c2am.epochs", f"must be in 1..{MAX_EPOCHS}, got {m.epochs}")
    need(1 <= m.batch_size <= MAX_BATCH, "c2am.batch_size", f"must be in 1..{MAX_BATCH}, got {m.batch_size}")
    need(m.global_size <= MAX_SIDE, "c2am.global_size", f"must be <= {MAX_SIDE}, got {m.global_size}")
    need(m.global_size >= 1, "c2am.global_size", f"must be >= 1, got {m.global_size}")
    need(m.gamma > 0, "c2am.gamma", f"must be > 0, got {m.gamma}")
    need(m.epochs >= 1 and m.batch_size >= 1 and m.lr > 0 and m.head_lr_mult > 0, "c2am.epochs",
         "epochs, batch_size, lr and head_lr_mult must be positive")
    need(m.output_stride in (0, 8, 16, 32), "c2am.output_stride", f"0 (the classifier's), 8, 16 or 32, got {m.output_stride}")


def _dry_run_row(config: RunConfig, images: dict[str, int | None]) -> Any:
    """The c2am stage's `--dry-run` row: the fine-tune's schedule (the classifier's momentum and weight decay)."""
    from fastwsss.engine.dry_run import PlannedRow, poly_schedule, steps

    c, m, split = config.cls, config.c2am, config.data.train_split
    stride = m.output_stride or c.output_stride
    return PlannedRow("c2am", split, images[split], steps(images[split], m.batch_size, m.epochs), str(m.batch_size),
                      poly_schedule(m.lr, m.head_lr_mult, c.momentum, c.weight_decay) + f"; stride {stride}",
                      "RUNDIR/cls/ckpt.pt")


def _sources(preset: str) -> dict[str, str]:
    from fastwsss.engine.provenance import C2AM_SOURCES

    return {k: v for k, v in C2AM_SOURCES.items() if preset == "voc" or k.startswith("c2am.")}


METHOD = Method(
    name="c2am",
    description="front-door adjustment: fine-tune the classifier with global-CAM logit scaling",
    links=("https://github.com/yiping-wang/c2am",),
    stages=("cls", "global_cam", "c2am", "cam", "ir_label", "irn", "pseudo", "seg", "eval"),
    added_stages=(
        Stage("global_cam", GLOBAL_CAM, lazy("fastwsss.stages.global_cam", "run_global_cam"), reads=("train_split",),
              loads="RUNDIR/cls/ckpt.pt"),
        Stage("c2am", C2AM, lazy("fastwsss.stages.c2am_cls", "run_c2am_cls"), batch_section="c2am", reads=("train_split",),
              describe=_dry_run_row, weights=lazy("fastwsss.engine.run_checks", "cls_weights"),
              loss_label="C2AM fine-tune"),
    ),
    section="c2am",
    settings=C2AMConfig,
    preset_settings={"tiny": partial(_small_c2am, epochs=2), "synthetic": _small_c2am},
    preset_changes={"voc": _voc_c2am, "coco": _released_c2am},
    check=_check,
    sources=_sources,
    classifier_stage=C2AM,
    report_sections=(ReportSection("c2am", "C2AM global CAM", lazy("fastwsss.reporting.method_sections", "global_cam_section")),),
)
