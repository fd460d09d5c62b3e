"""The registry of WSSS methods: `--method NAME` is `METHODS[NAME]` (fastwsss.methods.base.Method).

Each method's module holds its maths and, at its end, its `METHOD` declaration: `cam` (IRNet, the
baseline), `c2am` (front-door adjustment) and `conta` (backdoor adjustment). Adding a method is one
module and one line below; `register_method` adds one at run time (the tests' toy method).
"""

from __future__ import annotations

from fastwsss.errors import ConfigError
from fastwsss.methods import c2am, cam, conta
from fastwsss.methods.base import ClassifierInput, ExtraMap, Method, ReportSection

__all__ = ["METHODS", "ClassifierInput", "ExtraMap", "Method", "ReportSection", "get_method", "method_names",
           "register_method", "unregister_method"]

METHODS: dict[str, Method] = {
    "cam": cam.METHOD,
    "c2am": c2am.METHOD,
    "conta": conta.METHOD,
}


def method_names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The method `name`; a ConfigError listing the valid names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"method: unknown method {name!r}; valid: {', '.join(METHODS)}") from None


def register_method(method: Method) -> Method:
    """Add `method` to the registry (a ConfigError if its name or one of its added stages is taken)."""
    from fastwsss.stages import all_stages

    if method.name in METHODS:
        raise ConfigError(f"method: {method.name!r} is already registered")
    taken = set(all_stages())
    for stage in method.added_stages:
        if stage.name in taken:
            raise ConfigError(f"method {method.name}: stage {stage.name!r} is already registered")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove the method `name` from the registry (nothing if it is not there)."""
    METHODS.pop(name, None)
