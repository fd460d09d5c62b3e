"""Serving benchmark: latency, throughput and parity of every backend of export/runtime.py available here.

    python -m bench.serving                                # random-weight DeepLab-v2 resnet18_half, 11 classes
    python -m bench.serving --arch deeplabv2:resnet101:21  # random-weight VOC-size model (the voc preset's)
    python -m bench.serving --model runs/voc --device cuda --json /tmp/serving.json
    python -m bench.serving --model runs/voc/export/model.onnx

Each case times `Segmenter.segment` on a batch of 512 x 512 uint8 images (normalisation, host-device copies
and the argmax included: what a caller gets), after --warmup untimed calls, --repeats timed calls within
--budget-s seconds: median, p10 and p90 per batch, images/s from the median. Cases: torch eager (fp32;
fp16 on CUDA), torch with CUDA graphs (CUDA only; fp32 and fp16), optionally torch.compile (--compile),
onnxruntime (the provider it really uses; an fp16 graph only with CUDAExecutionProvider), and TensorRT
where it is installed (otherwise listed as skipped with the reason). Half precision is benchmarked only on
CUDA: CPU kernels for fp16 convolutions are emulated and would only measure that.

CPU timings: torch's OpenMP threads collapse when other work holds the cores (measured here on a busy
2-core machine: resnet18_half at 128 x 128 took 26 ms with 1 thread and 810 ms with 2); compare backends
with --threads 1 on a loaded machine, and check loadavg in the JSON.

Parity, next to each case: the largest absolute logit difference and the argmax agreement (% of pixels)
against torch eager fp32 on the same device, on a structured 512 x 512 image (batch 1). With --model
file.onnx there is no torch model: the reference is then onnxruntime fp32 on the CPU, and the JSON says so.
Without --model the weights are random (seeded), which the JSON says too: timings are representative of
the architecture, but random logits have near ties, so argmax agreement understates a trained model's.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    RESULTS_DIR,
    device_label,
    environment,
    fmt_or_dash,
    pick_device,
    print_table,
    summarize,
    time_calls,
    timing_fields,
    write_json,
)
from fastwsss.export.runtime import Segmenter

RANDOM_MODEL = ("deeplabv2", "resnet18_half", 11)


def make_images(size: int, count: int) -> np.ndarray:
    """Deterministic structured images: gradients, a few discs and noise (not uniform noise, whose
    predictions are all near ties)."""
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for index in range(count):
        image = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * (xx + yy) + index)], axis=-1) * 200.0
        for _ in range(4):
            cy, cx, r = rng.random(3) * [1, 1, 0.25]
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(0, 255, 3)
        out.append(np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def parse_arch(text: str) -> tuple[str, str, int]:
    """"deeplabv2:resnet101:21" -> ("deeplabv2", "resnet101", 21): the random-weight model to time."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 2:
        raise argparse.ArgumentTypeError(f"--arch wants MODEL:BACKBONE:LABELS, e.g. deeplabv2:resnet101:21; got {text!r}")
    return parts[0], parts[1], int(parts[2])


def load_model(
    model: Path | None, arch: tuple[str, str, int] = RANDOM_MODEL
) -> tuple[torch.nn.Module | None, list[str], dict[str, Any], Path | None]:
    """(torch model or None, foreground class names, model description, ONNX file given)."""
    from fastwsss.artifacts import final_seg_checkpoint
    from fastwsss.models.deeplab import build_seg_model, load_seg_model

    if model is None:
        torch.manual_seed(0)
        name, backbone, labels = arch
        net = build_seg_model(name, backbone, labels).eval()
        info = {
            "source": "random weights (no --model given)",
            "model": name,
            "backbone": backbone,
            "num_labels": labels,
            "note": "seeded random weights: timings represent the architecture; argmax agreement has near ties",
        }
        return net, [f"class{i}" for i in range(1, labels)], info, None
    if model.suffix.lower() == ".onnx":
        from fastwsss.export.onnx import read_onnx_metadata

        classes = list(read_onnx_metadata(model).get("classes", []))[1:]
        return None, classes, {"source": str(model), "note": "ONNX only: parity reference is onnxruntime CPU"}, model
    checkpoint = final_seg_checkpoint(model) if model.is_dir() else model
    net, meta = load_seg_model(checkpoint)
    info = {"source": str(checkpoint), **net.init_kwargs}
    return net, list(meta.get("class_names") or []), info, None


