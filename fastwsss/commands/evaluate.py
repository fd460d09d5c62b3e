"""`fastwsss eval`: score a run's outputs again and print the mIoU table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastwsss.commands.common import print_metrics


def eval_command(
    rundir: Annotated[Path, typer.Argument(help="A run directory made by fastwsss train")],
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Also print IoU per class")] = False,
    rescore: Annotated[bool, typer.Option(help="Recompute the scores from the stored outputs first")] = True,
) -> None:
    """Score a run's outputs (CAM seeds, ...) against the ground truth and print a table (on the run's device)."""
    from fastwsss.engine.device import resolve_device
    from fastwsss.engine.rundir import open_run_dir
    from fastwsss.stages.context import StageContext
    from fastwsss.stages.evaluate import run_eval

    run = open_run_dir(rundir)
    if rescore:
        config = run.load_config()
        run.lock()
        try:
            device = resolve_device(config.device)
            for view, round_ in run.views(config):
                run_eval(StageContext(config=config, run=view, device=device, round=round_))
        finally:
            run.unlock()
    print_metrics(run.path, verbose)
