"""The confounding benchmark: cam, c2am and conta on the synthetic confounded scenes, several seeds.

    python -m bench.methods train --out bench/runs/methods          # phase 1: train every run (resumable)
    python -m bench.methods score --out bench/runs/methods          # phase 2: score, write JSON, print table

Settings (stated in the JSON): the `synthetic` preset at a reduced scale (BENCH_SCALE below) so that three
seeds of all three methods fit in about an hour on 2 CPU cores, confounding strength context_prob 0.8,
cooccur_prob 0.5, part_context_prob 0.8 (the preset's defaults). The `cam` baseline of a seed is round 0
of that seed's CONTA run: the same stages, config and seed (CONTA round 0 is IRNet unchanged), so it is
not trained twice. Per run and round it reports CAM-seed, pseudo-mask and DeepLab (val, debiased) mIoU
and the context leakage of the CAMs (fastwsss.context_metrics), then mean and spread over the seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, write_json
from fastwsss.cli import apply_options
from fastwsss.config import RunConfig, get_preset, validate

BENCH_SCALE: dict[str, Any] = {
    "data.synth.num_train": 600,
    "data.synth.num_val": 200,
    "data.synth.num_debiased": 200,
    "seg.epochs": 6,
}
METHODS = ("conta", "c2am")


def bench_config(method: str, seed: int, rounds: int) -> RunConfig:
    options = {**BENCH_SCALE, "seed": seed, "conta.rounds": rounds, "device": "cpu"}
    return validate(apply_options(get_preset("synthetic", method), options))


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}-seed{seed}"


def train(out: Path, seeds: list[int], rounds: int) -> None:
    from fastwsss.pipeline import run_pipeline

    for seed in seeds:
        for method in METHODS:
            path = run_dir(out, method, seed)
            print(f"== {method} seed {seed} -> {path}", flush=True)
            run_pipeline(bench_config(method, seed, rounds), out=path, resume=(path / "config.json").is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("train", "score"))
    parser.add_argument("--out", type=Path, default=Path("bench/runs/methods"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="CONTA rounds after round 0")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "methods-cpu.json")
    args = parser.parse_args(argv)
    if args.phase == "train":
        train(args.out, args.seeds, args.rounds)
        return 0
    from bench.methods_score import score

    payload = score(args.out, args.seeds, args.rounds)
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
