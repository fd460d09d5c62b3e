"""End-to-end benchmark of the pseudo stage: images/s with the fused random walk against IRNet's dense walk.

    python -m bench.pseudo                                    # CUDA when present; 500x375 images, resnet50 IRN
    python -m bench.pseudo --backends reference,triton,cuda   # also each walk backend forced (FASTWSSS_KERNELS)
    python -m bench.pseudo --device cpu --images 2 --size 160x120 --backbone resnet18_quarter --dense-images 1 --threads 1

Per image: `fastwsss.stages.pseudo.propagate_image`, the stage's work as it runs it (IRN boundary map with
flip, random walk, x4 upsample, argmax; host copies included). Paths: "fused" is the stage as is (the public
`random_walk`: cuda > triton > reference on CUDA tensors, the reference on the CPU; the JSON names the backend);
"batched N" the stage's GPU path (`propagate_images`: N images per `random_walk_batch` call, one padded
batch; per-image times are the group's time divided by N); "fused:B" the same as "fused" with FASTWSSS_KERNELS=B
set around its calls; "dense" the stage with its `random_walk`
swapped for IRNet's dense T^(2^exp_times) (`random_walk_reference_dense`, size guard lifted: ~0.5 GiB per n x n
matrix on the 94 x 125 grid of a 500 x 375 image). Inputs: deterministic structured images, smooth-blob CAMs in
[0, 1] on the IRN's stride-4 grid, 1..3 present classes cycling (--classes). The IRN has seeded random weights:
timings represent the architecture, not a trained boundary map.

Each path: the first image once untimed (warm-up; not for the dense path on the CPU, which compiles nothing and
would only double its minutes), then each image timed with time.perf_counter between device
synchronizations (images/s = images / their total seconds; per-image median, p10, p90), the walk alone timed
inside the stage (CUDA events around the call, perf_counter on the CPU) and the peak GPU memory
(torch.cuda.max_memory_allocated, model weights included). The dense path runs at most --dense-images images;
no path starts an image after --budget-s seconds of timed work. Agreement: % of pseudo-mask pixels equal to the
dense path's on the images both ran (the walks agree up to float rounding).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastwsss.stages.pseudo as pseudo_stage
from bench.common import (
    RESULTS_DIR,
    device_label,
    environment,
    fmt_or_dash,
    pick_device,
    print_table,
    summarize,
    synchronize,
    timing_fields,
    write_json,
)
from fastwsss.config import PseudoConfig
from fastwsss.kernels.dispatch import BACKENDS, ENV_VAR, kernel_backend
from fastwsss.kernels.random_walk import OP, random_walk, random_walk_reference_dense
from fastwsss.models.irn import BoundaryNet, grid_size

MIB = 2**20
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image, cam4, keys)


def make_inputs(count: int, height: int, width: int, classes: list[int]) -> list[Sample]:
    """Deterministic (image, cam4, keys): gradient images with discs and noise, CAMs of 2 Gaussian blobs per class."""
    rng = np.random.default_rng(height * 1000 + width)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    h4, w4 = grid_size(height, width)
    gy, gx = np.meshgrid(np.linspace(0, 1, h4), np.linspace(0, 1, w4), indexing="ij")
    samples = []
    for index in range(count):
        image = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * (xx + yy) + index)], axis=-1) * 200.0
        for _ in range(4):
            cy, cx, r = rng.random(3) * [1, 1, 0.3]
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(0, 255, 3)
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        k = classes[index % len(classes)]
        keys = np.sort(rng.choice(20, size=k, replace=False)).astype(np.int64)
        cam4 = np.zeros((k, h4, w4), dtype=np.float32)
        for c in range(k):
            for _ in range(2):
                cy, cx, sigma = rng.random(3) * [1, 1, 0.2] + [0, 0, 0.05]
                cam4[c] += rng.uniform(0.4, 1.0) * np.exp(-((gy - cy) ** 2 + (gx - cx) ** 2) / (2 * sigma**2))
        cam4 /= cam4.max(axis=(1, 2), keepdims=True)
        samples.append((image, cam4, keys))
    return samples


def dense_walk(cams: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: int, radius: int) -> torch.Tensor:
    """IRNet's dense walk with the stage's call signature (the oracle's size guard lifted on purpose)."""
    n = cams.shape[-2] * cams.shape[-1]
    return random_walk_reference_dense(cams, edge, beta, exp_times, radius, max_pixels=n)


class WalkTimer:
    """Wraps a walk function; `collect()` returns the milliseconds spent in it since the last collect."""

    def __init__(self, walk: Callable[..., torch.Tensor], device: torch.device) -> None:
        self.walk, self.cuda, self.pending = walk, device.type == "cuda", []

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.walk(*args, **kwargs)
            end.record()
            self.pending.append((start, end))
            return out
        begin = time.perf_counter()
        out = self.walk(*args, **kwargs)
        self.pending.append((time.perf_counter() - begin) * 1e3)
        return out

    def collect(self) -> float:
        total = sum(float(s.elapsed_time(e)) for s, e in self.pending) if self.cuda else sum(self.pending)
        self.pending = []
        return total


def run_path(
    walk: Callable[..., torch.Tensor], forced: str | None, model: torch.nn.Module, samples: list[Sample],
    cfg: PseudoConfig, device: torch.device, budget_s: float, batch: int = 1,
) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
    """Time the stage's work over `samples` with its walk replaced by a timed `walk`: `propagate_image` per
    image, or with `batch` > 1 `propagate_images` per group of `batch` images (the stage's GPU path, whose walk
    is `random_walk_batch`; `walk` is then ignored and the batched walk is timed)."""
    name = "random_walk_batch" if batch > 1 else "random_walk"
    timer = WalkTimer(getattr(pseudo_stage, name) if batch > 1 else walk, device)
    saved_walk, saved_env = getattr(pseudo_stage, name), os.environ.get(ENV_VAR)
    setattr(pseudo_stage, name, timer)
    if forced is not None:
        os.environ[ENV_VAR] = forced
    groups = [samples[i : i + batch] for i in range(0, len(samples), batch)]
    try:
        backend = kernel_backend(torch.empty(1, device=device), OP) if walk is random_walk else "dense"
        if walk is random_walk or device.type == "cuda":
            pseudo_stage.propagate_images(model, groups[0], cfg, device)
            synchronize(device)
            timer.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        stage_ms, walk_ms, masks = [], [], []
        for group in groups:
            if sum(stage_ms) > budget_s * 1e3:
                break
            synchronize(device)
            begin = time.perf_counter()
            masks += pseudo_stage.propagate_images(model, group, cfg, device)
            synchronize(device)
            elapsed, walked = (time.perf_counter() - begin) * 1e3, timer.collect()
            stage_ms += [elapsed / len(group)] * len(group)
            walk_ms += [walked / len(group)] * len(group)
    finally:
        setattr(pseudo_stage, name, saved_walk)
        if saved_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved_env
    row: dict[str, Any] = {
        "backend": backend, "status": "ok", "batch": batch, "images": len(stage_ms), "total_s": sum(stage_ms) / 1e3,
        "images_per_s": len(stage_ms) * 1e3 / sum(stage_ms),
        **{f"stage_{k}": v for k, v in timing_fields(summarize(stage_ms)).items() if k != "repeats"},
        **{f"walk_{k}": v for k, v in timing_fields(summarize(walk_ms)).items() if k != "repeats"},
        "walk_share_pct": 100.0 * sum(walk_ms) / sum(stage_ms),
    }  # fmt: skip
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        row.update(peak_mib=peak / MIB, peak_above_model_mib=(peak - base) / MIB)
    return row, masks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda[:i]; default: cuda when present")
    parser.add_argument("--images", type=int, default=8, help="images per fused path (plus one warm-up)")
    parser.add_argument("--size", default="500x375", help="image WxH (VOC's typical 500x375)")
    parser.add_argument("--backbone", default="resnet50", help="IRN backbone (the voc preset's: resnet50)")
    parser.add_argument("--classes", default="1,2,3", help="present classes per image, cycling")
    parser.add_argument("--backends", default="", help=f"also time these walk backends forced: among {BACKENDS}")
    parser.add_argument("--batch", type=int, default=16, help="images per walk of the 'batched' path (the GPU stage's)")
    parser.add_argument("--dense-images", type=int, default=4, help="images of the dense path at most")
    parser.add_argument("--no-dense", action="store_true", help="skip IRNet's dense walk")
    parser.add_argument("--budget-s", type=float, default=120.0, help="per path: no image starts after this")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/pseudo-<device>.json")
    args = parser.parse_args(argv)
    unknown = [b for b in args.backends.split(",") if b and b not in BACKENDS]
    if unknown or args.images < 1 or args.dense_images < 1 or args.batch < 2:
        parser.error(f"--backends among {BACKENDS} (got {unknown}); --images and --dense-images >= 1; --batch >= 2")
    return args


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append([r["path"], r.get("backend", "-"), r["status"], *["-"] * 9, r.get("error", "")[:50]])
            continue
        cells = [("images_per_s", ".2f"), ("stage_median_ms", ".1f"), ("stage_p10_ms", ".1f"), ("stage_p90_ms", ".1f"),
                 ("walk_median_ms", ".1f"), ("walk_share_pct", ".0f"), ("peak_mib", ".0f"),
                 ("agreement_vs_dense_pct", ".3f"), ("speedup_vs_dense", ".1f")]  # fmt: skip
        rows.append([r["path"], r["backend"], str(r["images"]), *[fmt_or_dash(r.get(k), s) for k, s in cells], ""])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    start_load = environment(device)["loadavg_1m"]
    width, _, height = args.size.lower().partition("x")
    height, width = int(height), int(width)
    samples = make_inputs(args.images, height, width, [int(k) for k in args.classes.split(",")])
    cfg = PseudoConfig()
    torch.manual_seed(0)
    model = BoundaryNet.from_imagenet(args.backbone, None).to(device).eval()
    paths: list[tuple[str, Callable[..., torch.Tensor], str | None, int, int]] = [
        ("fused", random_walk, None, args.images, 1), (f"batched {args.batch}", random_walk, None, args.images, args.batch)]
    paths += [(f"fused:{b}", random_walk, b, args.images, 1) for b in args.backends.split(",") if b]
    if not args.no_dense:
        paths.append(("dense", dense_walk, None, min(args.dense_images, args.images), 1))
    results: list[dict[str, Any]] = []
    masks: dict[str, list[np.ndarray]] = {}
    for name, walk, forced, count, batch in paths:
        if forced == "triton" and device.type != "cuda":
            results.append({"path": name, "status": "skipped", "error": "triton on the CPU is its interpreter"})
            continue
        try:
            row, masks[name] = run_path(walk, forced, model, samples[:count], cfg, device, args.budget_s, batch)
            results.append({"path": name, **row})
        except Exception as exc:  # noqa: BLE001  (a backend that cannot run here must not lose the others' rows)
            results.append({"path": name, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(f"{name}: {results[-1]['status']} {results[-1].get('images_per_s', '')}", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dense = next((r for r in results if r["path"] == "dense" and r["status"] == "ok"), None)
    for r in results:
        if dense is not None and r is not dense and r["status"] == "ok":
            pairs = list(zip(masks[r["path"]], masks["dense"], strict=False))
            r["agreement_vs_dense_pct"] = 100.0 * float(np.mean([np.mean(a == b) for a, b in pairs]))
            r["agreement_images"] = len(pairs)
            r["speedup_vs_dense"] = r["images_per_s"] / dense["images_per_s"]
            r["walk_speedup_vs_dense"] = dense["walk_median_ms"] / r["walk_median_ms"]
    env = environment(device)
    env["loadavg_1m_start"] = start_load
    env["loadavg_1m_end"] = env.pop("loadavg_1m")
    env["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    h4, w4 = grid_size(height, width)
    payload = {
        "benchmark": "pseudo",
        "device": device_label(device),
        "environment": env,
        "settings": {**{k: v for k, v in vars(args).items() if k != "json"}, "pseudo": vars(cfg), "grid": [h4, w4]},
        "model": {"name": "BoundaryNet", "backbone": args.backbone, "weights": "random (torch.manual_seed(0))"},
        "timing_method": "time.perf_counter per image between device synchronizations; walk: "
        + ("CUDA events around the call" if device.type == "cuda" else "time.perf_counter around the call"),
        "results": results,
        "speedup_fused_vs_dense": results[0].get("speedup_vs_dense"),
    }
    path = write_json(args.json or RESULTS_DIR / f"pseudo-{device_label(device)}.json", payload)
    print_table(
        f"pseudo stage ({device_label(device)}, {width}x{height} -> grid {h4}x{w4}, {args.backbone}, random IRN)",
        ["path", "backend", "n", "img/s", "median ms", "p10 ms", "p90 ms", "walk ms", "walk %", "peak MiB",
         "agree %", "speedup", "error"],
        table_rows(results),
    )  # fmt: skip
    print(f"walk ms: median per image of the walk inside the stage; agree %: vs dense; results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
