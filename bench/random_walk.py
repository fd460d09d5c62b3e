"""Benchmark of the random walk: IRNet's dense T^(2^k) against the sparse 69-tap steps.

    python -m bench.random_walk                       # CUDA when present, else CPU
    python -m bench.random_walk --device cpu --skip-dense-above 5000 --json /tmp/rw.json

Each (grid, classes, path) case runs in a fresh process (see bench.common): one untimed-for-statistics
first call that measures the peak memory, then up to --repeats timed calls within --budget-s seconds (a
case whose first call alone exceeds the budget reports that call as its only sample). Where the dense path
ran, the same process also runs the sparse path on the same inputs and reports the largest difference.
CPU timings of the sparse path (17,664 small ops for exp_times 8) suffer badly when the machine's cores are
busy with other work and torch runs more than one thread per op: compare with --threads 1 on a loaded box.
Target: the sparse path stays below 300 MB on the 94 x 125 grid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    RESULTS_DIR,
    device_label,
    emit_case_result,
    environment,
    fmt_or_dash,
    measure_peak,
    pick_device,
    print_table,
    run_isolated,
    summarize,
    synchronize,
    time_calls,
    timing_fields,
    write_json,
)

MODULE = "bench.random_walk"
ACCEPTANCE_GRID = (94, 125)
ACCEPTANCE_BYTES = 300 * 10**6
MIB = 2**20


def make_inputs(height: int, width: int, classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic CAMs in [0, 1) and a boundary map: weak noise with ~15% strong boundary pixels."""
    generator = torch.Generator().manual_seed(height * 1000 + width)
    cams = torch.rand(classes, height, width, generator=generator)
    edge = torch.rand(height, width, generator=generator) * 0.3
    strong = torch.rand(height, width, generator=generator) < 0.15
    edge[strong] = 0.5 + 0.5 * torch.rand(int(strong.sum()), generator=generator)
    return cams.to(device), edge.to(device)


def _operation(path: str, beta: float, exp_times: int, radius: int) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    from fastwsss.kernels.random_walk import random_walk, random_walk_reference_dense

    if path == "dense":
        return lambda cams, edge: random_walk_reference_dense(
            cams, edge, beta, exp_times, radius, max_pixels=cams.shape[-2] * cams.shape[-1]
        )
    return lambda cams, edge: random_walk(cams, edge, beta, exp_times, radius)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """The child process: measure one (grid, classes, path) case."""
    device = torch.device(case["device"])
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    height, width = case["grid"]
    beta, exp_times, radius = case["beta"], case["exp_times"], case["radius"]
    op = _operation(case["path"], beta, exp_times, radius)
    # Lazy library set-up (thread pools, BLAS buffers, CUDA context) must not count as the op's memory.
    op(*make_inputs(6, 7, case["classes"], device))
    synchronize(device)
    cams, edge = make_inputs(height, width, case["classes"], device)

    begin = time.perf_counter()
    out, peak, memory_method = measure_peak(lambda: op(cams, edge), device)
    synchronize(device)
    first_ms = (time.perf_counter() - begin) * 1e3

    budget_ms = case["budget_s"] * 1e3
    repeats = min(case["repeats"], math.floor(budget_ms / max(first_ms, 1e-3)))
    if repeats >= 1:
        timing = time_calls(lambda: op(cams, edge), device, repeats)
    else:
        timing = summarize([first_ms])
    result = {
        **case,
        "status": "ok",
        "pixels": height * width,
        **timing_fields(timing),
        "first_call_ms": first_ms,
        "first_call_only": repeats < 1,
        "peak_bytes": int(peak),
        "memory_method": memory_method,
        "torch_threads": torch.get_num_threads(),
    }
    if case["path"] == "dense":
        sparse = _operation("sparse", beta, exp_times, radius)(cams, edge)
        diff = (sparse.double() - out.double()).abs().max().item()
        result["max_abs_diff"] = diff
        result["max_rel_diff"] = diff / max(out.abs().max().item(), 1e-30)
    return result


