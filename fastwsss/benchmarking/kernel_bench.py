"""Micro-benchmarks of the kernel ops: every available backend next to eager PyTorch and torch.compile.

    fastwsss bench kernels [--json PATH] [--device cuda] [--repeats 50] [--only cam_norm,random_walk] [--tiny]
    python -m bench.kernels                  # the same, writing bench/results/kernels-<device>.json

Cases: cam_norm B=16, K=20 at 32x32 and 128x128 (fp32, fp16), and the bandwidth target B16 x K21 x 512x512 in
fp32 and fp16; confounder attention B=16, n=20, hw=64^2 and 128^2, forward and forward+backward; random walk
on 94x125 and 128x128 grids, 3 and 21 classes, one image and 16 images per call, 256 steps (exp_times 8),
beta 10, radius 5. `--tiny` runs the same ops at toy sizes (the CPU check of bench/gpu.sh).

Method (docs/gpu.md): on a GPU, CUDA events; the L2 flushed before every repetition; several input sets
rotated so that their total exceeds the L2; calls shorter than a millisecond batched between one pair of
events (`benchtools.time_rotated`). Bytes are counted from the tensors the call actually takes and returns
(each read once, each written once; the backward also reads the output gradient and the inputs again and
writes their gradients), so GB/s is a lower bound on what the kernel moved. Each row is written to the JSON
as soon as it is measured: a run cut short keeps every finished row. Triton and CUDA rows appear only on a
GPU (on the CPU the Triton interpreter would be timed, which means nothing). IRNet's dense walk is timed
only with --dense, one image per call (it takes (K, h, w) maps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastwsss.benchmarking.benchtools import (
    environment,
    l2_bytes,
    print_table,
    time_rotated,
    timing_fields,
    write_json,
)

EAGER_TARGET = 3.0
COMPILE_TARGET = 1.5
COPY_TARGET = 0.8
DENSE_TARGET = 1000.0
DENSE_TOLERANCE = 1e-4
MAX_INPUT_SETS = 32


@dataclass
class Case:
    op: str
    label: str
    make: Callable[[torch.device, int], dict[str, Any]]
    """Builds one input set from a seed: {"args": tuple, "flops": int, "backward": bool}."""


def _cam_norm_case(k: int, side: int, dtype: torch.dtype = torch.float32, batch: int = 16) -> Callable:
    def make(device: torch.device, seed: int) -> dict[str, Any]:
        generator = torch.Generator(device=device).manual_seed(seed)
        cams = torch.randn(batch, k, side, side, device=device, generator=generator).to(dtype)
        return {"args": (cams, 1e-5), "flops": 0, "backward": False}

    return make


def _attention_case(side: int, backward: bool, batch: int = 16, n: int = 20) -> Callable:
    def make(device: torch.device, seed: int) -> dict[str, Any]:
        generator = torch.Generator(device=device).manual_seed(seed)
        hw = side * side
        xm = torch.rand(batch, hw, device=device, generator=generator).requires_grad_(backward)
        w1 = (torch.randn(n, hw, device=device, generator=generator) / math.sqrt(hw)).requires_grad_(backward)
        w2 = (torch.randn(n, hw, device=device, generator=generator) / math.sqrt(hw)).requires_grad_(backward)
        c = torch.rand(n, hw, device=device, generator=generator)
        flops = 2 * n * hw * (2 * batch + n) + 2 * batch * n * n
        return {"args": (xm, w1, w2, c, None), "flops": 3 * flops if backward else flops, "backward": backward}

    return make


WALK_STEPS, WALK_TAPS = 256, 69  # exp_times 8; 2 * 34 + 1 taps at radius 5


def _walk_case(h: int, w: int, k: int, batch: int = 1, exp_times: int = 8) -> Callable:
    def make(device: torch.device, seed: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        cams = torch.rand(batch, k, h, w, generator=generator).to(device)
        edge = torch.rand(batch, 1, h, w, generator=generator).to(device)
        flops = 2 * 2**exp_times * batch * k * h * w * WALK_TAPS
        return {"args": (cams, edge, 10.0, exp_times, 5), "flops": flops, "backward": False}

    return make


CASES = [
    Case("cam_norm", "B16 K20 32x32", _cam_norm_case(20, 32)),
    Case("cam_norm", "B16 K20 128x128", _cam_norm_case(20, 128)),
    Case("cam_norm", "B16 K20 128x128 fp16", _cam_norm_case(20, 128, torch.float16)),
    Case("cam_norm", "B16 K21 512x512", _cam_norm_case(21, 512)),
    Case("cam_norm", "B16 K21 512x512 fp16", _cam_norm_case(21, 512, torch.float16)),
    Case("confounder_attention", "B16 n20 64^2 fwd", _attention_case(64, False)),
    Case("confounder_attention", "B16 n20 128^2 fwd", _attention_case(128, False)),
    Case("confounder_attention", "B16 n20 64^2 fwd+bwd", _attention_case(64, True)),
    Case("confounder_attention", "B16 n20 128^2 fwd+bwd", _attention_case(128, True)),
    Case("random_walk", "94x125 K3 256 steps", _walk_case(94, 125, 3)),
    Case("random_walk", "94x125 K21 256 steps", _walk_case(94, 125, 21)),
    Case("random_walk", "128x128 K3 256 steps", _walk_case(128, 128, 3)),
    Case("random_walk", "128x128 K21 256 steps", _walk_case(128, 128, 21)),
    Case("random_walk", "B16 94x125 K3 256 steps", _walk_case(94, 125, 3, batch=16)),
    Case("random_walk", "B16 94x125 K21 256 steps", _walk_case(94, 125, 21, batch=16)),
]

TINY_CASES = [
    Case("cam_norm", "tiny B2 K3 8x8", _cam_norm_case(3, 8, batch=2)),
    Case("cam_norm", "tiny B2 K3 8x8 fp16", _cam_norm_case(3, 8, torch.float16, batch=2)),
    Case("confounder_attention", "tiny B2 n3 4^2 fwd+bwd", _attention_case(4, True, batch=2, n=3)),
    Case("random_walk", "tiny B2 6x7 K2 4 steps", _walk_case(6, 7, 2, batch=2, exp_times=2)),
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


def bytes_touched(args: tuple, out: torch.Tensor, backward: bool) -> int:
    """The fewest bytes a call must move: tensor arguments read once, the output written once; a backward also
    reads the output gradient and the arguments again and writes the gradients of those that require them."""
    inputs = [a for a in args if torch.is_tensor(a)]
    moved = sum(a.numel() * a.element_size() for a in inputs) + out.numel() * out.element_size()
    if backward:
        moved += out.numel() * out.element_size() + sum(a.numel() * a.element_size() for a in inputs)
        moved += sum(a.numel() * a.element_size() for a in inputs if a.requires_grad)
    return moved


def _copy_bandwidth(device: torch.device, repeats: int, numel: int) -> dict[str, Any]:
    x = torch.rand(numel, device=device)
    y = torch.empty_like(x)
    timing = time_rotated([lambda: y.copy_(x)], device, repeats)
    moved = 2 * x.numel() * 4
    return {"bytes": moved, **timing_fields(timing), "gbps": moved / timing.median_ms / 1e6}


def _graphed(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` captured once in a CUDA graph on its first inputs and replayed after (inputs must keep their storage)."""
    state: dict[tuple, Any] = {}

    def run(*args: Any) -> torch.Tensor:
        key = tuple(a.data_ptr() if torch.is_tensor(a) else a for a in args)
        if key not in state:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn(*args)  # warm-up outside the capture: compilation, cached tables, allocations
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn(*args)
            state[key] = (graph, out)
        graph, out = state[key]
        graph.replay()
        return out

    return run


