"""Typed run configuration: plain dataclasses, one function per preset, no string inheritance.

A preset returns a complete `RunConfig`; the CLI then applies the user's options with `dataclasses.replace`
and `validate()` checks every range, naming the setting. The resolved config is written to
RUNDIR/config.json and read back on `--resume`.

- `schema`: the generic sections' dataclasses and `RunConfig`, which also holds each registered method's
  section (the dataclass is the method's own, `Method.settings`);
- `presets`: `PRESETS`, `get_preset`;
- `settings`: `validate`, `config_from_dict`, `parse_setting`, `apply_options` and the limits they check;
- `types`: the type checks of config.json values.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from fastwsss.config.presets import (
    PRESETS,
    RELEASED_CAM_SWEEP,
    get_preset,
    preset_coco,
    preset_synthetic,
    preset_tiny,
    preset_voc,
)
from fastwsss.config.schema import (
    GENERIC_SECTIONS,
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
    method_section_types,
    method_sections,
)
from fastwsss.config.settings import (
    DATASET_NAMES,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_RADIUS,
    MAX_SEED,
    MAX_SIDE,
    SCALE_RANGE,
    apply_options,
    config_from_dict,
    parse_setting,
    validate,
)

__all__ = [
    "DATASET_NAMES", "GENERIC_SECTIONS", "MAX_BATCH", "MAX_EPOCHS", "MAX_RADIUS", "MAX_SEED", "MAX_SIDE", "PRESETS",
    "RELEASED_CAM_SWEEP", "SCALE_RANGE", "C2AMConfig", "CamConfig", "ClsConfig", "ContaConfig", "DataConfig",
    "EvalConfig", "IRLabelConfig", "IRNConfig", "PseudoConfig", "RunConfig", "SegConfig", "SynthConfig",
    "apply_options", "config_from_dict", "get_preset", "method_section_types", "method_sections", "parse_setting",
    "preset_coco", "preset_synthetic", "preset_tiny", "preset_voc", "validate",
]

_METHOD_SETTINGS = {"C2AMConfig": "fastwsss.methods.c2am", "ContaConfig": "fastwsss.methods.conta"}
"""Settings dataclasses that now live with their method, still importable from here."""


def __getattr__(name: str) -> Any:
    if name in _METHOD_SETTINGS:
        return getattr(import_module(_METHOD_SETTINGS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
