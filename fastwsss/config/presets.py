"""The presets: one function per preset, each returning a complete `RunConfig`, no string inheritance.

The generic sections are set here; each method's section takes that method's values for the preset
(`Method.preset_settings`), and `get_preset` adds the method's own changes (`Method.preset_changes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from fastwsss.config.schema import (
    CamConfig,
    ClsConfig,
    DataConfig,
    EvalConfig,
    IRLabelConfig,
    IRNConfig,
    PseudoConfig,
    RunConfig,
    SegConfig,
    SynthConfig,
    method_sections,
)
from fastwsss.errors import ConfigError


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


def preset_tiny() -> RunConfig:
    """Seconds-scale smoke run: a small synthetic set and a tiny net, every stage."""
    return RunConfig(
        preset="tiny",
        data=DataConfig(synth=SynthConfig(size=64, num_train=160, num_val=48, num_debiased=48), test_splits=("debiased",)),
        cls=_small_cls(backbone="resnet18_quarter", epochs=3, resize_long=(56, 72), crop=64),
        cam=CamConfig(scales=(1.0, 0.5, 1.5)),
        irn=_small_irn(epochs=2, batch_size=16, resize_long=(56, 72), crop=64),
        seg=_small_seg(backbone="resnet18_quarter", epochs=3, crop=64),
        sections=method_sections("tiny"),
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
        sections=method_sections("synthetic"),
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
        sections=method_sections("voc"),
    )


def preset_coco() -> RunConfig:
    """COCO 2014 in the WSSS layout (see fastwsss.data.coco) with the VOC preset's released definitions."""
    voc = preset_voc()
    return dataclasses.replace(
        voc,
        preset="coco",
        data=DataConfig(name="coco", train_split="train", val_split="val", cam_split="train", num_workers=4),
        seg=dataclasses.replace(voc.seg, iterations=100_000),
        sections=method_sections("coco"),
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
