"""`--nproc N` of `train` and `segment`: start the same command in N processes with torchrun."""

from __future__ import annotations

import sys

import typer

from fastwsss.engine.progress import console
from fastwsss.errors import ConfigError


def start_processes(nproc: int, device: str | None) -> None:
    """--nproc N: nothing for 1 or inside torchrun; else check the GPUs, run N processes and exit with their code."""
    import torch

    from fastwsss.engine.device import resolve_device
    from fastwsss.engine.distributed import launched_world

    if nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {nproc}")
    if nproc == 1 or launched_world().distributed:
        return
    if resolve_device(device).type == "cuda":
        visible = torch.cuda.device_count()
        if nproc > visible:
            raise ConfigError(f"--nproc {nproc}: {visible} GPU(s) visible; start at most one process per GPU "
                              "(or pass --device cpu for gloo processes on the CPU)")  # fmt: skip
    raise typer.Exit(launch_torchrun(nproc, without_option(sys.argv[1:], "--nproc")))


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` with `name VALUE` and `name=VALUE` removed."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(f"{name}="):
            out.append(item)
    return out


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Start `python -m fastwsss ARGV` in `nproc` processes with torchrun on this machine; their exit code.

    Every process prints its own one-line errors; this adds one line saying which ranks failed.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    console.print(f"starting {nproc} processes: torchrun --standalone --nproc-per-node {nproc} -m fastwsss", soft_wrap=True)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "fastwsss", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        listed = ", ".join(f"rank {rank}: exit code {code}" for rank, code in sorted(codes.items()))
        console.print(f"[red]error:[/red] {len(codes)} of {nproc} processes failed ({listed}); their messages are above",
                      soft_wrap=True)
        return max((c for c in codes.values() if c and c > 0), default=1)
    return 0
