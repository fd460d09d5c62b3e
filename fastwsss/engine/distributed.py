"""Multi-process runs with torch.distributed: what each rank does, and the few collectives the stages need.

A run is distributed when it is started by `torchrun` (or `fastwsss train --nproc N`, which starts torchrun):
the launcher sets RANK, WORLD_SIZE and LOCAL_RANK, and `init_from_env` joins the process group (nccl on
GPUs, gloo on the CPU). Without those variables every function here is the single-process identity, so the
stages call them unconditionally.

The division of work (docs/design.md, "Scale-out"):
- training stages (cls, c2am, irn, seg) wrap the model in DistributedDataParallel; each optimiser step's
  global batch of `batch_size` images is split evenly over the ranks (fastwsss.engine.training);
- per-image stages (cam, ir_label, pseudo, global_cam, eval, the seg stage's predictions and scores) take
  `shard(ids)` and sum what they accumulate (`sum_array`);
- CONTA's confounder stage shards the images it must predict, then builds C and X_m on rank 0 alone;
- only rank 0 writes shared files: config.json, metrics.jsonl, checkpoints, DONE markers, failed.txt.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from fastwsss.errors import ConfigError, FastwsssError

T = TypeVar("T")

TIMEOUT = datetime.timedelta(hours=6)
"""How long a rank waits at a collective: rank 0 may evaluate a whole data set while the others wait."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the run (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def is_main() -> bool:
    return world().is_main


def launched_world() -> World:
    """The world the launcher asked for (from RANK / WORLD_SIZE / LOCAL_RANK), before the group is joined."""
    try:
        return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                     int(os.environ.get("LOCAL_RANK", "0")))  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK: not integers ({exc})") from None


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when the thread that started it exits."""


def die_with_launcher() -> bool:
    """Under torchrun on Linux, have the kernel SIGKILL this worker when its launcher dies; True if set.

    torchrun starts every worker in a session of its own, so a SIGKILL of the launcher (or of its process
    group: a dying machine, `kill -9`, a batch system's hard stop) does not reach the workers; they would
    wait at their next collective for TIMEOUT (hours), holding memory and GPUs. The launcher starts its
    workers from its main thread, which lives as long as the launcher, so the signal cannot come early.
    """
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os._exit(1)
    return True


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group the launcher set up (a no-op for a single process); returns this rank's device.

    On CUDA each rank takes the GPU of its LOCAL_RANK and the nccl backend; on the CPU, gloo. A worker
    dies with its launcher (`die_with_launcher`).
    """
    launched = launched_world()
    if launched.size < 1 or not 0 <= launched.rank < launched.size or launched.local_rank < 0:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK: rank {launched.rank} of {launched.size} is not a valid process")
    if not launched.distributed:
        return device
    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise ConfigError(
            f"WORLD_SIZE={launched.size}: set without torchrun (no MASTER_ADDR / MASTER_PORT); unset it, or use --nproc"
        )
    die_with_launcher()
    if device.type == "cuda":
        if launched.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"--nproc: local rank {launched.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU"
            )
        device = torch.device("cuda", launched.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return device


def shutdown() -> None:
    """Leave the process group, cleanly: first free what still holds gloo work (a finished stage's
    DistributedDataParallel reducer can linger in a reference cycle), then wait for every rank. Without
    this, one 2-process run in 16 on a loaded CPU aborted at exit ("terminate called without an active
    exception"; 0 in 20 with it): gloo state torn down during interpreter shutdown or while a peer sent."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: every size-th item from position rank (deterministic, order kept)."""
    w = world()
    return list(items[w.rank :: w.size])


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order; [obj] for a single process."""
    w = world()
    if not w.distributed:
        return [obj]
    gathered: list[Any] = [None] * w.size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `tensor` (a new tensor; gradients do not flow through it)."""
    if not world().distributed:
        return tensor.detach().clone()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean over ranks of a Python float (every rank gets the same number)."""
    w = world()
    if not w.distributed:
        return value
    return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=device))[0]) / w.size


def sum_array(array: np.ndarray) -> np.ndarray:
    """The element-wise sum over ranks of a numpy array (a confusion matrix, a count)."""
    if not world().distributed:
        return array
    return np.sum(all_gather(array), axis=0).astype(array.dtype)


BatchMean = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""batch_mean(total, count): a sum turned into a mean; `local_mean`, or under DistributedDataParallel
`global_batch_mean` (the count of the whole global batch)."""


def local_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count over this process's batch; 0 for an empty set, never NaN."""
    return total / count.clamp(min=1)


def global_batch_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """`total / count` taken over the whole global batch, in the form DistributedDataParallel needs.

    DDP averages gradients over the ranks, so each rank returns its own `total` divided by the global count
    and multiplied by the number of ranks: the average of these equals the single-process loss of the
    whole batch (up to float rounding), even where the ranks hold different numbers of labelled pixels or
    pairs. An empty global set gives 0, not NaN.
    """
    w = world()
    if not w.distributed:
        return local_mean(total, count)
    global_count = all_reduce_sum(count.to(torch.float64)).to(total.dtype)
    return total * w.size / global_count.clamp(min=1)


def split_batch(indices: list[int], batch: int, setting: str = "batch_size") -> list[int]:
    """This rank's part of every global batch in `indices` (consecutive groups of `batch` indices).

    Rank r takes positions [r * b, (r + 1) * b) of each batch, b = batch / world size; `batch` must divide
    (`setting` names it in the error).
    """
    w = world()
    if not w.distributed:
        return list(indices)
    if batch % w.size:
        raise ConfigError(
            f"{setting}: a batch of {batch} does not split evenly over {w.size} processes; choose a multiple of {w.size}"
        )
    part = batch // w.size
    mine: list[int] = []
    for start in range(0, len(indices) - batch + 1, batch):
        mine += indices[start + w.rank * part : start + (w.rank + 1) * part]
    return mine


class PeerStopped(FastwsssError):
    """Rank 0 stopped with an error (which it reports itself); the other ranks stop quietly, with exit code 0,
    so that torchrun names rank 0 as the root cause rather than killing it while it reports."""


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result (picklable) to every rank; the others wait for it.

    A FastwsssError on rank 0 is re-raised there and makes the other ranks raise PeerStopped, so that the
    run stops everywhere with one message. For a single process this is just `fn()`.
    """
    w = world()
    if not w.distributed:
        return fn()
    if w.is_main:
        try:
            result = fn()
        except FastwsssError as exc:
            all_gather((None, str(exc)))
            raise
        all_gather((result, None))
        return result
    result, error = all_gather(None)[0]
    if error is not None:
        raise PeerStopped(f"rank 0 stopped: {error}")
    return result
