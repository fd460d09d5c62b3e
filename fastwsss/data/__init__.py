"""Data sets: the built-in synthetic scenes, PASCAL VOC 2012 and COCO 2014, behind one interface."""

from __future__ import annotations

from pathlib import Path

from fastwsss.config import DataConfig
from fastwsss.data.base import SegmentationSource
from fastwsss.errors import ConfigError


def build_source(config: DataConfig, split: str) -> SegmentationSource:
    """The split `split` of the data set named by `config.name` (synthetic data is generated on first use)."""
    from fastwsss.data.coco import COCOSource
    from fastwsss.data.synthetic import SyntheticSource, ensure_synthetic
    from fastwsss.data.voc import VOCSource

    if config.name == "synthetic":
        root = Path(config.root) if config.root else ensure_synthetic(config.synth)
        return SyntheticSource(root, split)
    if config.root is None:
        raise ConfigError(f"root: --root is required for --data {config.name}")
    registry = {"voc": VOCSource, "coco": COCOSource}
    try:
        source_cls = registry[config.name]
    except KeyError:
        raise ConfigError(f"unknown data set {config.name!r}; valid: synthetic, {', '.join(registry)}") from None
    return source_cls(config.root, split, cls_labels=config.cls_labels)


__all__ = ["SegmentationSource", "build_source"]
