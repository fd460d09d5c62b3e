"""Typed run configuration: plain dataclasses, one function per preset, no string inheritance.

A preset returns a complete `RunConfig`; the CLI then applies the user's options with `dataclasses.replace`
and `validate()` checks every range, naming the setting. The resolved config is written to
RUNDIR/config.json and read back on `--resume`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fastwsss.algorithms.thresholds import THRESHOLD_RULES
from fastwsss.config_types import check_types
from fastwsss.errors import ConfigError


@dataclass
class SynthConfig:
    """The built-in synthetic confounded scenes (see fastwsss.data.synthetic)."""

    size: int = 96
    num_train: int = 1500
    num_val: int = 300
    num_debiased: int = 300
    context_prob: float = 0.8
    cooccur_prob: float = 0.5
    part_context_prob: float = 0.8
    max_objects: int = 3
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    cam_split: str = "train"
    eval_split: str = ""
    """Split on which the eval stage scores seeds, IR labels, pseudo masks and predictions (its ids must be in
    `cam_split`); empty = `cam_split`. IRNet scores on VOC `train` while its CAMs cover `train_aug`."""
    test_splits: tuple[str, ...] = ()
    """Further splits on which the seg stage scores its model (the synthetic presets add `debiased`)."""
    cls_labels: str | None = None
    num_workers: int = 0
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class ClsConfig:
    """CAM classifier and its training (docs/algorithms.md section 2)."""

    backbone: str = "resnet50"
    output_stride: int = 16
    weights: str | None = None
    freeze_bn: bool = True
    detach_early: bool = True
    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    """SGD momentum of the cls and c2am stages. IRNet's PolyOptimizer passes its weight decay positionally
    into SGD's momentum slot (the per-group weight decay still applies), so the released runs train with
    momentum 1e-4: the `voc`/`coco` value (docs/reproduce.md)."""
    train_bn_affine: bool = False
    """With `freeze_bn`: True keeps every BatchNorm's statistics fixed but trains the affine parameters of all
    but the stem's bn1 (IRNet's FixedBatchNorm; `detach_early` still stops layer1/2); False freezes them all."""
    resize_long: tuple[int, int] = (320, 640)
    crop: int = 512


@dataclass
class CamConfig:
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)


@dataclass
class IRLabelConfig:
    """Confident seeds from CAMs (docs/algorithms.md section 3).

    `fg_rule`: "fixed" thresholds every class map at `fg_threshold` (IRNet); "otsu" at its own Otsu level,
    never below `fg_threshold` (fastwsss.algorithms.thresholds; no masks involved).
    """

    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    crf: bool = False
    fg_rule: str = "fixed"


@dataclass
class IRNConfig:
    """Inter-pixel relation net: boundary branch on frozen backbone features (docs/algorithms.md section 4).

    `backbone_from`: "imagenet" builds `backbone` with `weights` (IRNet's choice); "cls" copies the trained
    classifier's backbone, which is what the from-scratch CPU presets need (a frozen random backbone has no
    useful features).
    """

    backbone: str = "resnet50"
    backbone_from: str = "imagenet"
    weights: str | None = None
    radius: int = 10
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    resize_long: tuple[int, int] = (320, 640)
    scale_range: tuple[float, ...] = ()
    """Training rescale: empty = a random long side in `resize_long`; (lo, hi) = a random factor of the
    image's own size (IRNet: 0.5, 1.5)."""
    crop: int = 512
    pairs: str = "all"
    """Training pair set: "all" = every in-grid pair; "pathindex" = IRNet's PathIndex, sources only in the
    window rows [0, h - r + 1), columns [r - 1, w - r + 1) for radius r."""
    label_offset: int = 0
    """IR labels go to the stride-4 grid as label[o::4, o::4]; IRNet's PIL nearest x0.25 samples o = 2."""
    infer_pad: int = 0
    """Boundary inference pads the image to a multiple of the output stride (0), or to infer_pad x infer_pad
    (IRNet: 512, its training crop; GroupNorm statistics include the padding)."""
    relu_after_upsample: bool = False
    """Edge taps 3..5: False = conv, GroupNorm, ReLU, upsample; True = conv, GroupNorm, upsample, ReLU (IRNet)."""


