"""The commands that read finished runs: `report`, `diagnose`, `compare` and `env` (their work is in the
module of the same name)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastwsss.commands.options import device_option
from fastwsss.engine.device import DEFAULT_DEVICE


def report(
    rundir: Annotated[Path, typer.Argument(help="A run directory")],
    sample: Annotated[int, typer.Option(help="Images shown with their CAM / pseudo-mask / prediction overlays")] = 8,
    out: Annotated[Path | None, typer.Option(help="HTML file (default RUNDIR/report.html)")] = None,
) -> None:
    """Write one self-contained HTML page: mIoU per stage and round, per-class IoU, loss curves, overlays."""
    from fastwsss.commands.report import report_command

    report_command(rundir, sample, out)


def diagnose(
    rundir: Annotated[Path, typer.Argument(help="A run directory with cams, ir_labels and irn (ground-truth masks needed)")],
    images: Annotated[int, typer.Option(help="First N images of the CAM split")] = 150,
    device: Annotated[str, device_option()] = DEFAULT_DEVICE,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the numbers here")] = None,
) -> None:
    """Find where the IRNet half loses mIoU: the boundary net's map against the ground truth's, and the walk.

    Prints the boundary probability on the IR labels' borders, on the true object borders and elsewhere,
    and the pseudo-mask mIoU of the walk with the IRN map, with a ground-truth map and with no walk.
    """
    from fastwsss.commands.diagnose import diagnose_command

    diagnose_command(rundir, images, device, json_path)


def compare(
    rundirs: Annotated[list[Path], typer.Argument(help="Two or more run directories; the first is the baseline")],
) -> None:
    """Print several runs' mIoUs side by side with the difference to the first, and how settings and environments differ.

    Example (an ablation against its baseline):

      fastwsss compare runs/cam runs/c2am runs/conta
    """
    from fastwsss.commands.compare import compare_command

    compare_command(rundirs)


def env(
    rundir: Annotated[Path, typer.Argument(help="A run directory")],
    other: Annotated[Path | None, typer.Argument(help="A second run directory to compare with")] = None,
) -> None:
    """Show what a run ran on (versions, CPU, GPU, threads, git commit, data fingerprint), or how two runs differ.

    Two runs of the same code and seed can give different mIoUs on different machines (float rounding
    grows through training); compare them first:

      fastwsss env runs/a runs/b
    """
    from fastwsss.commands.env import env_command

    env_command(rundir, other)
