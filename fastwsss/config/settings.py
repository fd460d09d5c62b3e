"""Checking and changing run settings: `validate`, config.json's `config_from_dict`, `--set`'s `parse_setting`.

`validate` checks every range of the generic sections, naming the setting, and asks each registered
method to check its own section (`Method.check`). Method sections are found through the registry
(`fastwsss.config.schema.method_section_types`), never named here.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastwsss.algorithms.thresholds import THRESHOLD_RULES
from fastwsss.config.presets import PRESETS
from fastwsss.config.schema import RunConfig, method_section_types
from fastwsss.config.types import check_types
from fastwsss.engine.device import check_device_name
from fastwsss.errors import ConfigError

DATASET_NAMES = ("synthetic", "voc", "coco")
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
    for name, kind in method_section_types().items():
        section = config.sections.get(name)
        need(isinstance(section, kind), name, f"expected {kind.__name__} settings, got {type(section).__name__}")
        check_types(section, f"{name}.")
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
    check_device_name(config.device)
    return config


def _from_dict(cls: type, values: dict[str, Any], prefix: str = "", **built: Any) -> Any:
    """`cls(**values)`, nested sections built from their dicts; `built` are sections already built."""
    kwargs = {}
    names = {f.name: f for f in dataclasses.fields(cls) if f.name != "sections"}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown setting {prefix}{key}")
        f = names[key]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[key] = _section_from_dict(sub, value, f"{prefix}{key}")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs, **built)


def _section_from_dict(cls: type, value: Any, name: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be an object of settings, got {type(value).__name__}")
    return _from_dict(cls, value, f"{name}.")


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Inverse of `RunConfig.to_dict` (for config.json); every type and range checked (ConfigError).

    A top-level key naming a registered method's section is read with that method's settings dataclass."""
    if not isinstance(values, dict):
        raise ConfigError(f"expected an object of settings, got {type(values).__name__}")
    kinds = method_section_types()
    sections = {key: _section_from_dict(kinds[key], value, key) for key, value in values.items() if key in kinds}
    generic = {key: value for key, value in values.items() if key not in kinds}
    return validate(_from_dict(RunConfig, generic, **sections))


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


def _annotations(section: Any) -> dict[str, str]:
    """Name -> annotation text of each setting or section in `section`; a run's method sections included."""
    if not dataclasses.is_dataclass(section):
        return {}
    names = {f.name: str(f.type) for f in dataclasses.fields(section) if f.name != "sections"}
    if isinstance(section, RunConfig):
        names.update({name: type(value).__name__ for name, value in section.sections.items()})
    return names


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
        fields = _annotations(current)
        if name not in fields:
            where = ".".join(path) or "settings"
            raise ConfigError(f"--set {dotted}: unknown name {name!r} in {where}; valid: {', '.join(fields) or 'none'}")
        annotation = fields[name]
        current = getattr(current, name)
        path.append(name)
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"--set {dotted}: a section, not a setting; valid: {', '.join(_annotations(current))}")
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