@dataclass
class PseudoConfig:
    """Random-walk propagation and post-processing (docs/algorithms.md section 5)."""

    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    bg_threshold: float = 0.25
    bg_rule: str = "fixed"
    """"fixed": one background level `bg_threshold` against the walked maps divided by their global
    maximum (IRNet); "otsu": each walked map's own Otsu level, never below `bg_threshold`."""
    refine_iterations: int = 0
    """Colour-affinity averages of the walked maps before the background level (fastwsss.algorithms.colour_refine);
    0 = none (IRNet)."""
    refine_dilations: tuple[int, ...] = (1, 2, 4, 8)
    """Pixel distances of the 8 neighbours each refinement step averages over."""


@dataclass
class SegConfig:
    """Segmentation model trained on the pseudo masks (docs/algorithms.md section 8)."""

    model: str = "deeplabv2"
    backbone: str = "resnet101"
    weights: str | None = None
    epochs: int = 20
    batch_size: int = 10
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    crop: int = 321
    scale_range: tuple[float, float] = (0.5, 1.5)
    scales: tuple[float, ...] = ()
    """Training rescale factors drawn from this set (DeepLab's 0.5..1.5); empty = uniform in `scale_range`."""
    iterations: int = 0
    """Optimiser steps (DeepLab: 20k), taking the place of `epochs`; 0 = `epochs` passes over the pseudo masks."""
    iter_size: int = 1
    """Gradient accumulation: each step's `batch_size` images go through the net in `iter_size` chunks whose
    losses are averaged (DeepLab: 2 forward batches of 5 per step)."""
    lr_step: int = 1
    """The poly lr is recomputed every `lr_step` steps (DeepLab's PolynomialLR: 10)."""
    freeze_bn: bool = False
    """BatchNorm keeps its ImageNet statistics and affine parameters (DeepLab's freeze_bn)."""
    param_groups: str = "two"
    """"two": backbone at lr, head at lr x head_lr_mult; "deeplab": backbone convolutions at lr, head
    weights at lr x head_lr_mult, head biases at 2 x that without weight decay (DeepLab's 1x/10x/20x)."""
    loss_at: str = "input"
    """Cross entropy on logits upsampled to the crop ("input") or at the logit grid with the labels
    downsampled by nearest ("logits", DeepLab)."""
    crf: bool = False
    """Refine the val and cam-split predictions with DeepLab's test-time dense CRF (needs fastwsss[crf]); the
    released code offers it as a separate, optional step."""
    refine_iterations: int = 0
    """Test-time colour refinement of the softmax before the argmax, for the same predictions as `crf`
    (fastwsss.algorithms.colour_refine, its default neighbour distances): a CRF-like step with no extra dependency.
    0 = none. The exported model and `fastwsss segment` give the unrefined output."""
    msc_scales: tuple[float, ...] = ()
    """DeepLab's MSC: extra input scales (0.5, 0.75); training sums the loss of every scale and of their max,
    prediction takes the max. Empty = single scale."""
    init: str = "weights"
    """Where the backbone starts: "weights" = `seg.weights` (ImageNet, as DeepLab) or random when none is given;
    "classifier" = the backbone of the run's own classifier (the one whose CAMs the run uses), the stand-in
    for pretraining where no ImageNet network exists (reduced-width backbones). Needs `seg.backbone` equal
    to `cls.backbone` and no `seg.weights`."""


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


@dataclass
class EvalConfig:
    cam_bg_threshold: float = 0.15
    cam_bg_sweep: tuple[float, ...] = (0.05, 0.10, 0.13, 0.15, 0.17, 0.20, 0.25, 0.30, 0.40, 0.50, 0.60)