def _dense_walk(cams: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: int, radius: int) -> torch.Tensor:
    """IRNet's dense walk, one image at a time: it takes (K, h, w) maps and one (h, w) boundary map."""
    from fastwsss.kernels.random_walk import random_walk_reference_dense

    n = cams.shape[-1] * cams.shape[-2]
    return torch.stack([
        random_walk_reference_dense(c, e.reshape(e.shape[-2:]), beta, exp_times, radius, max_pixels=n)
        for c, e in zip(cams, edge, strict=True)
    ])  # fmt: skip


def _candidates(case: Case, device: torch.device, use_compile: bool, dense: bool) -> dict[str, Callable]:
    backends = {name: fn for name, fn in implementations(case.op).items() if _runnable(name, device)}
    candidates: dict[str, Callable[..., torch.Tensor]] = {"eager": backends.pop("reference"), **backends}
    if use_compile and case.op != "random_walk":  # the walk's 256-step Python loop is not a sensible graph
        candidates["compile"] = torch.compile(implementations(case.op)["reference"])
    if case.op == "random_walk" and device.type == "cuda":
        if "cuda" in backends:
            candidates["cuda (per-step launches)"] = functools.partial(backends["cuda"], launch="steps")
        if "triton" in backends:
            candidates["triton (CUDA graph replay)"] = _graphed(backends["triton"])
    if dense and case.op == "random_walk":
        candidates["dense (IRNet)"] = _dense_walk
    return candidates


