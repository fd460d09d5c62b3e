"""The epoch loop every training stage shares (cls, irn, seg).

Data order and augmentation are functions of (seed, epoch, index) and the torch RNG state is checkpointed
with the model and optimiser after every epoch (RUNDIR/<stage>/last.pt), so a run resumed with --resume
trains exactly as an uninterrupted one. Learning rates follow the poly schedule from each parameter
group's "initial_lr". A non-finite loss stops the stage with one line naming the step, keeping the last
good checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fastwsss.errors import CheckpointError, FastwsssError
from fastwsss.io import atomic_path
from fastwsss.progress import log, make_progress
from fastwsss.stages.context import StageContext


def poly_lr(base_lr: float, step: int, max_step: int, power: float = 0.9) -> float:
    return base_lr * (1.0 - step / max_step) ** power


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch, a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_items, generator=generator).tolist()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainJob:
    """One stage's training: what to train, on what, and how its loss is computed."""

    stage: str
    """Stage name for the progress bar, messages and the ctx.step hook."""
    metric_stage: str
    """`stage` value of the per-epoch metrics rows."""
    split: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Any
    """A map-style dataset with `set_epoch(epoch)`."""
    epochs: int
    batch_size: int
    last_path: Path
    compute_loss: Callable[[dict[str, Any]], torch.Tensor]
    """Loss of one batch; tensors in the batch are already on the stage's device."""
    hint: str
    """What to try when the loss is not finite (names the setting)."""
    checkpointed: nn.Module | None = None
    """The module whose weights go into last.pt (default: `model`; IRN keeps only its head)."""


def _resume(ctx: StageContext, job: TrainJob, module: nn.Module) -> tuple[int, int]:
    if not (ctx.resume and job.last_path.is_file()):
        return 0, 0
    try:
        state = torch.load(job.last_path, map_location=ctx.device, weights_only=True)
        module.load_state_dict(state["model"])
        job.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
    except Exception as exc:
        raise CheckpointError(f"{job.last_path}: cannot resume from this checkpoint ({exc})") from exc
    row = state.get("metrics_row")
    if row is not None and not any(
        r.get("stage") == row["stage"] and r.get("epoch") == row["epoch"] and r.get("round") == ctx.run.tags.get("round")
        for r in ctx.run.metrics()
    ):
        ctx.run.log_metric(row)  # the run was killed after saving last.pt but before logging its epoch
    log(f"{job.stage}: resuming after epoch {start_epoch} of {job.epochs} from {job.last_path}")
    return start_epoch, step


def run_epochs(ctx: StageContext, job: TrainJob) -> int:
    """Train `job` for its epochs (continuing from last.pt on --resume); returns the number of steps."""
    cfg = ctx.config
    module = job.checkpointed if job.checkpointed is not None else job.model
    batch = min(job.batch_size, len(job.dataset))
    steps_per_epoch = len(job.dataset) // batch
    max_step = steps_per_epoch * job.epochs
    start_epoch, step = _resume(ctx, job, module)
    with make_progress() as progress:
        task = progress.add_task(f"{job.stage}: train", total=max_step, completed=step, info="")
        for epoch in range(start_epoch, job.epochs):
            job.dataset.set_epoch(epoch)
            order = epoch_order(len(job.dataset), cfg.seed, epoch)[: steps_per_epoch * batch]
            loader = DataLoader(job.dataset, batch_size=batch, sampler=order, num_workers=cfg.data.num_workers, drop_last=True)
            job.model.train()
            total, count = 0.0, 0
            for sample in loader:
                sample = {k: v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in sample.items()}
                for group in job.optimizer.param_groups:
                    group["lr"] = poly_lr(group["initial_lr"], step, max_step)
                loss = job.compute_loss(sample)
                value = loss.item()
                if not math.isfinite(value):
                    kept = job.last_path if job.last_path.exists() else "none (first epoch)"
                    raise FastwsssError(
                        f"{job.stage}: loss is {value} at epoch {epoch + 1} step {step + 1}; the last good "
                        f"checkpoint stays at {kept}; {job.hint}"
                    )
                job.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                job.optimizer.step()
                step += 1
                total += value
                count += 1
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{job.epochs} loss {total / count:.4f}")
                ctx.step(job.stage, step)
            row = {"stage": job.metric_stage, "split": job.split, "method": cfg.method, "epoch": epoch + 1,
                   "loss": total / max(count, 1), "miou": None, "per_class_iou": None}
            # The row travels in last.pt so that a kill between the two writes cannot lose it (see _resume).
            with atomic_path(job.last_path) as tmp:
                torch.save({"model": module.state_dict(), "optimizer": job.optimizer.state_dict(),
                            "epoch": epoch, "step": step, "rng": rng_state(), "metrics_row": row}, tmp)
            ctx.run.log_metric(row)
    return step
