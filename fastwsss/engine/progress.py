"""Rich progress bars with ETA for every loop over images or steps, and one shared console."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False)


def _rank() -> int:
    """This process's rank under torchrun (RANK is set by the launcher; 0 otherwise)."""
    value = os.environ.get("RANK", "0")
    return int(value) if value.isdigit() else 0


def rank_prefix() -> str:
    """"[rank r] " in a multi-process run, so that a message says which process it comes from; else ""."""
    size = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {_rank()}] " if size.isdigit() and int(size) > 1 else ""


def progress_enabled() -> bool:
    """Bars unless FASTWSSS_NO_PROGRESS=1; in a multi-process run only rank 0 draws them (its own share)."""
    return os.environ.get("FASTWSSS_NO_PROGRESS", "0") not in ("1", "true", "yes") and _rank() == 0


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not progress_enabled(),
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (a no-op wrapper when FASTWSSS_NO_PROGRESS=1)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total, info="")
        for item in items:
            yield item
            progress.advance(task)


def log(message: str, style: str | None = None) -> None:
    """A progress message, shown as it is (paths and ids may hold "[...]"); in a multi-process run only rank 0
    prints (every rank does the same work)."""
    if _rank() == 0:
        console.print(escape(message), style=style, soft_wrap=True)


def warn(message: str) -> None:
    """A warning from any rank (each rank reads its own share of the files), tagged with the rank if several."""
    console.print(f"[yellow]warning:[/yellow] {escape(rank_prefix() + message)}", soft_wrap=True)