def export_onnx(net: torch.nn.Module, names: list[str], folder: Path, size: int, fp16: bool) -> Path:
    from fastwsss.export.onnx import build_metadata, export_seg_onnx

    path = folder / ("model_fp16.onnx" if fp16 else "model.onnx")
    return export_seg_onnx(copy.deepcopy(net), path, metadata=build_metadata(names), example_hw=(size, size), fp16=fp16)


def case_list(device: torch.device, has_torch: bool, use_compile: bool) -> list[dict[str, Any]]:
    """(backend, variant, precision) cases that run on `device`, plus skipped ones with the reason."""
    import onnxruntime as ort

    from fastwsss.export.tensorrt import tensorrt_unavailable_reason

    cuda = device.type == "cuda"
    cases: list[dict[str, Any]] = []
    if has_torch:
        cases.append({"backend": "torch", "variant": "eager", "precision": "fp32"})
        if cuda:
            cases += [
                {"backend": "torch", "variant": "eager", "precision": "fp16"},
                {"backend": "torch", "variant": "cuda_graphs", "precision": "fp32"},
                {"backend": "torch", "variant": "cuda_graphs", "precision": "fp16"},
            ]
            if use_compile:
                cases.append({"backend": "torch", "variant": "compile+cuda_graphs", "precision": "fp16"})
    ort_cuda = cuda and "CUDAExecutionProvider" in ort.get_available_providers()
    cases.append({"backend": "onnxruntime", "variant": "session", "precision": "fp32"})
    if ort_cuda and has_torch:
        cases.append({"backend": "onnxruntime", "variant": "session", "precision": "fp16"})
    why = tensorrt_unavailable_reason()
    cases.append({"backend": "tensorrt", "variant": "engine", "precision": "fp32", "status": "skipped",
                  "error": why or "this benchmark does not build engines; time one with `fastwsss export --trt`"})  # fmt: skip
    if not cuda:
        cases.append({"backend": "torch", "variant": "eager", "precision": "fp16", "status": "skipped",
                      "error": "fp16 is benchmarked on CUDA only"})  # fmt: skip
    return cases


def make_segmenter(
    case: dict[str, Any], net: torch.nn.Module | None, onnx: dict[str, Path], device: torch.device, threads: int | None
) -> Segmenter:
    from fastwsss.export.runtime_onnx import OnnxRuntimeSegmenter
    from fastwsss.export.runtime_torch import TorchSegmenter

    if case["backend"] == "torch":
        return TorchSegmenter(
            copy.deepcopy(net), Path("bench"), {}, device, half=case["precision"] == "fp16",
            cuda_graphs="cuda_graphs" in case["variant"], compile="compile" in case["variant"],
        )  # fmt: skip
    return OnnxRuntimeSegmenter(onnx[case["precision"]], None if device.type == "cuda" else "cpu", threads=threads)


def parity(segmenter: Segmenter, reference: torch.Tensor, image: np.ndarray) -> dict[str, float]:
    logits = segmenter.logits(segmenter.normalize(image[None])).float().cpu()
    diff = (logits.double() - reference.double()).abs().max().item()
    agree = (logits.argmax(1) == reference.argmax(1)).double().mean().item() * 100.0
    return {"max_abs_logit_diff": diff, "argmax_agreement_pct": agree}


def time_case(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, budget_s: float) -> dict:
    for _ in range(warmup):
        fn()
    begin = time.perf_counter()
    fn()
    first_ms = (time.perf_counter() - begin) * 1e3
    count = min(repeats, max(1, math.floor(budget_s * 1e3 / max(first_ms, 1e-3))))
    timing = time_calls(fn, device, count - 1) if count > 1 else summarize([first_ms])
    return timing_fields(timing)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="RUNDIR, seg checkpoint or .onnx; default: random")
    parser.add_argument("--arch", type=parse_arch, default=RANDOM_MODEL, metavar="MODEL:BACKBONE:LABELS",
                        help="random-weight model when no --model is given (the voc preset: deeplabv2:resnet101:21)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i]; default: cuda when present")
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case (CUDA graph capture etc.)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case at most")
    parser.add_argument("--budget-s", type=float, default=30.0, help="time budget of the timed calls per case")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime CPU threads; default: theirs")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile + CUDA graphs (slow start)")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/serving-<device>.json")
    return parser.parse_args(argv)


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        head = [r["backend"], r.get("detail", r["variant"])[:48], r["precision"], str(r.get("batch", "-"))]
        if r["status"] != "ok":
            rows.append([*head, r["status"], "-", "-", "-", "-", r.get("error", "")[:60]])
            continue
        rows.append([*head, fmt_or_dash(r["median_ms"], ".1f"), fmt_or_dash(r["p10_ms"], ".1f"), fmt_or_dash(r["p90_ms"], ".1f"),
                     fmt_or_dash(r["images_per_s"], ".1f"), fmt_or_dash(r.get("max_abs_logit_diff"), ".1e"),
                     fmt_or_dash(r.get("argmax_agreement_pct"), ".3f")])  # fmt: skip
    return rows


