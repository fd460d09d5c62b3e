"""`fastwsss compare RUNDIR RUNDIR...`: several runs' mIoUs side by side, and how their settings and environments differ."""

from __future__ import annotations

import json
from pathlib import Path

from fastwsss.engine.environment import environment_differences, nested_differences
from fastwsss.engine.progress import console
from fastwsss.engine.rundir import open_run_dir
from fastwsss.errors import ConfigError
from fastwsss.reporting.summary import compare_table


def environment_note(first: Path, other: Path) -> str | None:
    """One line saying where `other`'s environment differs from `first`'s, or None when they match or are unknown."""
    a, b = open_run_dir(first).environments(), open_run_dir(other).environments()
    if not a or not b:
        return f"{other}: environment not recorded for both runs; differences may come from the machine"
    found = environment_differences(a[-1], b[-1])
    if not found:
        return None
    return f"{other}: environment differs from {first} in {', '.join(found)} (fastwsss env {first} {other})"


def settings_note(first: Path, other: Path, shown: int = 6) -> str | None:
    """One line naming the settings in which `other`'s config.json differs from `first`'s, or None."""
    a = json.loads(open_run_dir(first).config_path.read_text())
    b = json.loads(open_run_dir(other).config_path.read_text())
    found = nested_differences(a, b)
    if not found:
        return None
    items = [f"{key} {left!r} -> {right!r}" for key, (left, right) in list(found.items())[:shown]]
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return f"{other}: settings differ from {first}: {'; '.join(items)}{more}"


def compare_command(rundirs: list[Path]) -> list[str]:
    """Print the side-by-side table, then per run the settings and environment fields that differ; returns those notes."""
    if len(rundirs) < 2:
        raise ConfigError("compare: name at least two run directories")
    runs = [(str(path), open_run_dir(path).metrics()) for path in rundirs]
    console.print(compare_table(runs))
    notes = [
        note
        for other in rundirs[1:]
        for note in (settings_note(rundirs[0], other), environment_note(rundirs[0], other))
        if note is not None
    ]
    for note in notes:
        console.print(note, markup=False)
    return notes
