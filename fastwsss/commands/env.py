"""`fastwsss env RUNDIR [OTHER]`: what a run ran on, and where two runs' environments differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from fastwsss.engine.environment import environment_differences, flatten
from fastwsss.engine.progress import console
from fastwsss.engine.rundir import open_run_dir
from fastwsss.errors import RunDirError


def latest_environment(rundir: Path) -> dict[str, Any]:
    """The environment row of the run's latest start; a clear error for a run made before they existed."""
    rows = open_run_dir(rundir).environments()
    if not rows:
        raise RunDirError(f"{rundir}: no environment.jsonl (the run was made before fastwsss recorded environments)")
    return rows[-1]


def env_command(rundir: Path, other: Path | None) -> dict[str, tuple[Any, Any]]:
    """Print RUNDIR's environment, or with OTHER the fields that differ; returns those differences."""
    first = latest_environment(rundir)
    if other is None:
        table = Table(title=f"{rundir}: environment of the latest start ({first.get('time', '?')})")
        table.add_column("field")
        table.add_column("value")
        for key, value in flatten(first).items():
            table.add_row(key, str(value))
        console.print(table)
        return {}
    differences = environment_differences(first, latest_environment(other))
    if not differences:
        console.print(escape(f"{rundir} and {other}: same environment (versions, CPU, GPU, threads, code, data)"), soft_wrap=True)
        return differences
    table = Table(title=f"environment differences ({len(differences)})")
    table.add_column("field")
    table.add_column(str(rundir))
    table.add_column(str(other))
    for key, (left, right) in differences.items():
        table.add_row(key, str(left), str(right))
    console.print(table)
    return differences
