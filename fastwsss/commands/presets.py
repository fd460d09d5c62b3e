"""`fastwsss presets`: the presets, or one preset's settings with the source of each released value.

The listing is also a settings file: `fastwsss train --config FILE` reads it back (commands/config_file.py).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from fastwsss.commands.config_file import NOTE
from fastwsss.commands.options import choice, method_names, preset_names
from fastwsss.engine.progress import console


def presets(
    name: Annotated[str | None, typer.Argument(help="Show this preset's full settings", metavar="[NAME]",
                                               autocompletion=preset_names)] = None,
    method: Annotated[str, choice("Show the settings as this method gets them", method_names)] = "cam",
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved settings as JSON instead")] = False,
) -> None:
    """List the presets, or print one preset's settings, each with the released file and line (or paper
    section) its value comes from. `fastwsss train --config FILE` reads either output back.

    Example:

      fastwsss presets voc --method c2am > c2am.txt    # edit, then: fastwsss train --config c2am.txt
    """
    from fastwsss.config import PRESETS, get_preset
    from fastwsss.engine.environment import flatten
    from fastwsss.engine.provenance import sources

    if name is None:
        for key, factory in PRESETS.items():
            console.print(f"[bold]{key}[/bold]: {(factory.__doc__ or '').strip().splitlines()[0]}")
        return
    config = get_preset(name, method)
    if as_json:
        sys.stdout.write(json.dumps(config.to_dict(), indent=2) + "\n")
        return
    origin = sources(name, method)
    values = flatten(config.to_dict())
    width = max(len(key) for key in values)
    for key, value in values.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        note = f"{NOTE}{origin[key]}" if key in origin else ""
        sys.stdout.write(f"{key.ljust(width)} = {text}{note}\n")
