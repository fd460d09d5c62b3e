"""The kernel preference table (kernels/preference.json) from GPU runs of the kernel benchmark.

    python -m bench.preference OUT/kernels.json OUT/walk.json --json OUT/preference.json

Per op and dtype, the backends (reference = the eager rows, triton, cuda) ordered by the geometric mean of
their median times over the cases where every one of them ran (the backends of the cases with the most rows); launch variants, torch.compile and the dense
walk are not backends of the dispatcher and are left out. Files that are missing are named and skipped (a
phase may not have run). CPU results are refused unless --allow-cpu (the CPU check of bench/gpu.sh): the
dispatcher only consults the table for CUDA tensors. Commit the written file as kernels/preference.json, or
point FASTWSSS_KERNEL_TABLE at it (kernels/dispatch.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BACKEND_OF_ROW = {"eager": "reference", "triton": "triton", "cuda": "cuda"}


def rank(payloads: list[dict[str, Any]]) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, int]]]:
    """({op: {dtype: backends fastest first}}, {op: {dtype: cases compared}}) from benchmark payloads."""
    times: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)  # (op, dtype, case) -> backend -> ms
    for payload in payloads:
        for row in payload.get("rows", []):
            backend = BACKEND_OF_ROW.get(row.get("backend", ""))
            if backend is not None and row.get("status") == "ok" and row.get("dtype"):
                times[(row["op"], row["dtype"], row["case"])][backend] = row["median_ms"]
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for (op, dtype, _), by_backend in times.items():
        groups[(op, dtype)].append(by_backend)
    table: dict[str, dict[str, list[str]]] = defaultdict(dict)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for (op, dtype), cases in sorted(groups.items()):
        widest = max(len(c) for c in cases)
        compared = [c for c in cases if len(c) == widest]
        common = set.intersection(*(set(c) for c in compared))
        compared = [c for c in cases if common <= set(c)]
        if len(common) < 2:
            continue
        score = {b: sum(math.log(c[b]) for c in compared) / len(compared) for b in common}
        table[op][dtype] = sorted(common, key=lambda b: score[b])
        counts[op][dtype] = len(compared)
    return dict(table), dict(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="JSON files of bench.kernels")
    parser.add_argument("--json", type=Path, required=True, help="where to write the table")
    parser.add_argument("--allow-cpu", action="store_true", help="accept CPU results (a check, not a measurement)")
    args = parser.parse_args(argv)
    payloads = []
    for path in args.inputs:
        if not path.is_file():
            print(f"{path}: not found, skipped")
            continue
        payload = json.loads(path.read_text())
        device = payload.get("environment", {}).get("device", "cpu")
        if device == "cpu" and not args.allow_cpu:
            print(f"{path}: CPU results, skipped (the table orders GPU backends; --allow-cpu to accept)")
            continue
        payloads.append(payload)
    table, counts = rank(payloads)
    devices = sorted({p.get("environment", {}).get("gpu") or p.get("environment", {}).get("device") for p in payloads})
    out = {
        "source": "bench.preference: geometric mean of the median times of bench.kernels over the cases where "
        f"every listed backend ran ({', '.join(str(p) for p in args.inputs)})",
        "device": ", ".join(str(d) for d in devices) or None,
        "cases_compared": counts,
        "ops": table,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    for op, by_dtype in table.items():
        for dtype, order in by_dtype.items():
            print(f"{op:>22} {dtype:>9}: {' > '.join(order)}  ({counts[op][dtype]} cases)")
    print(f"preference table: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
