"""Where a training step of the default job spends its time, and what the two CPU speed-ups buy.

    python -m bench.training_step                 # the synthetic preset's shapes, this machine's threads
    python -m bench.training_step --repeats 10 --device cpu

Rows (median / p10 / p90 of --repeats timed calls after one untimed warm-up, milliseconds):

- "path max fwd+bwd": the IRN loss's path-max affinities at radius 10 on a batch of 32 stride-4 grids of
  24 x 24 (96-pixel crops), forward and backward of a weighted sum. `path_max_affinity` (one scatter in the
  backward) against `path_max_affinity_reference` (autograd through the running maximum).
- "classifier step": forward, multi-label loss, backward and SGD step of the preset's classifier
  (`resnet18_half`, output stride 8) on a batch of 32 crops of 96 pixels, contiguous weights against
  channels-last weights (what `fastwsss.engine.device.place_model` does on the CPU).
- "CAM forward 192 px": the classifier's CAMs of an image and its flip at the 2.0 scale of a 96-pixel image.
- "DeepLab step" / "DeepLab prediction": DeepLab-v2 (`resnet18_half`) training step on 16 crops of 96 px, and
  one 96-pixel image's logits.

Inputs are random tensors and the networks have seeded random weights: the timings represent the shapes, not
trained models. Writes bench/results/training_step-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import (
    RESULTS_DIR,
    device_label,
    environment,
    pick_device,
    print_table,
    summarize,
    time_once,
    timing_fields,
    write_json,
)
from fastwsss.algorithms.affinity import path_max_affinity, path_max_affinity_reference
from fastwsss.models.cam_net import CAMNet
from fastwsss.models.deeplab import build_seg_model

CLASSES = 10


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, Any]:
    fn()
    return timing_fields(summarize([time_once(fn, device) for _ in range(repeats)]))


def path_max_case(device: torch.device, fast: bool) -> Callable[[], None]:
    op = path_max_affinity if fast else path_max_affinity_reference
    generator = torch.Generator().manual_seed(0)
    edge = torch.rand(32, 1, 24, 24, generator=generator).to(device).requires_grad_(True)
    weights = torch.randn(32, 152, 24, 24, generator=generator).to(device)

    def step() -> None:
        edge.grad = None
        (op(edge, 10) * weights).sum().backward()

    return step


def laid_out(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def sgd_step(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One timed call: the loss, its backward and an SGD-with-momentum step on `model`."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def classifier_step(device: torch.device, channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = laid_out(CAMNet("resnet18_half", CLASSES, output_stride=8, freeze_bn=False, detach_early=False),
                     device, channels_last)  # fmt: skip
    images = torch.randn(32, 3, 96, 96, device=device)
    labels = (torch.rand(32, CLASSES, device=device) > 0.7).float()
    return sgd_step(model, lambda: F.multilabel_soft_margin_loss(model(images), labels))


def cam_forward(device: torch.device, channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = laid_out(CAMNet("resnet18_half", CLASSES, output_stride=8), device, channels_last).eval()
    images = torch.randn(2, 3, 192, 192, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model.cam(images)

    return forward


def deeplab_step(device: torch.device, channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = laid_out(build_seg_model("deeplabv2", "resnet18_half", CLASSES + 1), device, channels_last)
    images = torch.randn(16, 3, 96, 96, device=device)
    masks = torch.randint(0, CLASSES + 1, (16, 96, 96), device=device)

    def loss() -> torch.Tensor:
        logits = F.interpolate(model(images), size=(96, 96), mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, masks)

    return sgd_step(model, loss)


def deeplab_prediction(device: torch.device, channels_last: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = laid_out(build_seg_model("deeplabv2", "resnet18_half", CLASSES + 1), device, channels_last).eval()
    image = torch.randn(1, 3, 96, 96, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(image)

    return forward


CASES: list[tuple[str, str, str, Callable[[torch.device, bool], Callable[[], None]]]] = [
    ("path max fwd+bwd", "reference (autograd)", "one-scatter backward", path_max_case),
    ("classifier step", "contiguous", "channels-last", classifier_step),
    ("CAM forward 192 px", "contiguous", "channels-last", cam_forward),
    ("DeepLab step", "contiguous", "channels-last", deeplab_step),
    ("DeepLab prediction", "contiguous", "channels-last", deeplab_prediction),
]
"""(row, what "before" is, what "after" is, builder(device, after) -> one timed call)."""
NAMES = [case[0] for case in CASES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu: what the speed-ups target)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per row (default 7)")
    parser.add_argument("--cases", default="", help=f"comma-separated rows to run (default all: {', '.join(NAMES)})")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/training_step-<device>.json")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.cases.split(",") if name.strip()] or NAMES
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; valid: {', '.join(NAMES)}")
    device = pick_device(args.device)
    rows, table = [], []
    for name, before_label, after_label, build in CASES:
        if name not in chosen:
            continue
        slow = timed(build(device, False), device, args.repeats)
        fast = timed(build(device, True), device, args.repeats)
        speedup = slow["median_ms"] / fast["median_ms"]
        rows.append({"case": name, "before": before_label, "after": after_label,
                     "before_ms": slow, "after_ms": fast, "speedup": round(speedup, 2)})  # fmt: skip
        table.append([name, f"{before_label} {slow['median_ms']:.1f}", f"{after_label} {fast['median_ms']:.1f}",
                      f"{speedup:.2f}x"])  # fmt: skip
    path = write_json(args.json or RESULTS_DIR / f"training_step-{device_label(device)}.json",
                      {"environment": environment(device), "repeats": args.repeats, "rows": rows})  # fmt: skip
    print_table(f"training-step pieces, ms (median of {args.repeats})", ["case", "before", "after", "speed-up"], table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
