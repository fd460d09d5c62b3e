"""The epoch loop every training stage shares (cls, irn, seg).

Data order and augmentation are functions of (seed, epoch, index) and the torch RNG state is checkpointed
with the model and optimiser after every epoch (RUNDIR/<stage>/last.pt), so a run resumed with --resume
trains exactly as an uninterrupted one. Learning rates follow the poly schedule from each parameter
group's "initial_lr". A non-finite loss stops the stage with one line naming the step, keeping the last
good checkpoint.

Under torchrun (fastwsss.engine.distributed) the model is wrapped in DistributedDataParallel and every global
batch of `batch_size` images is split evenly over the ranks, so one step sees the same images as in a
single process; losses that average over pixels or pairs use `global_batch_mean`, so the gradient is the
single-process one up to float rounding. BatchNorm in training mode is the exception: on CUDA it becomes
SyncBatchNorm (statistics over the global batch); on the CPU (gloo) each rank normalises with its own
images' statistics, because SyncBatchNorm has no CPU implementation. Rank 0 alone writes last.pt and the
metrics rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fastwsss.engine.distributed import mean_over_ranks, split_batch, world
from fastwsss.engine.progress import log, make_progress, warn
from fastwsss.errors import CheckpointError, DataError, FastwsssError
from fastwsss.models.checkpoint import save_torch_file, verify_checksum
from fastwsss.stages.context import StageContext


class SkipUnreadable(Dataset):
    """A training set that replaces a sample it cannot read by the next readable one, warning once per file.

    One corrupt image or bad mask among thousands (a DataError naming the file) must not stop hours of
    training. The replacement is a pure function of the index and of which files are unreadable, so
    resumed and multi-process runs draw the same samples.
    """

    def __init__(self, dataset: Any, stage: str) -> None:
        self.dataset, self.stage, self.bad = dataset, stage, set()

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        size = len(self.dataset)
        for offset in range(size):
            candidate = (index + offset) % size
            if candidate in self.bad:
                continue
            try:
                return self.dataset[candidate]
            except DataError as exc:
                self.bad.add(candidate)
                warn(f"{self.stage}: {exc}; training uses the next readable image in its place")
        raise DataError(f"{self.stage}: none of the {size} training images could be read")


def sgd_optimizer(groups: list[dict[str, Any]], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over parameter groups, each at lr x its "lr_mult" (default 1); `initial_lr` is the poly schedule's base.

    The one optimizer of the training stages: cls, c2am (with the classifier's momentum and weight decay)
    and irn (one group, the boundary head)."""
    groups = [{**g, "lr": lr * g.get("lr_mult", 1.0), "initial_lr": lr * g.get("lr_mult", 1.0)} for g in groups]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def with_multipliers(groups: list[dict[str, Any]], head_lr_mult: float) -> list[dict[str, Any]]:
    """[backbone, head, ...] groups with the head's multiplier set (later groups keep theirs, else the head's)."""
    backbone, head, *rest = groups
    return [backbone, {**head, "lr_mult": head_lr_mult}, *({"lr_mult": head_lr_mult, **g} for g in rest)]


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
    compute_loss: Callable[[nn.Module, dict[str, Any]], torch.Tensor]
    """compute_loss(forward, batch): the loss of one batch, calling `forward` (the model, or its
    DistributedDataParallel wrapper, which must be called for the gradients to be averaged over the ranks)
    where the stage would call the model; tensors in the batch are already on the stage's device."""
    hint: str
    """What to try when the loss is not finite (names the setting)."""
    checkpointed: nn.Module | None = None
    """The module whose weights go into last.pt (default: `model`; IRN keeps only its head)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (the poly schedule then runs over them); None = `epochs` epochs."""
    accumulate: int = 1
    """Each batch goes through `compute_loss` in this many equal chunks whose gradients add up (DeepLab's
    iter_size); each chunk's loss is divided by `accumulate`."""
    lr_step: int = 1
    """The poly lr is recomputed at steps 0, lr_step, 2 lr_step, ... and kept in between (DeepLab's PolynomialLR)."""


