"""Which ImageNet weights each stage starts from, the check that a real-data run has them, and their record.

Three networks take ImageNet weights (docs/reproduce.md): the classifier (`cls.weights`, ResNet-50), the
IRN's frozen backbone (`irn.weights`, ResNet-50, when `irn.backbone_from` is "imagenet") and DeepLab
(`seg.weights`, ResNet-101). On the command line `--weights` gives the first two and `--seg-weights` the
third. A run on VOC or COCO that would start one of them from random weights stops before its first stage
(`check_pretrained`, which also stops any run whose weights file is missing): hours of GPU time on random
features reproduce nothing. Every stage that loads a file
records its path and sha256 (`weights_record`) in its DONE marker.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastwsss.config import RunConfig
from fastwsss.errors import ConfigError

REAL_DATA = ("voc", "coco")
OPTION = {"cls.weights": "--weights", "irn.weights": "--weights", "seg.weights": "--seg-weights"}
_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks; cached per (path, size, mtime) within the process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def weights_record(path: str | Path | None) -> dict[str, Any] | None:
    """{"path": absolute path, "sha256": hex} of a weights file, or None for random initialisation."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    return {"path": str(resolved), "sha256": sha256_of(resolved)}


def stage_weights(config: RunConfig) -> dict[str, tuple[str, str | None]]:
    """Stage -> (setting, file or None) for the stages that build a network from ImageNet weights."""
    table: dict[str, tuple[str, str | None]] = {"cls": ("cls.weights", config.cls.weights)}
    if config.irn.backbone_from == "imagenet":
        table["irn"] = ("irn.weights", config.irn.weights)
    table["seg"] = ("seg.weights", config.seg.weights)
    return table


def check_pretrained(config: RunConfig, stage_names: list[str]) -> None:
    """ConfigError naming the setting when one of `stage_names` would load a weights file that is not there, or
    when a run of the `voc`/`coco` preset would start one of them from random weights (the small presets'
    reduced-width backbones have no ImageNet weights, so `--preset tiny --data voc` may train from scratch)."""
    for stage, (setting, path) in stage_weights(config).items():
        if stage in stage_names and path is not None and not Path(path).is_file():
            raise ConfigError(f"{setting}: {path}: weights file not found")
    if config.preset not in REAL_DATA:
        return
    for stage, (setting, path) in stage_weights(config).items():
        if stage in stage_names and path is None:
            raise ConfigError(
                f"{setting}: a {config.preset} run would start the {stage} stage from random weights; give "
                f"{OPTION[setting]} FILE (a torchvision ImageNet state dict, see docs/reproduce.md)"
            )