@dataclass
class RunConfig:
    preset: str = "synthetic"
    method: str = "cam"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    cls: ClsConfig = field(default_factory=ClsConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    ir_label: IRLabelConfig = field(default_factory=IRLabelConfig)
    irn: IRNConfig = field(default_factory=IRNConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    c2am: C2AMConfig = field(default_factory=C2AMConfig)
    conta: ContaConfig = field(default_factory=ContaConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DATASET_NAMES = ("synthetic", "voc", "coco")


def _small_cls(**changes: Any) -> ClsConfig:
    """Classifier settings for the CPU presets: a reduced-width net trained from scratch.

    Without ImageNet weights a frozen stem and frozen BatchNorm would keep random features, so the small
    presets train every layer with BatchNorm in train mode; the `voc` preset keeps the paper's freezing.
    """
    base = ClsConfig(
        backbone="resnet18_half",
        freeze_bn=False,
        detach_early=False,
        batch_size=32,
        lr=0.05,
        head_lr_mult=10.0,
        weight_decay=1e-4,
        resize_long=(80, 112),
        crop=96,
    )
    return dataclasses.replace(base, **changes)


def _small_irn(**changes: Any) -> IRNConfig:
    """IRN for the CPU presets: the boundary head on the trained classifier's frozen backbone."""
    base = IRNConfig(backbone_from="cls", epochs=3, batch_size=32, lr=0.1, resize_long=(80, 112), crop=96)
    return dataclasses.replace(base, **changes)


def _small_seg(**changes: Any) -> SegConfig:
    """DeepLab-v2 on a reduced-width ResNet-18, trained from scratch (so a larger lr than the paper's)."""
    base = SegConfig(model="deeplabv2", backbone="resnet18_half", epochs=10, batch_size=16, lr=0.01, head_lr_mult=1.0, crop=96,
                     scale_range=(0.75, 1.25))
    return dataclasses.replace(base, **changes)


def _small_c2am(**changes: Any) -> C2AMConfig:
    """C2AM fine-tune for the CPU presets: a tenth of the from-scratch classifier lr, as the released schedule
    is a small fraction of its baseline's (5e-4 vs 0.1)."""
    base = C2AMConfig(global_size=64, epochs=3, batch_size=32, lr=0.005, head_lr_mult=10.0)
    return dataclasses.replace(base, **changes)


def preset_tiny() -> RunConfig:
    """Seconds-scale smoke run: a small synthetic set and a tiny net, every stage."""
    return RunConfig(
        preset="tiny",
        data=DataConfig(synth=SynthConfig(size=64, num_train=160, num_val=48, num_debiased=48), test_splits=("debiased",)),
        cls=_small_cls(backbone="resnet18_quarter", epochs=3, resize_long=(56, 72), crop=64),
        cam=CamConfig(scales=(1.0, 0.5, 1.5)),
        irn=_small_irn(epochs=2, batch_size=16, resize_long=(56, 72), crop=64),
        seg=_small_seg(backbone="resnet18_quarter", epochs=3, crop=64),
        c2am=_small_c2am(epochs=2),
        conta=ContaConfig(mask_size=16),
    )


def preset_synthetic() -> RunConfig:
    """The default job: the built-in synthetic set, minutes on 2 CPU cores.

    Changes from IRNet's values, each measured in docs/default-job.md and none chosen on masks: output
    stride 8 (a 12x12 CAM grid on 96-pixel images instead of 6x6); Otsu levels for the IR-label foreground
    and the pseudo-mask background, never below IRNet's 0.30 / 0.25 (fastwsss.algorithms.thresholds: on this set the
    CAMs spread over the scene around each object, and a fixed VOC level marks that scene as the object); a
    walk of 2^4 steps, IRNet's 2^8 scaled by the area of the stride-4 grid (24x24 here against about 94x125
    on VOC); 10 colour-affinity steps on the walked maps (fastwsss.algorithms.colour_refine: the boundary net does not
    find the objects' borders, the colours do), and the same 10 steps on DeepLab's softmax at test time (the
    place of DeepLab's dense CRF); and DeepLab started from the run's own classifier.
    """
    return RunConfig(
        preset="synthetic",
        data=DataConfig(test_splits=("debiased",)),
        cls=_small_cls(epochs=8, output_stride=8),
        ir_label=IRLabelConfig(fg_rule="otsu"),
        irn=_small_irn(),
        pseudo=PseudoConfig(exp_times=4, bg_rule="otsu", refine_iterations=10),
        seg=_small_seg(epochs=7, init="classifier", refine_iterations=10),
        c2am=_small_c2am(),
        conta=ContaConfig(mask_size=32),
    )


RELEASED_CAM_SWEEP = (0.05, 0.10, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20, 0.25, 0.30, 0.40, 0.50, 0.60)
"""The seed-threshold sweep with every value of C2AM's run_c2am.sh (0.13..0.20 in steps of 0.01)."""


def _released_irn(**changes: Any) -> IRNConfig:
    """IRNet's train_irn.py / EdgeDisplacement on an ImageNet ResNet-50 (give irn.weights via --weights)."""
    base = IRNConfig(momentum=1e-4, scale_range=(0.5, 1.5), pairs="pathindex", label_offset=2, infer_pad=512,
                     relu_after_upsample=True)
    return dataclasses.replace(base, **changes)


def _released_seg(**changes: Any) -> SegConfig:
    """DeepLab-v2 ResNet-101 MSC as configured in CONTA's (and kazuto1011's) voc12.yaml and main.py."""
    base = SegConfig(batch_size=10, iter_size=2, iterations=20_000, lr=2.5e-4, head_lr_mult=10.0, weight_decay=5e-4,
                     momentum=0.9, crop=321, scales=(0.5, 0.75, 1.0, 1.25, 1.5), lr_step=10, freeze_bn=True,
                     param_groups="deeplab", loss_at="logits", msc_scales=(0.5, 0.75))
    return dataclasses.replace(base, **changes)


def preset_voc() -> RunConfig:
    """PASCAL VOC 2012 with the released IRNet / CONTA / C2AM settings (give --root, --weights, --seg-weights).

    `fastwsss presets voc` prints where every released value comes from.
    """
    return RunConfig(
        preset="voc",
        data=DataConfig(name="voc", train_split="train_aug", val_split="val", cam_split="train_aug", eval_split="train",
                        num_workers=4),
        cls=ClsConfig(momentum=1e-4, train_bn_affine=True),
        ir_label=IRLabelConfig(crf=True),
        irn=_released_irn(),
        seg=_released_seg(),
        eval=EvalConfig(cam_bg_sweep=RELEASED_CAM_SWEEP),
    )


def preset_coco() -> RunConfig:
    """COCO 2014 in the WSSS layout (see fastwsss.data.coco) with the VOC preset's released definitions."""
    voc = preset_voc()
    return dataclasses.replace(
        voc,
        preset="coco",
        data=DataConfig(name="coco", train_split="train", val_split="val", cam_split="train", num_workers=4),
        seg=dataclasses.replace(voc.seg, iterations=100_000),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "tiny": preset_tiny,
    "synthetic": preset_synthetic,
    "voc": preset_voc,
    "coco": preset_coco,
}


def get_preset(name: str, method: str = "cam") -> RunConfig:
    """Preset `name` for `method`, with the method's own changes to that preset (`Method.preset_changes`)."""
    from fastwsss.methods import get_method

    try:
        config = PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
    return get_method(method).with_preset(name, config)


MAX_SEED = 2**32 - 1
MAX_RADIUS = 24
"""Upper bound of irn.radius and pseudo.radius: the pair count grows with radius^2 (IRNet uses 10 and 5);
a radius of 60 exhausts the memory of any machine."""
MAX_SIDE = 4096
"""Upper bound of crops, long sides and generated image sides, in pixels."""
MAX_BATCH = 1024
MAX_EPOCHS = 100_000
SCALE_RANGE = (0.05, 8.0)
"""Allowed CAM scales: below 0.05 a typical image shrinks to a few pixels; above 8 one scale alone needs
64 times the image's activations."""


def validate(config: RunConfig) -> RunConfig:
    """Check every setting's type and range (upper bounds included); raise ConfigError naming the first bad one.

    Each registered method checks its own section (`Method.check`)."""
    from fastwsss.methods import METHODS

    def need(ok: bool, setting: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{setting}: {message}")

    if not isinstance(config, RunConfig):
        raise ConfigError(f"config: expected the run settings, got {type(config).__name__}")
    check_types(config)
    need(0 <= config.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}, got {config.seed}")
    for section in ("cls", "irn", "seg"):
        part = getattr(config, section)
        need(1 <= part.epochs <= MAX_EPOCHS, f"{section}.epochs", f"must be in 1..{MAX_EPOCHS}, got {part.epochs}")
        need(1 <= part.batch_size <= MAX_BATCH, f"{section}.batch_size", f"must be in 1..{MAX_BATCH}, got {part.batch_size}")
    for section in ("cls", "irn", "seg"):
        part = getattr(config, section)
        need(part.crop <= MAX_SIDE, f"{section}.crop", f"must be <= {MAX_SIDE}, got {part.crop}")
    for section in ("cls", "irn"):
        part = getattr(config, section)
        need(max(part.resize_long) <= MAX_SIDE, f"{section}.resize_long", f"must be <= {MAX_SIDE}, got {part.resize_long}")
    lo, hi = SCALE_RANGE
    need(all(lo <= x <= hi for x in config.cam.scales), "cam.scales", f"each scale must be in [{lo}, {hi}], got {config.cam.scales}")
    need(len(config.cam.scales) <= 16, "cam.scales", f"at most 16 scales, got {len(config.cam.scales)}")
    need(config.irn.radius <= MAX_RADIUS, "irn.radius", f"must be <= {MAX_RADIUS}, got {config.irn.radius}")
    need(config.pseudo.radius <= MAX_RADIUS, "pseudo.radius", f"must be <= {MAX_RADIUS}, got {config.pseudo.radius}")
    need(config.data.synth.size <= MAX_SIDE, "synth.size", f"must be <= {MAX_SIDE}, got {config.data.synth.size}")
    need(config.data.num_workers <= 256, "data.num_workers", f"must be <= 256, got {config.data.num_workers}")
    need(config.preset in PRESETS, "preset", f"unknown preset {config.preset!r}; valid: {', '.join(PRESETS)}")
    need(config.method in METHODS, "method", f"unknown method {config.method!r}; valid: {', '.join(METHODS)}")
    for method in METHODS.values():
        if method.check is not None:
            method.check(config, need)
    need(config.data.name in DATASET_NAMES, "data", f"unknown data set {config.data.name!r}; valid: {', '.join(DATASET_NAMES)}")
    need(config.data.name == "synthetic" or config.data.root is not None, "root", f"--root is required for --data {config.data.name}")
    need(config.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    s = config.data.synth
    need(s.size >= 32, "synth.size", f"must be >= 32, got {s.size}")
    need(s.num_train >= 1 and s.num_val >= 1 and s.num_debiased >= 0, "synth.num_*", "split sizes must be positive")
    for name in ("context_prob", "cooccur_prob", "part_context_prob"):
        value = getattr(s, name)
        need(0.0 <= value <= 1.0, f"synth.{name}", f"must be in [0, 1], got {value}")
    need(s.max_objects >= 1, "synth.max_objects", "must be >= 1")
    c = config.cls
    need(c.output_stride in (8, 16, 32), "cls.output_stride", f"must be 8, 16 or 32, got {c.output_stride}")
    need(c.epochs >= 1, "cls.epochs", f"must be >= 1, got {c.epochs}")
    need(c.batch_size >= 1, "cls.batch_size", f"must be >= 1, got {c.batch_size}")
    need(c.lr > 0, "cls.lr", f"must be > 0, got {c.lr}")
    need(0 <= c.momentum < 1, "cls.momentum", f"must be in [0, 1), got {c.momentum}")
    need(c.weight_decay >= 0, "cls.weight_decay", "must be >= 0")
    need(0 < c.resize_long[0] <= c.resize_long[1], "cls.resize_long", f"need 0 < min <= max, got {c.resize_long}")
    need(c.crop >= 16, "cls.crop", f"must be >= 16, got {c.crop}")
    need(not c.train_bn_affine or c.freeze_bn, "cls.train_bn_affine", "only applies with cls.freeze_bn true")
    need(len(config.cam.scales) >= 1 and all(x > 0 for x in config.cam.scales), "cam.scales", "need positive scales")
    i = config.ir_label
    need(0 < i.bg_threshold < i.fg_threshold < 1, "ir_label.fg_threshold",
         f"need 0 < bg_threshold < fg_threshold < 1, got {i.bg_threshold} and {i.fg_threshold}")
    need(i.fg_rule in THRESHOLD_RULES, "ir_label.fg_rule", f"one of {', '.join(THRESHOLD_RULES)}, got {i.fg_rule!r}")
    r = config.irn
    need(r.backbone_from in ("imagenet", "cls"), "irn.backbone_from", f"imagenet or cls, got {r.backbone_from!r}")
    need(r.radius >= 2, "irn.radius", f"must be >= 2, got {r.radius}")
    need(r.epochs >= 1 and r.batch_size >= 1 and r.lr > 0, "irn.epochs", "epochs, batch_size and lr must be positive")
    need(0 < r.resize_long[0] <= r.resize_long[1] and r.crop >= 16, "irn.crop", "need a valid resize_long and crop >= 16")
    need(0 <= r.momentum < 1, "irn.momentum", f"must be in [0, 1), got {r.momentum}")
    need(r.scale_range == () or (len(r.scale_range) == 2 and 0 < r.scale_range[0] <= r.scale_range[1]), "irn.scale_range",
         f"empty or (min, max) with 0 < min <= max, got {r.scale_range}")
    need(r.pairs in ("all", "pathindex"), "irn.pairs", f"all or pathindex, got {r.pairs!r}")
    need(0 <= r.label_offset < 4, "irn.label_offset", f"must be in 0..3, got {r.label_offset}")
    need(r.infer_pad == 0 or r.infer_pad % 16 == 0, "irn.infer_pad", f"0 or a multiple of 16, got {r.infer_pad}")
    p = config.pseudo
    need(p.radius >= 2, "pseudo.radius", f"must be >= 2, got {p.radius}")
    need(p.beta > 0, "pseudo.beta", f"must be > 0, got {p.beta}")
    need(0 <= p.exp_times <= 16, "pseudo.exp_times", f"must be in 0..16, got {p.exp_times}")
    need(0 < p.bg_threshold < 1, "pseudo.bg_threshold", f"must be in (0, 1), got {p.bg_threshold}")
    need(p.bg_rule in THRESHOLD_RULES, "pseudo.bg_rule", f"one of {', '.join(THRESHOLD_RULES)}, got {p.bg_rule!r}")
    need(0 <= p.refine_iterations <= 100, "pseudo.refine_iterations", f"must be in 0..100, got {p.refine_iterations}")
    need(len(p.refine_dilations) > 0 and all(1 <= d <= 64 for d in p.refine_dilations), "pseudo.refine_dilations",
         f"one or more pixel distances in 1..64, got {p.refine_dilations}")
    g = config.seg
    need(0 <= g.refine_iterations <= 100, "seg.refine_iterations", f"must be in 0..100, got {g.refine_iterations}")
    need(not (g.crf and g.refine_iterations), "seg.refine_iterations", "use either seg.crf or the colour refinement, not both")
    need(g.model in ("deeplabv2", "deeplabv3"), "seg.model", f"deeplabv2 or deeplabv3, got {g.model!r}")
    need(g.epochs >= 1, "seg.epochs", f"must be >= 1, got {g.epochs}")
    need(g.batch_size >= 1, "seg.batch_size", f"must be >= 1, got {g.batch_size}")
    need(g.model != "deeplabv3" or g.batch_size >= 2, "seg.batch_size", "deeplabv3 needs >= 2 (BatchNorm in ASPP pooling)")
    need(g.lr > 0, "seg.lr", f"must be > 0, got {g.lr}")
    need(g.head_lr_mult > 0, "seg.head_lr_mult", f"must be > 0, got {g.head_lr_mult}")
    need(0 <= g.momentum < 1, "seg.momentum", f"must be in [0, 1), got {g.momentum}")
    need(g.weight_decay >= 0, "seg.weight_decay", f"must be >= 0, got {g.weight_decay}")
    need(0 < g.scale_range[0] <= g.scale_range[1], "seg.scale_range", f"need 0 < min <= max, got {g.scale_range}")
    need(g.crop >= 16, "seg.crop", f"must be >= 16, got {g.crop}")
    need(all(x > 0 for x in g.scales), "seg.scales", f"need positive factors, got {g.scales}")
    need(g.iterations >= 0, "seg.iterations", f"must be >= 0, got {g.iterations}")
    need(g.iter_size >= 1 and g.batch_size % g.iter_size == 0, "seg.iter_size",
         f"must be >= 1 and divide seg.batch_size ({g.batch_size}), got {g.iter_size}")
    need(g.lr_step >= 1, "seg.lr_step", f"must be >= 1, got {g.lr_step}")
    need(g.param_groups in ("two", "deeplab"), "seg.param_groups", f"two or deeplab, got {g.param_groups!r}")
    need(g.loss_at in ("input", "logits"), "seg.loss_at", f"input or logits, got {g.loss_at!r}")
    need(all(0 < x for x in g.msc_scales), "seg.msc_scales", f"need positive scales, got {g.msc_scales}")
    need(g.init in ("weights", "classifier"), "seg.init", f"weights or classifier, got {g.init!r}")
    need(g.init != "classifier" or g.weights is None, "seg.init",
         "classifier takes the backbone from the run's classifier; drop seg.weights (--seg-weights)")
    need(g.init != "classifier" or g.backbone == config.cls.backbone, "seg.init",
         f"classifier needs seg.backbone = cls.backbone, got {g.backbone!r} and {config.cls.backbone!r}")
    e = config.eval
    need(0 < e.cam_bg_threshold < 1, "eval.cam_bg_threshold", f"must be in (0, 1), got {e.cam_bg_threshold}")
    need(re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", config.device) is not None, "device", f"auto, cpu or cuda[:N], got {config.device!r}")
    return config


def _from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    kwargs = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown setting {prefix}{key}")
        f = names[key]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if sub is not None and dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: must be an object of settings, got {type(value).__name__}")
            kwargs[key] = _from_dict(sub, value, f"{prefix}{key}.")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Inverse of `RunConfig.to_dict` (for config.json); every type and range checked (ConfigError)."""
    if not isinstance(values, dict):
        raise ConfigError(f"expected an object of settings, got {type(values).__name__}")
    return validate(_from_dict(RunConfig, values))


def _coerce(text: str, current: Any, setting: str, item_type: type = str) -> Any:
    """`text` as a value of the type `current` has (bool, int, float, str, tuple, or None: JSON or text).

    `item_type` is the item type of an empty tuple (read from the field's annotation by `parse_setting`).
    """
    lowered = text.strip().lower()
    try:
        if isinstance(current, bool):
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError("expected true or false")
            return lowered in ("true", "1", "yes", "on")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            items = json.loads(text) if text.strip().startswith("[") else [t for t in text.split(",") if t.strip()]
            kind = type(current[0]) if current else item_type
            return tuple(_coerce(str(item), kind(), setting) if kind is not str else str(item).strip() for item in items)
        if current is None:
            if lowered in ("none", "null", ""):
                return None
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return text
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{setting}: cannot read {text!r} as {type(current).__name__} ({exc})") from None


def parse_setting(config: RunConfig, assignment: str) -> tuple[str, Any]:
    """"cls.epochs=3" -> ("cls.epochs", 3), the value converted to the setting's type in `config`.

    An unknown section or setting is a ConfigError listing the valid names.
    """
    dotted, sep, text = assignment.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError(f"--set: expected SECTION.NAME=VALUE (e.g. cls.epochs=3), got {assignment!r}")
    current: Any = config
    path: list[str] = []
    annotation = ""
    for name in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(current)} if dataclasses.is_dataclass(current) else {}
        if name not in fields:
            where = ".".join(path) or "settings"
            raise ConfigError(f"--set {dotted}: unknown name {name!r} in {where}; valid: {', '.join(fields) or 'none'}")
        annotation = str(fields[name].type)
        current = getattr(current, name)
        path.append(name)
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"--set {dotted}: a section, not a setting; valid: {', '.join(f.name for f in dataclasses.fields(current))}")
    item_type = float if "tuple[float" in annotation else int if "tuple[int" in annotation else str
    return dotted, _coerce(text, current, dotted, item_type)


def apply_options(config: RunConfig, options: dict[str, Any]) -> RunConfig:
    """Set dotted settings ("cls.epochs") on a copy of `config`; None values are left alone."""
    for dotted, value in options.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        chain = [config]
        for name in parents:
            chain.append(getattr(chain[-1], name))
        updated: Any = dataclasses.replace(chain[-1], **{leaf: value})
        for parent, name in zip(reversed(chain[:-1]), reversed(parents), strict=True):
            updated = dataclasses.replace(parent, **{name: updated})
        config = updated
    return config
