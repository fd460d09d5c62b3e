"""`fastwsss train --config FILE`: settings read back from a file.

Three forms are read, each one the output of a fastwsss command, so that a file can be made, edited and
given back without a format of its own:

- the listing of `fastwsss presets NAME [--method M]`: one `section.name = value` line per setting,
  optionally followed by `  # source` (the released file and line the value comes from);
- the JSON of `fastwsss presets NAME --json`;
- a run's `RUNDIR/config.json` (the same JSON, every setting written out).

Any file whose first character is `{` is read as JSON; anything else as the listing. The listing's values
are read with the types of the preset it names on its `preset =` line (as `--set` reads them).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastwsss.config import RunConfig, apply_options, get_preset, parse_setting
from fastwsss.engine.environment import flatten
from fastwsss.errors import ConfigError, one_line

NOTE = "  # "
"""What separates a value of the listing from its source note."""


def read_config_file(path: Path) -> RunConfig:
    """The settings in `path` (module docstring), each read with its setting's type; ConfigError naming the
    file. Ranges are checked by `validate` once the command's options are applied (--root, ...)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a UTF-8 text file"
        raise ConfigError(f"--config {path}: cannot read it ({reason})") from None
    try:
        settings = _from_json(text) if text.lstrip().startswith("{") else _from_listing(text)
        if "preset" not in settings:
            raise ConfigError("no preset setting (`fastwsss presets NAME` prints it first)")
        base = get_preset(settings.pop("preset"), settings.pop("method", "cam"))
        return apply_options(base, dict(parse_setting(base, f"{key}={value}") for key, value in settings.items()))
    except ConfigError as exc:
        raise ConfigError(f"--config {path}: {one_line(str(exc))}") from None


def _from_json(text: str) -> dict[str, str]:
    """A config.json's settings as the listing's text."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"expected an object of settings, got {type(values).__name__}")
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flatten(values).items()}


def _from_listing(text: str) -> dict[str, str]:
    """`section.name = value  # note` lines as {"section.name": "value"}."""
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"line {number}: expected `section.name = value`, got {line.strip()!r}")
        if key in settings:
            raise ConfigError(f"line {number}: {key} is set twice")
        settings[key] = value.split(NOTE, 1)[0].strip()
    return settings
