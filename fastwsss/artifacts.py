"""Where a finished run keeps the models a user serves: the final DeepLab and the final CAM classifier.

    cam, c2am: RUNDIR/seg/ckpt.pt                  conta: RUNDIR/rounds/<last round>/seg/ckpt.pt
    cam:       RUNDIR/cls/ckpt.pt     c2am: RUNDIR/c2am/ckpt.pt     conta: RUNDIR/rounds/<last>/cls/ckpt.pt
(a CONTA classifier of round >= 1 also needs its M map, so export takes the round-0 classifier instead).
"""

from __future__ import annotations

from pathlib import Path

from fastwsss.errors import RunDirError
from fastwsss.rundir import SEG, open_run_dir


def final_seg_checkpoint(rundir: str | Path) -> Path:
    """The DeepLab to export: seg/ckpt.pt of the run, or of its last CONTA round."""
    run = open_run_dir(rundir)
    path = run.final_view(run.load_config()).checkpoint(SEG)
    if not path.is_file():
        raise RunDirError(f"{path}: no trained segmentation model (run the seg stage of {rundir} first)")
    return path


def final_classifier_checkpoint(rundir: str | Path) -> Path:
    """The classifier to export: C2AM's fine-tuned one, else cls/ckpt.pt (CONTA: round 0's, which needs no M)."""
    run = open_run_dir(rundir)
    config = run.load_config()
    path = (run.round_view(0) if config.method == "conta" else run).classifier_checkpoint(config.method)
    if not path.is_file():
        raise RunDirError(f"{path}: no trained classifier in {rundir}")
    return path
