"""Run a method's stages in order against one run directory; the CLI and the tests both call this."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from fastwsss.config import RunConfig, validate
from fastwsss.crf import crf_available
from fastwsss.errors import ConfigError
from fastwsss.progress import log
from fastwsss.rundir import RunDir, create_or_resume
from fastwsss.stages import plan, stages_for
from fastwsss.stages.context import StageContext, StepHook, resolve_device


def default_run_name(config: RunConfig) -> str:
    return f"{config.method}-{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def preflight(config: RunConfig, stage_names: list[str]) -> None:
    """Checks of the environment that would otherwise fail hours into a run."""
    if "ir_label" in stage_names and config.ir_label.crf and not crf_available():
        raise ConfigError("ir_label.crf: pydensecrf2 is not installed; pip install 'fastwsss[crf]' or set crf off")


def run_pipeline(
    config: RunConfig,
    out: str | Path | None = None,
    stages: str | None = None,
    resume: bool = False,
    on_step: StepHook | None = None,
) -> RunDir:
    """Run `stages` (default: all of the method's) in RUNDIR; with `resume`, finished stages are skipped and
    unfinished ones continue from their last checkpoint or last finished image."""
    config = validate(config)
    preflight(config, [stage.name for stage in stages_for(config.method, stages)])
    out = Path(out) if out is not None else Path("runs") / default_run_name(config)
    run, config = create_or_resume(out, config, resume)
    try:
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        device = resolve_device(config.device)
        log(f"run directory: {run.path}  (method {config.method}, preset {config.preset}, device {device})")
        for planned in plan(config.method, config.conta.rounds, stages):
            stage, round_ = planned.stage, planned.round
            view = run if round_ is None else run.round_view(round_)
            name = stage.name if round_ is None else f"round {round_}: {stage.name}"
            if resume and stage.folder and view.is_done(stage.folder):
                log(f"[dim]{name}: already finished, skipped[/dim]")
                continue
            ctx = StageContext(config=config, run=view, device=device, resume=resume, on_step=on_step, round=round_)
            started = time.perf_counter()
            stage.run(ctx)
            log(f"{name}: done in {time.perf_counter() - started:.1f} s")
    finally:
        run.unlock()
    return run