def parse_grid(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda[:i]; default: cuda when present")
    parser.add_argument("--grids", default="32x32,64x64,94x125", help="comma-separated HxW grids")
    parser.add_argument("--classes", default="1,3,21", help="comma-separated class counts")
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case (after the first)")
    parser.add_argument("--budget-s", type=float, default=30.0, help="time budget of the timed calls per case")
    parser.add_argument("--skip-dense-above", type=int, default=None, metavar="N", help="no dense run above N pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per case; default: torch's")
    parser.add_argument("--case-timeout-s", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/random_walk-<device>.json")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        grid = f"{r['grid'][0]}x{r['grid'][1]}"
        if r["status"] != "ok":
            rows.append([grid, str(r["classes"]), r["path"], r["status"], *["-"] * 6, r.get("error", "")[:40]])
            continue
        rows.append(
            [
                grid,
                str(r["classes"]),
                r["path"],
                fmt_or_dash(r["median_ms"], ".2f"),
                fmt_or_dash(r["p10_ms"], ".2f"),
                fmt_or_dash(r["p90_ms"], ".2f"),
                str(r["repeats"]) + ("*" if r["first_call_only"] else ""),
                fmt_or_dash(r["peak_bytes"] / MIB, ".1f"),
                fmt_or_dash(r.get("speedup"), ".1f"),
                fmt_or_dash(r.get("max_abs_diff"), ".1e"),
                fmt_or_dash(r.get("max_rel_diff"), ".1e"),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        emit_case_result(run_case(json.loads(args.case)))
        return 0
    device = pick_device(args.device)
    grids = [parse_grid(g) for g in args.grids.split(",")]
    classes = [int(k) for k in args.classes.split(",")]
    start_load = environment(device)["loadavg_1m"]
    results: list[dict[str, Any]] = []
    for height, width in grids:
        for k in classes:
            medians: dict[str, float] = {}
            for path in ("dense", "sparse"):
                case = {
                    "device": str(device),
                    "grid": [height, width],
                    "classes": k,
                    "path": path,
                    "beta": args.beta,
                    "exp_times": args.exp_times,
                    "radius": args.radius,
                    "repeats": args.repeats,
                    "budget_s": args.budget_s,
                    "threads": args.threads,
                }
                if path == "dense" and args.skip_dense_above is not None and height * width > args.skip_dense_above:
                    result = {**case, "status": "skipped", "error": f"--skip-dense-above {args.skip_dense_above}"}
                else:
                    result = run_isolated(MODULE, case, args.case_timeout_s)
                if result["status"] == "ok":
                    medians[path] = result["median_ms"]
                if path == "sparse" and len(medians) == 2:
                    result["speedup"] = medians["dense"] / medians["sparse"]
                results.append(result)
                print(
                    f"{height}x{width} K={k} {path}: {result['status']} {result.get('median_ms', '')}", file=sys.stderr
                )

    accepted = [r for r in results if r["path"] == "sparse" and tuple(r["grid"]) == ACCEPTANCE_GRID]
    acceptance = None
    if accepted:
        peaks = [r.get("peak_bytes") for r in accepted]
        passed = all(r["status"] == "ok" for r in accepted) and max(p or 0 for p in peaks) < ACCEPTANCE_BYTES
        acceptance = {
            "criterion": "sparse path peak memory < 300 MB on the 94x125 grid",
            "max_peak_bytes": max(p or 0 for p in peaks),
            "passed": passed,
        }
    env = environment(device)
    env["loadavg_1m_start"] = start_load
    env["loadavg_1m_end"] = env.pop("loadavg_1m")
    memory_methods = sorted({r["memory_method"] for r in results if "memory_method" in r})
    payload = {
        "benchmark": "random_walk",
        "device": device_label(device),
        "environment": env,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "case")},
        "timing_method": "CUDA events" if device.type == "cuda" else "time.perf_counter per call",
        "memory_method": memory_methods,
        "results": results,
        "acceptance": acceptance,
    }
    path = write_json(args.json or RESULTS_DIR / f"random_walk-{device_label(device)}.json", payload)
    print_table(
        f"random walk ({device_label(device)}, beta {args.beta}, exp_times {args.exp_times}, radius {args.radius})",
        ["grid", "K", "path", "median ms", "p10 ms", "p90 ms", "n", "peak MiB", "speedup", "max|Δ|", "rel Δ"],
        table_rows(results),
    )
    if acceptance is not None:
        verdict = "PASS" if acceptance["passed"] else "FAIL"
        print(f"acceptance ({acceptance['criterion']}): {verdict}, {acceptance['max_peak_bytes'] / MIB:.1f} MiB")
    print(f"n* = first call only (it exceeded --budget-s); results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