def chunks(sample: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """`sample` split along the batch into `parts` equal pieces (tensors and lists alike)."""
    if parts == 1:
        return [sample]
    size = len(next(iter(sample.values())))
    if size % parts:
        raise FastwsssError(f"a batch of {size} images does not split into {parts} equal chunks")
    step = size // parts
    return [{k: v[i * step:(i + 1) * step] for k, v in sample.items()} for i in range(parts)]


def _resume(ctx: StageContext, job: TrainJob, module: nn.Module) -> tuple[int, int]:
    if not (ctx.resume and job.last_path.is_file()):
        return 0, 0
    try:
        state = torch.load(job.last_path, map_location=ctx.device, weights_only=True)
        verify_checksum(state, job.last_path)
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


def distributed_forward(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` itself for one process; under torchrun, its DistributedDataParallel wrapper (SyncBatchNorm on CUDA).

    The BatchNorm conversion keeps the Parameter objects, so the optimiser built on `model` stays valid.
    """
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def run_epochs(ctx: StageContext, job: TrainJob) -> int:
    """Train `job` for its epochs (continuing from last.pt on --resume); returns the number of steps."""
    cfg = ctx.config
    module = job.checkpointed if job.checkpointed is not None else job.model
    batch = min(job.batch_size, len(job.dataset))
    steps_per_epoch = len(job.dataset) // batch
    epochs = job.epochs if job.max_steps is None else -(-job.max_steps // steps_per_epoch)
    max_step = steps_per_epoch * epochs if job.max_steps is None else job.max_steps
    part = len(split_batch(list(range(batch)), batch, f"{job.stage}.batch_size"))  # this rank's images per step
    start_epoch, step = _resume(ctx, job, module)
    forward = distributed_forward(job.model, ctx.device)
    dataset = SkipUnreadable(job.dataset, job.stage)
    with make_progress() as progress:
        task = progress.add_task(f"{job.stage}: train", total=max_step, completed=step, info="")
        for epoch in range(start_epoch, epochs):
            dataset.set_epoch(epoch)
            order = split_batch(epoch_order(len(dataset), cfg.seed, epoch)[: steps_per_epoch * batch], batch)
            loader = DataLoader(dataset, batch_size=part, sampler=order, num_workers=cfg.data.num_workers, drop_last=True)
            job.model.train()
            total, count = 0.0, 0
            for sample in loader:
                if step >= max_step:
                    break
                sample = {k: v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in sample.items()}
                for group in job.optimizer.param_groups:
                    group["lr"] = poly_lr(group["initial_lr"], step - step % job.lr_step, max_step)
                job.optimizer.zero_grad(set_to_none=True)
                value = 0.0
                for part_sample in chunks(sample, job.accumulate):
                    loss = job.compute_loss(forward, part_sample)
                    if job.accumulate > 1:
                        loss = loss / job.accumulate
                    part_value = mean_over_ranks(loss.item(), ctx.device)  # every rank sees the same value (and NaN)
                    if not math.isfinite(part_value):
                        kept = job.last_path if job.last_path.exists() else "none (first epoch)"
                        raise FastwsssError(
                            f"{job.stage}: loss is {part_value} at epoch {epoch + 1} step {step + 1}; the last good "
                            f"checkpoint stays at {kept}; {job.hint}"
                        )
                    loss.backward()
                    value += part_value
                job.optimizer.step()
                step += 1
                total += value
                count += 1
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {total / count:.4f}")
                ctx.step(job.stage, step)
            row = {"stage": job.metric_stage, "split": job.split, "method": cfg.method, "epoch": epoch + 1,
                   "loss": total / max(count, 1), "miou": None, "per_class_iou": None}
            # The row travels in last.pt so that a kill between the two writes cannot lose it (see _resume).
            if world().is_main:
                save_torch_file({"model": module.state_dict(), "optimizer": job.optimizer.state_dict(),
                                 "epoch": epoch, "step": step, "rng": rng_state(), "metrics_row": row}, job.last_path)
            ctx.run.log_metric(row)
    del forward  # a DistributedDataParallel reducer must not outlive the process group (distributed.shutdown)
    return step
