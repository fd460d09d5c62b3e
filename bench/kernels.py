"""The kernel micro-benchmarks (fastwsss.benchmarking.kernel_bench), writing bench/results/kernels-<device>.json.

    python -m bench.kernels [--device cuda] [--repeats 30] [--only cam_norm] [--no-compile] [--dense] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import RESULTS_DIR, device_label, pick_device
from fastwsss.benchmarking.kernel_bench import run_kernel_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", default=None, help="comma-separated ops")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--dense", action="store_true", help="also IRNet's dense walk")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check that every path runs)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    path = Path(args.json) if args.json else RESULTS_DIR / f"kernels-{device_label(device)}.json"
    only = args.only.split(",") if args.only else None
    run_kernel_bench(device, args.repeats, only, not args.no_compile, args.dense, path, args.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