def _input_sets(case: Case, device: torch.device, first: dict[str, Any], set_bytes: int) -> list[dict[str, Any]]:
    """Enough input sets that their total exceeds twice the L2 (one on the CPU and for the walk, which runs for
    milliseconds and whose working set is meant to stay in L2 between its steps)."""
    wanted = 1
    if device.type == "cuda" and case.op != "random_walk" and set_bytes > 0:
        wanted = max(1, min(MAX_INPUT_SETS, math.ceil(2 * l2_bytes(device) / set_bytes)))
    return [first] + [case.make(device, seed) for seed in range(1, wanted)]


def _verdict(row: dict[str, Any], compile_ms: float | None, copy_gbps: float | None) -> str:
    """Whether a GPU backend's row meets the targets (docs/gpu.md), or why it cannot be judged."""
    reasons = []
    if row.get("speedup_vs_eager", 0.0) < EAGER_TARGET:
        reasons.append(f"< {EAGER_TARGET:g}x eager")
    if compile_ms is None:
        reasons.append("no torch.compile row (the walk's 2^k-step loop is not compiled)")
    elif compile_ms / row["median_ms"] < COMPILE_TARGET:
        reasons.append(f"< {COMPILE_TARGET:g}x torch.compile")
    if row["op"] == "cam_norm" and copy_gbps and row.get("gbps", 0.0) < COPY_TARGET * copy_gbps:
        reasons.append(f"< {COPY_TARGET:.0%} of copy bandwidth")
    if "speedup_vs_dense" in row and row["speedup_vs_dense"] < DENSE_TARGET:
        reasons.append(f"< {DENSE_TARGET:g}x IRNet's dense walk")
    if row.get("max_diff_vs_dense", 0.0) > DENSE_TOLERANCE:
        reasons.append(f"differs from the dense walk by > {DENSE_TOLERANCE:g} of the maximum")
    return "met" if not reasons else "; ".join(reasons)


def run_case(case: Case, device: torch.device, repeats: int, use_compile: bool, dense: bool,
             copy_gbps: float | None = None, emit: Callable[[dict[str, Any]], None] | None = None,
             ) -> list[dict[str, Any]]:  # fmt: skip
    """Time every candidate of `case`; `emit` receives each row as soon as it is measured."""
    first = case.make(device, 0)
    reference = implementations(case.op)["reference"]
    out = reference(*first["args"])
    moved = bytes_touched(first["args"], out, first["backward"])
    sets = _input_sets(case, device, first, moved)
    dtype = str(next(a for a in first["args"] if torch.is_tensor(a)).dtype).removeprefix("torch.")
    rows: list[dict[str, Any]] = []
    outputs: dict[str, torch.Tensor] = {}
    out = out.detach()
    for name, fn in _candidates(case, device, use_compile, dense).items():
        calls = [_call(fn, s["args"], s["backward"]) for s in sets]
        row: dict[str, Any] = {"op": case.op, "case": case.label, "backend": name, "dtype": dtype}
        try:
            calls[0]()  # compilation, autotuning, cached tables, before the timed warm-up of time_rotated
            timing = time_rotated(calls, device, repeats if name != "dense (IRNet)" else 1)
        except Exception as exc:  # a backend that fails is reported, the others still run
            row["status"] = f"error: {type(exc).__name__}: {exc}"[:300]
        else:
            row.update(status="ok", **timing_fields(timing), bytes=moved, gbps=moved / timing.median_ms / 1e6)
            if first["flops"]:
                row["gflops"] = first["flops"] / timing.median_ms / 1e6
            with torch.no_grad():
                got = fn(*first["args"]).detach()
            row["max_diff_vs_eager"] = _relative_diff(got, out)
            if case.op == "random_walk":
                outputs[name] = got.clone()
        rows.append(row)
        if name == "dense (IRNet)" and row["status"] == "ok":
            _against_dense(rows, outputs)
        _compare(rows, device, copy_gbps)
        if emit is not None:
            emit(row)
    return rows