def make_reference_input(image: np.ndarray, device: torch.device) -> torch.Tensor:
    from fastwsss.cam_inference import normalize_image

    return normalize_image(image, device)


def run_cases(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    net, names, info, given_onnx = load_model(args.model, args.arch)
    batches = [int(b) for b in args.batches.split(",")]
    images = make_images(args.size, max(batches))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx: dict[str, Path] = {"fp32": given_onnx} if given_onnx else {}
        cases = case_list(device, net is not None, args.compile)
        if net is not None:
            onnx["fp32"] = export_onnx(net, names, Path(tmp), args.size, fp16=False)
            if any(c["backend"] == "onnxruntime" and c["precision"] == "fp16" for c in cases):
                onnx["fp16"] = export_onnx(net, names, Path(tmp), args.size, fp16=True)
            with torch.inference_mode():
                reference_net = copy.deepcopy(net).to(device).eval()
                reference = reference_net(make_reference_input(images[0], device)).float().cpu()
            info["reference"] = f"torch eager fp32 on {device}"
        else:
            from fastwsss.export.runtime_onnx import OnnxRuntimeSegmenter

            ref = OnnxRuntimeSegmenter(onnx["fp32"], "cpu")
            reference = ref.logits(ref.normalize(images[:1])).cpu()
            info["reference"] = "onnxruntime fp32 CPUExecutionProvider"
        for case in cases:
            if case.get("status") == "skipped":
                results.append(case)
                continue
            try:
                segmenter = make_segmenter(case, net, onnx, device, args.threads)
                fidelity = parity(segmenter, reference, images[0])
                for batch in batches:
                    stack = list(images[:batch])
                    timing = time_case(lambda s=segmenter, x=stack: s.segment(x), device, args.warmup,
                                       args.repeats, args.budget_s)  # fmt: skip
                    row = {**case, "status": "ok", "batch": batch, "detail": segmenter.detail, **timing,
                           "images_per_s": batch * 1e3 / timing["median_ms"], **fidelity}  # fmt: skip
                    results.append(row)
                    print(f"{case['backend']} {case['variant']} {case['precision']} b{batch}: "
                          f"{timing['median_ms']:.1f} ms", file=sys.stderr)  # fmt: skip
            except Exception as exc:  # noqa: BLE001  (one failing backend must not lose the others' numbers)
                results.append({**case, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]})
            segmenter = None  # free the model (and CUDA graphs) before the next case
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    start_load = environment(device)["loadavg_1m"]
    results, info = run_cases(args, device)
    env = environment(device)
    env["loadavg_1m_start"] = start_load
    env["loadavg_1m_end"] = env.pop("loadavg_1m")
    import onnxruntime as ort

    env["onnxruntime"] = ort.__version__
    env["onnxruntime_providers"] = ort.get_available_providers()
    payload = {
        "benchmark": "serving",
        "device": device_label(device),
        "environment": env,
        "model": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        "timing_method": ("CUDA events" if device.type == "cuda" else "time.perf_counter")
        + " around Segmenter.segment (normalisation, copies and argmax included)",
        "results": results,
    }
    path = write_json(args.json or RESULTS_DIR / f"serving-{device_label(device)}.json", payload)
    print_table(
        f"serving ({device_label(device)}, {args.size}x{args.size}, {info['source']})",
        ["backend", "detail", "prec", "batch", "median ms", "p10 ms", "p90 ms", "img/s", "max|Δ|", "argmax %"],
        table_rows(results),
    )
    print(f"parity vs {info['reference']}; results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
