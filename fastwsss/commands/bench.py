"""`fastwsss bench kernels`: the kernel micro-benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastwsss.commands.options import device_option
from fastwsss.engine.device import DEFAULT_DEVICE
from fastwsss.errors import ConfigError


def bench_kernels(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results here as JSON")] = None,
    device: Annotated[str, device_option()] = DEFAULT_DEVICE,
    repeats: Annotated[int, typer.Option(help="Timed calls per case and backend (median, p10, p90)")] = 30,
    only: Annotated[str | None, typer.Option(help="Comma-separated ops: cam_norm,confounder_attention,random_walk")] = None,
    compile: Annotated[bool, typer.Option(help="Also time torch.compile of the reference")] = True,
    dense: Annotated[bool, typer.Option(help="Also time IRNet's dense random walk (slow: minutes on a CPU)")] = False,
    tiny: Annotated[bool, typer.Option(help="Toy sizes: checks that every path runs, times nothing useful")] = False,
) -> None:
    """Time every kernel backend that can run here next to eager PyTorch and torch.compile.

    On a CPU only eager and compile run (Triton and CUDA rows need a GPU). Example:

      fastwsss bench kernels --device cuda --json bench/results/kernels-h100.json
    """
    from fastwsss.benchmarking.kernel_bench import CASES, TINY_CASES, run_kernel_bench
    from fastwsss.engine.device import resolve_device

    ops = [o.strip() for o in only.split(",")] if only else None
    known = sorted({c.op for c in CASES + TINY_CASES})
    for op in ops or []:
        if op not in known:
            raise ConfigError(f"--only: unknown op {op!r}; valid: {', '.join(known)}")
    run_kernel_bench(resolve_device(device), repeats, ops, compile, dense, json_path, tiny)
