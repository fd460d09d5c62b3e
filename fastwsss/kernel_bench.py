"""Micro-benchmarks of the kernel ops: every available backend next to eager PyTorch and torch.compile.

    fastwsss bench kernels [--json PATH] [--device cuda] [--repeats 50] [--only cam_norm,random_walk]
    python -m bench.kernels                  # the same, writing bench/results/kernels-<device>.json

Cases (the issue's realistic sizes): cam_norm B=16, K=20 at 32x32 and 128x128; confounder attention B=16,
n=20, hw=64^2 and 128^2, forward and forward+backward; random walk on 94x125 and 128x128 grids, 3 and 21
classes, 256 steps (exp_times 8), beta 10, radius 5. Per case and backend: median and p10/p90 time (CUDA
events on GPU), achieved GB/s (the bytes an ideal single pass must move: inputs read once, outputs written
once) or GFLOP/s, and the speed-up over eager. A device-copy case measures the copy bandwidth the
memory-bound kernels are judged against. Triton and CUDA rows appear only where they can run (a GPU);
on the CPU the Triton interpreter would be timed, which means nothing, so it is left out. IRNet's dense
walk is timed only with --dense (bench/random_walk.py covers it with memory on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastwsss.benchtools import environment, print_table, synchronize, time_calls, timing_fields, write_json


@dataclass
class Case:
    op: str
    label: str
    make: Callable[[torch.device], dict[str, Any]]
    """Builds the inputs: {"args": tuple, "bytes": int, "flops": int, "backward": bool}."""


def _cam_norm_case(k: int, side: int) -> Callable[[torch.device], dict[str, Any]]:
    def make(device: torch.device) -> dict[str, Any]:
        cams = torch.randn(16, k, side, side, device=device)
        return {"args": (cams, 1e-5), "bytes": 2 * cams.numel() * 4, "flops": 0, "backward": False}

    return make


def _attention_case(side: int, backward: bool) -> Callable[[torch.device], dict[str, Any]]:
    def make(device: torch.device) -> dict[str, Any]:
        b, n, hw = 16, 20, side * side
        xm = torch.rand(b, hw, device=device, requires_grad=backward)
        w1 = (torch.randn(n, hw, device=device) / math.sqrt(hw)).requires_grad_(backward)
        w2 = (torch.randn(n, hw, device=device) / math.sqrt(hw)).requires_grad_(backward)
        c = torch.rand(n, hw, device=device)
        moved = (2 * b + 3 * n) * hw * 4
        flops = 2 * n * hw * (2 * b + n) + 2 * b * n * n
        if backward:  # reads dM again, writes dxm, dW1, dW2; about twice the forward products
            moved += (2 * b + 2 * n) * hw * 4
            flops *= 3
        return {"args": (xm, w1, w2, c, None), "bytes": moved, "flops": flops, "backward": backward}

    return make


def _walk_case(h: int, w: int, k: int) -> Callable[[torch.device], dict[str, Any]]:
    def make(device: torch.device) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(0)
        cams = torch.rand(1, k, h, w, generator=generator).to(device)
        edge = torch.rand(1, 1, h, w, generator=generator).to(device)
        steps, taps = 256, 69
        return {"args": (cams, edge, 10.0, 8, 5), "bytes": 0, "flops": 2 * steps * k * h * w * taps, "backward": False}

    return make


CASES = [
    Case("cam_norm", "B16 K20 32x32", _cam_norm_case(20, 32)),
    Case("cam_norm", "B16 K20 128x128", _cam_norm_case(20, 128)),
    Case("confounder_attention", "B16 n20 64^2 fwd", _attention_case(64, False)),
    Case("confounder_attention", "B16 n20 128^2 fwd", _attention_case(128, False)),
    Case("confounder_attention", "B16 n20 64^2 fwd+bwd", _attention_case(64, True)),
    Case("confounder_attention", "B16 n20 128^2 fwd+bwd", _attention_case(128, True)),
    Case("random_walk", "94x125 K3 256 steps", _walk_case(94, 125, 3)),
    Case("random_walk", "94x125 K21 256 steps", _walk_case(94, 125, 21)),
    Case("random_walk", "128x128 K3 256 steps", _walk_case(128, 128, 3)),
    Case("random_walk", "128x128 K21 256 steps", _walk_case(128, 128, 21)),
]


def implementations(op: str) -> dict[str, Callable[..., torch.Tensor]]:
    """The op's backends by name (reference, triton, cuda: what the module registered)."""
    from importlib import import_module

    return dict(import_module(f"fastwsss.kernels.{op}")._IMPLEMENTATIONS)


def _runnable(backend: str, device: torch.device) -> bool:
    return backend == "reference" or device.type == "cuda"


def _call(fn: Callable[..., torch.Tensor], args: tuple, backward: bool) -> Callable[[], Any]:
    if not backward:
        return lambda: fn(*args)

    def run() -> None:
        for a in args:
            if torch.is_tensor(a):
                a.grad = None
        fn(*args).sum().backward()

    return run


