"""Benchmark helpers shared by `fastwsss bench` and the scripts under bench/: device labels, timing, peak
memory, JSON and tables.

Timing: CUDA events around each call on GPU, `time.perf_counter` on CPU; the median and the 10th / 90th
percentiles are reported, never a single run. `time_rotated` is the kernel benchmarks' GPU method (see
docs/gpu.md): the L2 cache flushed before every repetition, several input sets rotated, and short calls
batched between one pair of events so that a microsecond op measures the kernel, not the launch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


def device_label(device: torch.device) -> str:
    """A file-name-safe label: "cpu", or the GPU's name (e.g. "nvidia-h100-80gb-hbm3")."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo; else platform.processor()): timings differ between
    machines of one kind, so every result names its CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: versions, threads and the device."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device_label(device),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 100]) without numpy's API churn."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(samples_ms: Sequence[float]) -> Timing:
    return Timing(percentile(samples_ms, 50), percentile(samples_ms, 10), percentile(samples_ms, 90), len(samples_ms))


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call: CUDA events on GPU (device time), perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int) -> Timing:
    return summarize([time_once(fn, device) for _ in range(max(1, repeats))])


def l2_bytes(device: torch.device) -> int:
    """The GPU's L2 cache size (0 on the CPU, or where torch does not report it)."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))


@dataclass
class RotatedTiming(Timing):
    inner_calls: int
    input_sets: int
    l2_flush_bytes: int


def time_rotated(
    calls: Sequence[Callable[[], Any]], device: torch.device, repeats: int, min_batch_ms: float = 1.0,
    max_inner: int = 200,
) -> RotatedTiming:  # fmt: skip
    """Per-call milliseconds of `calls` (one per input set, used in rotation), after one warm-up call of each.

    CUDA: a buffer of twice the L2 size is overwritten before every repetition (outside the timed region), so
    each repetition starts with cold caches; calls shorter than `min_batch_ms` run `inner` times between one
    pair of events (rotating through the input sets, whose total size should exceed the L2) and the time is
    divided by `inner`; no synchronisation inside the repetitions, one at the end. CPU: perf_counter around
    each call, no flush, no batching.
    """
    if not calls:
        raise ValueError("time_rotated needs at least one call")
    for call in calls:
        call()
    if device.type != "cuda":
        samples = []
        for r in range(max(1, repeats)):
            begin = time.perf_counter()
            calls[r % len(calls)]()
            samples.append((time.perf_counter() - begin) * 1e3)
        t = summarize(samples)
        return RotatedTiming(t.median_ms, t.p10_ms, t.p90_ms, t.repeats, 1, len(calls), 0)
    flush = torch.empty(max(2 * l2_bytes(device), 2**20) // 4, dtype=torch.float32, device=device)
    estimate = time_once(calls[0], device)
    inner = max(1, min(max_inner, math.ceil(min_batch_ms / max(estimate, 1e-4))))
    events = []
    turn = 0
    for _ in range(max(1, repeats)):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            calls[turn % len(calls)]()
            turn += 1
        end.record()
        events.append((start, end))
    synchronize(device)
    t = summarize([float(s.elapsed_time(e)) / inner for s, e in events])
    return RotatedTiming(t.median_ms, t.p10_ms, t.p90_ms, t.repeats, inner, len(calls), flush.numel() * 4)


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field} not in /proc/self/status")
    return int(match.group(1))


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        _read_status_kib("VmHWM")
    except OSError:
        return False
    return True


def measure_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int, str]:
    """Run `fn` once; return (its result, peak extra bytes it needed, the method used).

    CUDA: torch.cuda.max_memory_allocated above what was allocated before the call. CPU: the process's
    resident-set high-water mark above the resident set before the call (the mark is reset first via
    /proc/self/clear_refs; elsewhere a ru_maxrss delta, only meaningful in a fresh process).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before, "torch.cuda.max_memory_allocated delta"
    if _reset_rss_peak():
        before = _read_status_kib("VmRSS")
        result = fn()
        return result, (_read_status_kib("VmHWM") - before) * 1024, "RSS high-water mark delta (/proc VmHWM, reset)"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return result, (after - before) * scale, "ru_maxrss delta in a fresh process"


def timing_fields(timing: Timing) -> dict[str, Any]:
    return asdict(timing)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on stdout (plain text when rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for row in [columns, *rows]:
            print("  ".join(f"{cell:>12}" for cell in row))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
