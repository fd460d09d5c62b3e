"""Helpers of the scripts under bench/: the shared timing and table helpers (fastwsss.benchmarking.benchtools) plus
isolated cases.

A benchmark module runs each case in a fresh Python process (`run_isolated`): the peak-memory reading of
one case cannot inherit allocator caches or high-water marks from another, and a case that runs out of
memory fails alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastwsss.benchmarking.benchtools import (  # noqa: F401  (re-exported for the bench scripts)
    Timing,
    device_label,
    environment,
    measure_peak,
    percentile,
    print_table,
    summarize,
    synchronize,
    time_calls,
    time_once,
    timing_fields,
    write_json,
)
from fastwsss.engine.device import resolve_device as pick_device  # noqa: F401  (re-exported for the bench scripts)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def run_isolated(module: str, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run `python -m module --case JSON` in a fresh process; its last stdout line is the JSON result."""
    command = [sys.executable, "-m", module, "--case", json.dumps(case)]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**case, "status": "error", "error": f"timed out after {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {**case, "status": "error", "error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def emit_case_result(result: dict[str, Any]) -> None:
    """The child's side of `run_isolated`: the result as the last stdout line."""
    print(json.dumps(result), flush=True)


def fmt_or_dash(value: Any, spec: str) -> str:
    """`value` formatted with `spec`, or "-" when it is missing (a table cell)."""
    return "-" if value is None else format(value, spec)


def cpu_model() -> str:
    """The CPU's model name and the vector/matrix extensions int8 and bf16 kernels use (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    cores = os.cpu_count()
    return f"{name}, {cores} logical CPUs, " + " ".join(flag for flag in wanted if flag in flags)
