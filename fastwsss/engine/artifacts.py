"""Where a finished run keeps the models a user serves: the final DeepLab and the final CAM classifier.

The DeepLab is seg/ckpt.pt of the run's final view (`RunDir.final_view`: the run, or the last round of a
method that runs in rounds). The classifier is the method's `classifier_stage`/ckpt.pt (cls; C2AM: c2am)
of the run, or of round 0 for a method that runs in rounds (`Method.export_round`): CONTA's classifiers
of rounds >= 1 also need their M map, round 0's takes the image alone.
"""

from __future__ import annotations

from pathlib import Path

from fastwsss.engine.rundir import SEG, open_run_dir
from fastwsss.errors import RunDirError
from fastwsss.methods import get_method


def final_seg_checkpoint(rundir: str | Path) -> Path:
    """The DeepLab to export: seg/ckpt.pt of the run's final view."""
    run = open_run_dir(rundir)
    path = run.final_view(run.load_config()).checkpoint(SEG)
    if not path.is_file():
        raise RunDirError(f"{path}: no trained segmentation model (run the seg stage of {rundir} first)")
    return path


def final_classifier_checkpoint(rundir: str | Path) -> Path:
    """The classifier to export: the method's, of the run or of its export round (round 0: no extra input)."""
    run = open_run_dir(rundir)
    config = run.load_config()
    round_ = get_method(config.method).export_round(config)
    path = (run if round_ is None else run.round_view(round_)).classifier_checkpoint(config.method)
    if not path.is_file():
        raise RunDirError(f"{path}: no trained classifier in {rundir}")
    return path
