"""`fastwsss report RUNDIR [--sample N] [--out FILE]`: write the run's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from fastwsss.engine.progress import console
from fastwsss.errors import ConfigError
from fastwsss.reporting.report import write_report


def report_command(rundir: Path, sample: int, out: Path | None) -> Path:
    """Write the report of `rundir` (to `out`, default RUNDIR/report.html), print where, return its path."""
    if sample < 0:
        raise ConfigError(f"--sample: must be >= 0, got {sample}")
    path = write_report(Path(rundir), sample=sample, out=out)
    console.print(escape(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)"), soft_wrap=True)
    return path
