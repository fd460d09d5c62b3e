"""The run settings: one dataclass per generic section, `RunConfig` holding them and every method's section.

A method's settings live with the method (`Method.settings`, fastwsss.methods); `RunConfig` keeps them in
`sections`, reachable as attributes (`config.c2am`) and written as top-level sections of config.json, so
adding a method with settings needs no change here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


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
class EvalConfig:
    cam_bg_threshold: float = 0.15
    cam_bg_sweep: tuple[float, ...] = (0.05, 0.10, 0.13, 0.15, 0.17, 0.20, 0.25, 0.30, 0.40, 0.50, 0.60)



@dataclass
class _PipelineConfig:
    """The generic sections of `RunConfig`, those of the stages every method shares."""

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


GENERIC_SECTIONS = tuple(f.name for f in fields(_PipelineConfig))
"""The names of `RunConfig`'s own settings and sections, in config.json order."""


@dataclass(init=False)
class RunConfig(_PipelineConfig):
    """Every setting of a run: the generic sections, then one section per registered method with settings.

    A method's section is a keyword of the constructor and of `dataclasses.replace` (`c2am=...`) and an
    attribute (`config.c2am`); a section not given gets the method's defaults, so a config.json written
    before a method existed still loads.
    """

    sections: dict[str, Any] = field(default_factory=dict)
    """Method section name (`Method.section`) -> its settings dataclass, in registry order."""

    def __init__(self, *args: Any, sections: dict[str, Any] | None = None, **settings: Any) -> None:
        given = dict(sections or {})
        for name in [key for key in settings if key not in GENERIC_SECTIONS]:
            given[name] = settings.pop(name)
        super().__init__(*args, **settings)
        known = method_section_types()
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise TypeError(f"RunConfig: unknown section {unknown[0]!r}; method sections: {', '.join(known) or 'none'}")
        self.sections = {name: given[name] if name in given else kind() for name, kind in known.items()}

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as config.json holds them: method sections at the top level, after the generic ones."""
        values = asdict(self)
        values.update(values.pop("sections"))
        return values


def method_section_types() -> dict[str, type]:
    """Section name -> settings dataclass of every registered method that has settings, in registry order."""
    from fastwsss.methods import METHODS

    return {m.section: m.settings for m in METHODS.values() if m.section is not None and m.settings is not None}


def method_sections(preset: str | None = None) -> dict[str, Any]:
    """Every registered method's section with its values for `preset` (`Method.section_settings`)."""
    from fastwsss.methods import METHODS

    return {m.section: m.section_settings(preset) for m in METHODS.values()
            if m.section is not None and m.settings is not None}
