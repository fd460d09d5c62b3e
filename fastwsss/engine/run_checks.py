"""Checks of a new run against the machine and the data, made before its run directory is written.

`validate` (fastwsss.config) checks each setting alone. What it cannot see fails here instead of stages
later, when `--resume` would refuse to change the setting and a plain rerun would refuse the directory:
a device that is not present, a kernel backend that cannot run on it, a data root or split that does not exist, a cls_labels file that cannot be read, ImageNet weights
that do not fit the backbone.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from fastwsss.config import RunConfig
from fastwsss.errors import ConfigError, FastwsssError
from fastwsss.stages import get_stage


def cls_weights(config: RunConfig) -> tuple[str, str, str | None]:
    """The classifier's ImageNet backbone (the cls stage; the c2am fine-tune starts from the same classifier)."""
    return "cls.weights", config.cls.backbone, config.cls.weights


def irn_weights(config: RunConfig) -> tuple[str, str, str | None] | None:
    return ("irn.weights", config.irn.backbone, config.irn.weights) if config.irn.backbone_from == "imagenet" else None


def seg_weights(config: RunConfig) -> tuple[str, str, str | None] | None:
    return ("seg.weights", config.seg.backbone, config.seg.weights) if config.seg.model == "deeplabv2" else None


def check_device(config: RunConfig) -> None:
    """A cuda device that this machine has; a forced kernel backend that can run on the run's device."""
    from fastwsss.engine.device import resolve_device
    from fastwsss.kernels.dispatch import ENV_VAR, forced_backend

    cuda = resolve_device(config.device).type == "cuda"
    forced = forced_backend()
    if forced == "cuda" and not cuda:
        raise ConfigError(f"{ENV_VAR}=cuda: the run's device is the CPU; unset {ENV_VAR} or run on a GPU")
    if forced == "triton" and importlib.util.find_spec("triton") is None:
        raise ConfigError(f"{ENV_VAR}=triton: triton is not installed; unset {ENV_VAR}")
    if forced == "triton" and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(f"{ENV_VAR}=triton: Triton needs a GPU (or TRITON_INTERPRET=1 on the CPU); unset {ENV_VAR}")


def check_data(config: RunConfig, stage_names: list[str]) -> None:
    """Every split the stages read (`Stage.reads`) exists and lists valid ids; the cls_labels file is readable."""
    from fastwsss.data import build_source
    from fastwsss.data.synthetic import SPLITS
    from fastwsss.engine.dry_run import split_names

    data = config.data
    splits = [name for stage in map(get_stage, stage_names) for key in stage.reads for name in split_names(data, key)]
    if data.name == "synthetic" and data.root is None:  # generated on first use: check the names only
        for split in splits:
            if split not in SPLITS:
                raise ConfigError(f"data: the synthetic set has no split {split!r} (it has {', '.join(SPLITS)})")
            if split == "debiased" and data.synth.num_debiased < 1:
                raise ConfigError("synth.num_debiased: the debiased split is used but has 0 images")
        return
    if data.root is not None:
        root = Path(data.root)
        if not str(data.root).strip() or not root.is_dir():
            raise ConfigError(f"root: {data.root!r} is not a folder")
    for split in dict.fromkeys(splits):
        try:
            build_source(data, split)
        except FastwsssError as exc:
            preset = f" (preset {config.preset} uses it)" if split in data.test_splits else ""
            raise type(exc)(f"{exc}{preset}") from None


def check_weights(config: RunConfig, stage_names: list[str]) -> None:
    """ImageNet weights named by the settings load into the backbones the stages build (`Stage.weights`)."""
    from fastwsss.models.backbone import build_backbone

    wanted = [stage.weights(config) for stage in map(get_stage, stage_names) if stage.weights is not None]
    for setting, backbone, weights in dict.fromkeys(w for w in wanted if w is not None):
        if weights is None:
            continue
        try:
            build_backbone(backbone, 16, weights)
        except FastwsssError as exc:
            raise ConfigError(f"{setting}: {exc}") from None


def check_new_run(config: RunConfig, stage_names: list[str]) -> None:
    """All of the above, in the order a user can fix them."""
    check_device(config)
    check_data(config, stage_names)
    check_weights(config, stage_names)
