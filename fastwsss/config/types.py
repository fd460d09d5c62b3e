"""Type checks of the config dataclasses: a config.json value of the wrong type is one line naming it.

`RunConfig` fields are plain annotated types (int, float, bool, str, `str | None`, fixed or variable tuples,
nested dataclasses); a hand-edited or crafted config.json ("epochs": "3", "scales": [[1]]) must fail here,
naming the setting, instead of as a TypeError deep inside a stage.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from fastwsss.errors import ConfigError


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether `value` (from JSON or a replace()) has the type `hint` of a config field says."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(item, args[0]) for item in value)
        return len(value) == len(args) and all(_type_ok(item, arg) for item, arg in zip(value, args, strict=True))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is typing.Any:
        return True
    if origin in (list, dict):
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple) if origin is list else dict):  # config_from_dict makes lists tuples
            return False
        if origin is list and args:
            return all(_type_ok(item, args[0]) for item in value)
        return not args or all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    return isinstance(value, hint) if isinstance(hint, type) else True  # a hint this checker does not know


def check_types(section: Any, prefix: str = "") -> None:
    """Every field of the config dataclass `section` (recursively) has its declared type; ConfigError naming it."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        if not _type_ok(value, hint):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            expected = getattr(hint, "__name__", str(hint)).replace("typing.", "")
            raise ConfigError(f"{name}: expected {expected}, got {shown} ({type(value).__name__})")
        if dataclasses.is_dataclass(value):
            check_types(value, f"{name}.")
