"""The pipeline stages: an explicit registry from stage name to the function that runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastwsss.errors import ConfigError
from fastwsss.rundir import round_folder  # noqa: F401  (re-exported: where a round lives)
from fastwsss.stages.context import StageContext


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str
    """Folder under RUNDIR holding the stage's outputs and its DONE marker (None-like '' = always rerun)."""
    run: Callable[[StageContext], object]
    all_ranks: bool = True
    """Under torchrun: True when every rank runs it (DDP training, or sharded per-image work); False when
    rank 0 runs it alone while the others wait (stages that reduce over all images at once)."""


def _registry() -> dict[str, Stage]:
    from fastwsss.stages import c2am_cls, cam, cls, confounder, evaluate, global_cam, ir_label, irn, pseudo, seg

    return {
        "confounder": Stage("confounder", confounder.FOLDER, confounder.run_confounder),
        "cls": Stage("cls", cls.FOLDER, cls.run_cls),
        "global_cam": Stage("global_cam", global_cam.FOLDER, global_cam.run_global_cam),
        "c2am": Stage("c2am", c2am_cls.FOLDER, c2am_cls.run_c2am_cls),
        "cam": Stage("cam", cam.FOLDER, cam.run_cam),
        "ir_label": Stage("ir_label", ir_label.FOLDER, ir_label.run_ir_label),
        "irn": Stage("irn", irn.FOLDER, irn.run_irn),
        "pseudo": Stage("pseudo", pseudo.FOLDER, pseudo.run_pseudo),
        "seg": Stage("seg", seg.FOLDER, seg.run_seg),
        "eval": Stage("eval", "", evaluate.run_eval),
    }


BASELINE = ("cls", "cam", "ir_label", "irn", "pseudo", "seg", "eval")
METHOD_STAGES: dict[str, tuple[str, ...]] = {
    "cam": BASELINE,
    "c2am": ("cls", "global_cam", "c2am", "cam", "ir_label", "irn", "pseudo", "seg", "eval"),
    "conta": ("confounder", *BASELINE),
}
"""Stage order per method. CONTA runs BASELINE as round 0 under RUNDIR/rounds/0, then the whole tuple
(confounder first) for each round 1..conta.rounds under RUNDIR/rounds/<t>."""


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    round: int | None
    """CONTA's round (outputs under RUNDIR/rounds/<round>); None for the single-pass methods."""


def plan(method: str, rounds: int, requested: str | None = None) -> list[PlannedStage]:
    """Every stage the run executes, in order, with its round; `requested` filters by stage name."""
    stages = stages_for(method, requested)
    if method != "conta":
        return [PlannedStage(stage, None) for stage in stages]
    planned = [PlannedStage(stage, 0) for stage in stages if stage.name != "confounder"]
    for t in range(1, rounds + 1):
        planned += [PlannedStage(stage, t) for stage in stages]
    return planned


def get_stage(name: str) -> Stage:
    registry = _registry()
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(f"stages: unknown stage {name!r}; valid stages: {', '.join(registry)}") from None


def stages_for(method: str, requested: str | None) -> list[Stage]:
    """The stages to run: all of the method's, or the comma-separated subset the user asked for, in order."""
    try:
        order = METHOD_STAGES[method]
    except KeyError:
        raise ConfigError(f"method: unknown method {method!r}; valid: {', '.join(METHOD_STAGES)}") from None
    if not requested:
        return [get_stage(name) for name in order]
    names = [n.strip() for n in requested.split(",") if n.strip()]
    for name in names:
        get_stage(name)
        if name not in order:
            raise ConfigError(f"stages: stage {name!r} is not part of method {method!r} ({', '.join(order)})")
    return [get_stage(name) for name in order if name in names]
