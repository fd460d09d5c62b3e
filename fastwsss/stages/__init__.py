"""The pipeline stages: an explicit registry from stage name to the function that runs it.

The generic stages are listed here; a method's own stages come from its declaration
(`fastwsss.methods.base.Method.added_stages`). Which stages a method runs, and in which round, is `plan`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastwsss.engine.rundir import (
    CAMS,
    CLS,
    IR_LABELS,
    IRN,
    PSEUDO,
    SEG,
    round_folder,  # noqa: F401  (re-exported: where a round lives)
)
from fastwsss.errors import ConfigError
from fastwsss.stages.context import StageContext

if TYPE_CHECKING:
    from fastwsss.config import RunConfig


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str
    """Folder under RUNDIR holding the stage's outputs and its DONE marker (None-like '' = always rerun)."""
    run: Callable[[StageContext], object]
    all_ranks: bool = True
    """Under torchrun: True when every rank runs it (DDP training, or sharded per-image work); False when
    rank 0 runs it alone while the others wait (stages that reduce over all images at once)."""
    batch_section: str | None = None
    """The config section whose `batch_size` DistributedDataParallel splits over the ranks (training stages)."""
    loss_label: str | None = None
    """Title of the stage's loss curve in `fastwsss report` (training stages)."""
    reads: tuple[str, ...] = ("cam_split",)
    """The `config.data` settings naming the splits the stage reads (`train_split`, `cam_split`, `val_split`,
    `eval_split`, `test_splits`); the first is the split of its `--dry-run` row, and all are checked before
    a new run starts (fastwsss.engine.run_checks)."""
    loads: str = "-"
    """What the stage loads, for its `--dry-run` row ("RUNDIR/irn/ckpt.pt")."""
    describe: Callable[..., Any] | None = None
    """(config, images per split) -> the stage's `--dry-run` row (fastwsss.engine.dry_run.PlannedRow) with its
    steps, batch, lr schedule and weights (training stages); None = the row from `reads` and `loads`."""
    weights: Callable[[Any], tuple[str, str, str | None] | None] | None = None
    """config -> (setting, backbone, ImageNet weights file) of the backbone the stage builds, or None;
    checked before a new run starts (fastwsss.engine.run_checks)."""


def lazy(module: str, function: str) -> Callable[[Any], Any]:
    """`module.function`, imported on the first call: declaring a stage (or a method's report section)
    does not import its dependencies."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(module), function)(*args)

    call.__qualname__ = f"{module}.{function}"
    return call


GENERIC_STAGES = (
    Stage("cls", CLS, lazy("fastwsss.stages.cls", "run_cls"), batch_section="cls", loss_label="classifier",
          reads=("train_split",), describe=lazy("fastwsss.engine.dry_run", "cls_row"),
          weights=lazy("fastwsss.engine.run_checks", "cls_weights")),
    Stage("cam", CAMS, lazy("fastwsss.stages.cam", "run_cam"), loads="RUNDIR classifier"),
    Stage("ir_label", IR_LABELS, lazy("fastwsss.stages.ir_label", "run_ir_label")),
    Stage("irn", IRN, lazy("fastwsss.stages.irn", "run_irn"), batch_section="irn", loss_label="IRN (inter-pixel relations)",
          describe=lazy("fastwsss.engine.dry_run", "irn_row"), weights=lazy("fastwsss.engine.run_checks", "irn_weights")),
    Stage("pseudo", PSEUDO, lazy("fastwsss.stages.pseudo", "run_pseudo"), loads="RUNDIR/irn/ckpt.pt"),
    Stage("seg", SEG, lazy("fastwsss.stages.seg", "run_seg"), batch_section="seg",
          reads=("cam_split", "val_split", "test_splits"), describe=lazy("fastwsss.engine.dry_run", "seg_row"),
          weights=lazy("fastwsss.engine.run_checks", "seg_weights")),
    Stage("eval", "", lazy("fastwsss.stages.evaluate", "run_eval"), reads=("eval_split", "cam_split")),
)
BASELINE = tuple(stage.name for stage in GENERIC_STAGES)
"""The IRNet pipeline: the stage order of the baseline method `cam`."""


def all_stages() -> dict[str, Stage]:
    """Every stage by name: the generic ones and those of every registered method."""
    from fastwsss.methods import METHODS

    stages = {stage.name: stage for stage in GENERIC_STAGES}
    for method in METHODS.values():
        stages.update((stage.name, stage) for stage in method.added_stages)
    return stages


@dataclass(frozen=True)
class PlannedStage:
    stage: Stage
    round: int | None
    """The round (outputs under RUNDIR/rounds/<round>); None for single-pass methods."""


def plan(method: str, rounds: int | None = None, requested: str | Sequence[str] | None = None) -> list[PlannedStage]:
    """Every stage the run executes, in order, with its round; `requested` filters by stage name.

    `rounds` is the round count of a method that runs in rounds (ignored for the others)."""
    from fastwsss.methods import get_method

    declared = get_method(method)
    stages = stages_for(method, requested)
    if declared.rounds is None:
        return [PlannedStage(stage, None) for stage in stages]
    planned = [PlannedStage(stage, 0) for stage in stages if stage.name not in declared.first_round_skips]
    for t in range(1, (rounds or 0) + 1):
        planned += [PlannedStage(stage, t) for stage in stages]
    return planned


def plan_for(config: RunConfig, requested: str | Sequence[str] | None = None) -> list[PlannedStage]:
    """`plan` of the method and round count in `config`."""
    from fastwsss.methods import get_method

    return plan(config.method, get_method(config.method).round_count(config), requested)


def get_stage(name: str) -> Stage:
    registry = all_stages()
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(f"stages: unknown stage {name!r}; valid stages: {', '.join(registry)}") from None


def parse_stages(method: str, requested: str | Sequence[str] | None) -> tuple[str, ...]:
    """The names of the stages to run, in the method's order: all of them, or the subset of `--stages`
    (comma-separated text, or names already read). The only place that reads `--stages`."""
    from fastwsss.methods import get_method

    order = get_method(method).stages
    if not requested:
        return tuple(order)
    names = [n.strip() for n in requested.split(",") if n.strip()] if isinstance(requested, str) else list(requested)
    for name in names:
        get_stage(name)
        if name not in order:
            raise ConfigError(f"stages: stage {name!r} is not part of method {method!r} ({', '.join(order)})")
    return tuple(name for name in order if name in names)


def stages_for(method: str, requested: str | Sequence[str] | None) -> list[Stage]:
    """The stages to run (`parse_stages`)."""
    return [get_stage(name) for name in parse_stages(method, requested)]