def _relative_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|, in float64 (NaN where the shapes differ or want is all zero)."""
    if got.shape != want.shape:
        return float("nan")
    scale = want.double().abs().max().item()
    return (got.double() - want.double()).abs().max().item() / scale if scale > 0 else float("nan")


def _against_dense(rows: list[dict[str, Any]], outputs: dict[str, torch.Tensor]) -> None:
    """The walk's rows against IRNet's dense walk (the last candidate): speed-up and max difference / max."""
    dense = next(r for r in rows if r["backend"] == "dense (IRNet)")
    for row in rows:
        if row is not dense and row["status"] == "ok" and row["backend"] in outputs:
            row["speedup_vs_dense"] = dense["median_ms"] / row["median_ms"]
            row["max_diff_vs_dense"] = _relative_diff(outputs[row["backend"]], outputs["dense (IRNet)"])


def _compare(rows: list[dict[str, Any]], device: torch.device, copy_gbps: float | None) -> None:
    """Speed-ups over eager and compile, and the target verdict of GPU rows (updated in place as rows arrive)."""
    ok = {r["backend"]: r for r in rows if r["status"] == "ok"}
    eager, compiled = ok.get("eager"), ok.get("compile")
    for row in ok.values():
        if eager is not None:
            row["speedup_vs_eager"] = eager["median_ms"] / row["median_ms"]
        if compiled is not None:
            row["speedup_vs_compile"] = compiled["median_ms"] / row["median_ms"]
        if device.type == "cuda" and row["backend"] not in ("eager", "compile", "dense (IRNet)"):
            row["target"] = _verdict(row, compiled["median_ms"] if compiled else None, copy_gbps)


def run_kernel_bench(device: torch.device, repeats: int = 30, only: list[str] | None = None, use_compile: bool = True,
                     dense: bool = False, json_path: Path | None = None, tiny: bool = False) -> dict[str, Any]:
    """Run the cases (TINY_CASES with `tiny`), rewriting `json_path` after every row; print a table at the end."""
    copy_numel = 2**16 if tiny else (512 if device.type == "cuda" else 64) * 2**20 // 4
    payload: dict[str, Any] = {
        "benchmark": "kernels", "environment": environment(device), "method": __doc__.split("Method ")[1].split("\n\n")[0],
        "l2_bytes": l2_bytes(device), "copy": _copy_bandwidth(device, repeats, copy_numel), "rows": [],
    }  # fmt: skip
    copy_gbps = payload["copy"]["gbps"]

    def emit(row: dict[str, Any]) -> None:
        payload["rows"].append(row)
        if json_path is not None:
            write_json(json_path, payload)

    if json_path is not None:
        write_json(json_path, payload)
    for case in TINY_CASES if tiny else CASES:
        if only and case.op not in only:
            continue
        run_case(case, device, repeats, use_compile, dense, copy_gbps, emit)
        if json_path is not None:
            write_json(json_path, payload)  # the speed-ups of earlier rows are final only once the case is done
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _print(payload)
    return payload


def _print(payload: dict[str, Any]) -> None:
    table = []
    for r in payload["rows"]:
        if r["status"] != "ok":
            table.append([r["op"], r["case"], r["backend"], r["status"][:60], "", "", "", ""])
            continue
        rate = f"{r['gflops']:.1f} GFLOP/s" if "gflops" in r else f"{r['gbps']:.1f} GB/s"
        table.append([r["op"], r["case"], r["backend"], f"{r['median_ms']:.4f}", f"{r['p10_ms']:.4f}-{r['p90_ms']:.4f}",
                      rate, f"{r.get('speedup_vs_eager', float('nan')):.2f}x", r.get("target", "")])
    print_table(f"kernels on {payload['environment']['device']} (copy {payload['copy']['gbps']:.1f} GB/s)",
                ["op", "case", "backend", "median ms", "p10-p90 ms", "rate", "vs eager", "target"], table)
