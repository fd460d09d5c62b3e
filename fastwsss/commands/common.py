"""What every command shares: one-line errors (for fastwsss errors and for typer's usage errors alike),
Ctrl-C hints, path options and the metrics table."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperGroup

from fastwsss.engine.distributed import PeerStopped
from fastwsss.engine.progress import console, rank_prefix
from fastwsss.errors import FastwsssError, one_line

F = TypeVar("F", bound=Callable[..., Any])

ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""The base of typer's usage errors (click's, vendored or not, depending on the typer version)."""

RESUME_HINTS = {
    "train": "rerun the same command with --resume to continue",
    "segment": "the masks written so far are kept; rerun the same command to do the rest (existing masks are skipped)",
}
"""What Ctrl-C tells the user, per command: only `train` has --resume."""


def print_error(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(rank_prefix() + one_line(message))}", markup=True, highlight=False,
                  soft_wrap=True)


def friendly_errors(func: F) -> F:
    """Turn fastwsss errors into one red line and exit code 2, and Ctrl-C into a resume hint."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PeerStopped:
            # Rank 0 prints the error and exits 2; exiting 0 here lets torchrun name rank 0 as the root cause
            # instead of killing it while it reports.
            raise typer.Exit(0) from None
        except FastwsssError as exc:
            print_error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            hint = RESUME_HINTS.get(func.__name__, "what was finished is kept")
            console.print(f"[yellow]interrupted:[/yellow] {hint}")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class OneLineErrors(TyperGroup):
    """The `fastwsss` group: a usage error (a wrong choice, a missing option) is one `error:` line naming
    the option and the valid values, like every other fastwsss error, instead of a boxed panel."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, *rest, standalone_mode=False, **extra)
        try:
            code = super().main(args, *rest, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help is already printed
                sys.exit(getattr(exc, "exit_code", 2))
            where = getattr(exc, "ctx", None)
            hint = f" (`{where.command_path} --help` lists the options)" if where is not None else ""
            print_error(exc.format_message() + hint)  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            console.print("[yellow]aborted[/yellow]")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def absolute(path: Path | None) -> str | None:
    """A path option as stored in config.json: absolute, so that eval, report and export of the run work
    from any folder."""
    return str(path.absolute()) if path is not None else None


def print_metrics(rundir: Path, verbose: bool) -> None:
    """The run's latest mIoU table (and, with `verbose`, IoU per class)."""
    from fastwsss.engine.rundir import open_run_dir
    from fastwsss.reporting.summary import latest_rows, metrics_table, per_class_table

    rows = open_run_dir(rundir).metrics()
    if not latest_rows(rows):
        console.print(escape(f"{rundir}: no scored outputs yet"), soft_wrap=True)
        return
    console.print(metrics_table(rows, title=f"{rundir}: mIoU (%)"))
    if verbose:
        for row in latest_rows(rows):
            console.print(per_class_table(row))