def _copy_bandwidth(device: torch.device, repeats: int) -> dict[str, Any]:
    x = torch.empty(64 * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    timing = time_calls(lambda: y.copy_(x), device, repeats)
    return {"bytes": 2 * x.numel() * 4, **timing_fields(timing), "gbps": 2 * x.numel() * 4 / timing.median_ms / 1e6}


def _graphed(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` captured once in a CUDA graph on its first inputs and replayed after (inputs must keep their storage)."""
    state: dict[str, Any] = {}

    def run(*args: Any) -> torch.Tensor:
        if "graph" not in state:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn(*args)  # warm-up outside the capture: compilation, autotuning, allocations
            torch.cuda.current_stream().wait_stream(side)
            state["graph"] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(state["graph"]):
                state["out"] = fn(*args)
        state["graph"].replay()
        return state["out"]

    return run


def _walk_launch_variants(backends: dict[str, Callable[..., torch.Tensor]]) -> dict[str, Callable[..., torch.Tensor]]:
    """The walk's launch overhead made visible: CUDA's per-step launcher next to its default persistent one, and
    the Triton walk's 2^k launches replayed from a CUDA graph (what a capture would buy; not a library path)."""
    import functools

    variants: dict[str, Callable[..., torch.Tensor]] = {}
    if "cuda" in backends:
        variants["cuda (per-step launches)"] = functools.partial(backends["cuda"], launch="steps")
    if "triton" in backends:
        variants["triton (CUDA graph replay)"] = _graphed(backends["triton"])
    return variants


def run_case(case: Case, device: torch.device, repeats: int, use_compile: bool, dense: bool) -> list[dict[str, Any]]:
    inputs = case.make(device)
    args, backward = inputs["args"], inputs["backward"]
    backends = {name: fn for name, fn in implementations(case.op).items() if _runnable(name, device)}
    candidates: dict[str, Callable[..., torch.Tensor]] = {"eager": backends.pop("reference"), **backends}
    if use_compile and case.op != "random_walk":  # the walk's 256-step Python loop is not a sensible graph
        candidates["compile"] = torch.compile(implementations(case.op)["reference"])
    if case.op == "random_walk" and device.type == "cuda":
        candidates.update(_walk_launch_variants(backends))
    if dense and case.op == "random_walk":
        from fastwsss.kernels.random_walk import random_walk_reference_dense

        candidates["dense (IRNet)"] = lambda cams, edge, beta, exp, radius: random_walk_reference_dense(
            cams, edge, beta, exp, radius, max_pixels=cams.shape[-1] * cams.shape[-2])
    rows = []
    for name, fn in candidates.items():
        call = _call(fn, args, backward)
        try:
            for _ in range(2):  # warm-up: compilation, autotuning, allocator
                call()
            synchronize(device)
            timing = time_calls(call, device, repeats if name != "dense (IRNet)" else 1)
        except Exception as exc:  # a backend that fails is reported, the others still run
            rows.append({"op": case.op, "case": case.label, "backend": name, "status": f"error: {exc}"[:200]})
            continue
        row = {"op": case.op, "case": case.label, "backend": name, "status": "ok", **timing_fields(timing)}
        if inputs["bytes"]:
            row["gbps"] = inputs["bytes"] / timing.median_ms / 1e6
        if inputs["flops"]:
            row["gflops"] = inputs["flops"] / timing.median_ms / 1e6
        rows.append(row)
    eager = next((r for r in rows if r["backend"] == "eager" and r["status"] == "ok"), None)
    for row in rows:
        if eager is not None and row["status"] == "ok":
            row["speedup_vs_eager"] = eager["median_ms"] / row["median_ms"]
    return rows


def run_kernel_bench(device: torch.device, repeats: int = 30, only: list[str] | None = None, use_compile: bool = True,
                     dense: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for case in CASES:
        if only and case.op not in only:
            continue
        rows += run_case(case, device, repeats, use_compile, dense)
    payload = {"benchmark": "kernels", "environment": environment(device), "copy": _copy_bandwidth(device, repeats),
               "rows": rows}
    table = []
    for r in rows:
        if r["status"] != "ok":
            table.append([r["op"], r["case"], r["backend"], r["status"], "", "", ""])
            continue
        rate = f"{r['gbps']:.1f} GB/s" if "gbps" in r else f"{r.get('gflops', 0):.1f} GFLOP/s"
        table.append([r["op"], r["case"], r["backend"], f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
                      rate, f"{r.get('speedup_vs_eager', float('nan')):.2f}x"])
    print_table(f"kernels on {payload['environment']['device']} (copy {payload['copy']['gbps']:.1f} GB/s)",
                ["op", "case", "backend", "median ms", "p10-p90 ms", "rate", "vs eager"], table)
    if json_path is not None:
        write_json(json_path, payload)
    return payload
