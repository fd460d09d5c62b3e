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

SPLIT_USERS: dict[str, tuple[str, ...]] = {
    "train_split": ("cls", "global_cam", "c2am", "confounder"),
    "cam_split": ("cam", "ir_label", "irn", "pseudo", "seg", "eval", "confounder"),
    "val_split": ("seg",),
}
"""Which stages read which split of `config.data` (seg also reads `test_splits`)."""


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
    """Every split the stages read exists and lists valid ids; the cls_labels file is readable."""
    from fastwsss.data import build_source
    from fastwsss.data.synthetic import SPLITS

    data = config.data
    splits = [getattr(data, key) for key, users in SPLIT_USERS.items() if set(users) & set(stage_names)]
    if "seg" in stage_names:
        splits += list(data.test_splits)
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
    """ImageNet weights named by the settings load into the backbones the stages build."""
    from fastwsss.models.backbone import build_backbone

    wanted = [("cls", config.cls.backbone, config.cls.weights, ("cls", "c2am"))]
    if config.irn.backbone_from == "imagenet":
        wanted.append(("irn", config.irn.backbone, config.irn.weights, ("irn",)))
    if config.seg.model == "deeplabv2":
        wanted.append(("seg", config.seg.backbone, config.seg.weights, ("seg",)))
    for section, backbone, weights, users in wanted:
        if weights is None or not set(users) & set(stage_names):
            continue
        try:
            build_backbone(backbone, 16, weights)
        except FastwsssError as exc:
            raise ConfigError(f"{section}.weights: {exc}") from None


def check_new_run(config: RunConfig, stage_names: list[str]) -> None:
    """All of the above, in the order a user can fix them."""
    check_device(config)
    check_data(config, stage_names)
    check_weights(config, stage_names)
