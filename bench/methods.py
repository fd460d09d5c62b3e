"""The confounding benchmark: cam, c2am and conta on the synthetic confounded scenes, several seeds.

    python -m bench.methods train --out bench/runs/methods          # phase 1: train every run (resumable)
    python -m bench.methods score --out bench/runs/methods          # phase 2: score, write JSON, print table

Settings (stated in the JSON): the `synthetic` preset at a reduced scale (BENCH_SCALE in bench/methods_setup.py) so that three
seeds of all three methods fit in about an hour on 2 CPU cores (two seeds side by side, one thread each), confounding strength context_prob 0.8,
cooccur_prob 0.5, part_context_prob 0.8 (the preset's defaults). The `cam` baseline of a seed is round 0
of that seed's CONTA run: the same stages, config and seed (CONTA round 0 is IRNet unchanged), so it is
not trained twice; for the same reason the C2AM run starts from a copy of that round's classifier (C2AM
fine-tunes the baseline classifier, whose settings it shares on this preset). Per run and round it reports CAM-seed, pseudo-mask and DeepLab (val, debiased) mIoU
and the context leakage of the CAMs (fastwsss.algorithms.context_metrics), then mean and spread over the seeds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.common import RESULTS_DIR, write_json
from bench.methods_score import score
from bench.methods_setup import ABLATIONS, METHODS, bench_config, run_dir
from fastwsss.config import apply_options, validate
from fastwsss.engine.rundir import CLS, RunDir


def train(out: Path, seeds: list[int], rounds: int, methods: tuple[str, ...] = METHODS) -> None:
    from fastwsss.engine.pipeline import run_pipeline

    for seed in seeds:
        for method in methods:
            path = run_dir(out, method, seed)
            config = bench_config(method, seed, rounds)
            baseline = RunDir(run_dir(out, "conta", seed)).round_view(0)
            if method == "c2am" and not path.exists() and baseline.done_file(CLS).is_file():
                shutil.copytree(baseline.stage_path(CLS), RunDir(path).stage_path(CLS))
                RunDir(path).save_config(config)
            print(f"== {method} seed {seed} -> {path}", flush=True)
            run_pipeline(config, out=path, resume=RunDir(path).config_path.is_file())


def ablate(out: Path, seeds: list[int], rounds: int, names: list[str]) -> None:
    from fastwsss.engine.pipeline import run_pipeline

    for seed in seeds:
        for name in names:
            method, copied, changes, stages = ABLATIONS[name]
            source, path = run_dir(out, method, seed), out / f"{name}-seed{seed}"
            if not (source / copied).is_dir():
                print(f"== {name} seed {seed}: {source / copied} is missing; run the train phase first", flush=True)
                continue
            config = validate(apply_options(bench_config(method, seed, rounds), changes))
            if not (path / "config.json").is_file():
                path.mkdir(parents=True)
                shutil.copytree(source / copied, path / copied)
                RunDir(path).save_config(config)
            print(f"== {name} seed {seed} -> {path}", flush=True)
            run_pipeline(config, out=path, stages=stages, resume=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("train", "ablate", "score"))
    parser.add_argument("--ablations", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="train phase: the runs to train per seed (conta first: c2am reuses its round-0 classifier)")
    parser.add_argument("--out", type=Path, default=Path("bench/runs/methods"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2, help="CONTA rounds after round 0")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "methods-cpu.json")
    args = parser.parse_args(argv)
    if args.phase == "train":
        train(args.out, args.seeds, args.rounds, tuple(args.methods))
        return 0
    if args.phase == "ablate":
        ablate(args.out, args.seeds, args.rounds, args.ablations)
        return 0
    payload = score(args.out, args.seeds, args.rounds)
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
