"""Run a method's stages in order against one run directory; the CLI and the tests both call this."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fastwsss.algorithms.crf import crf_available
from fastwsss.config import RunConfig, config_from_dict, validate
from fastwsss.engine.device import resolve_device
from fastwsss.engine.distributed import all_gather, barrier, init_from_env, on_main, world
from fastwsss.engine.environment import environment_record, training_source
from fastwsss.engine.progress import log
from fastwsss.engine.run_checks import check_new_run
from fastwsss.engine.rundir import RunDir, create_or_resume
from fastwsss.engine.weights import check_pretrained
from fastwsss.errors import ConfigError
from fastwsss.stages import get_stage, parse_stages, plan_for
from fastwsss.stages.context import StageContext, StepHook
from fastwsss.stages.per_image import missing_outputs


def default_run_name(config: RunConfig) -> str:
    return f"{config.method}-{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def preflight(config: RunConfig, stage_names: list[str], processes: int = 1) -> None:
    """Checks of the environment that would otherwise fail hours into a run."""
    check_pretrained(config, stage_names)
    if "ir_label" in stage_names and config.ir_label.crf and not crf_available():
        raise ConfigError("ir_label.crf: pydensecrf2 is not installed; pip install 'fastwsss[crf]' or set crf off")
    if "seg" in stage_names and config.seg.crf and not crf_available():
        raise ConfigError("seg.crf: pydensecrf2 is not installed; pip install 'fastwsss[crf]' or set crf off")
    for section in [get_stage(name).batch_section for name in stage_names]:
        if section is None:
            continue
        batch = getattr(config, section).batch_size
        if batch % processes:
            raise ConfigError(
                f"{section}.batch_size: a batch of {batch} does not split evenly over {processes} processes; "
                f"choose a multiple of {processes} (--set {section}.batch_size=...)"
            )


def run_pipeline(
    config: RunConfig,
    out: str | Path | None = None,
    stages: str | Sequence[str] | None = None,
    resume: bool = False,
    on_step: StepHook | None = None,
) -> RunDir:
    """Run `stages` (default: all of the method's) in RUNDIR; with `resume`, finished stages are skipped and
    unfinished ones continue from their last checkpoint or last finished image."""
    config = validate(config)
    device = init_from_env(resolve_device(config.device))  # joins torchrun's process group, if any
    names = list(parse_stages(config.method, stages))
    on_main(lambda: preflight(config, names, world().size))
    out = Path(all_gather(str(out) if out is not None else str(Path("runs") / default_run_name(config)))[0])
    locked: list[RunDir] = []

    def create() -> dict:
        if not (resume and RunDir(Path(out)).config_path.is_file()):
            check_new_run(config, names)  # before config.json exists: a failed check leaves no directory behind
        run, saved = create_or_resume(out, config, resume)  # rank 0 alone locks and writes config.json
        locked.append(run)
        if saved is not config:
            try:
                check_new_run(saved, names)
            except BaseException:
                run.unlock()
                raise
        return saved.to_dict()

    config = config_from_dict(on_main(create))
    run = locked[0] if locked else RunDir(out)
    try:
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        torch.manual_seed(config.seed)
        w = world()
        ranks = f", {w.size} processes" if w.distributed else ""
        log(f"run directory: {run.path}  (method {config.method}, preset {config.preset}, device {device}{ranks})")
        on_main(lambda: run.record_environment(environment_record(device, w.size, training_source(config))))
        for planned in plan_for(config, names):
            stage, round_ = planned.stage, planned.round
            view = run if round_ is None else run.round_view(round_)
            name = stage.name if round_ is None else f"round {round_}: {stage.name}"
            if resume and stage.folder and view.is_done(stage.folder):
                missing = on_main(lambda view=view, stage=stage: missing_outputs(view, config, stage.folder))
                if not missing:
                    log(f"{name}: already finished, skipped", style="dim")
                    continue
                log(f"{name}: marked finished but {len(missing)} output(s) are missing (first: {missing[0]}); redoing them")
            ctx = StageContext(config=config, run=view, device=device, resume=resume, on_step=on_step, round=round_)
            started = time.perf_counter()
            if stage.all_ranks:
                stage.run(ctx)
            else:
                on_main(lambda ctx=ctx, stage=stage: stage.run(ctx))
            barrier()  # every rank sees the stage's outputs (and its DONE marker) before the next one starts
            log(f"{name}: done in {time.perf_counter() - started:.1f} s")
    finally:
        run.unlock()
    return run
