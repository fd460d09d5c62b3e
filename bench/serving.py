"""Serving benchmark: speed, parity and val mIoU of every backend of export/runtime.py available here.

    python -m bench.serving                                # random-weight DeepLab-v2 resnet18_half, 11 classes
    python -m bench.serving --arch deeplabv2:resnet101:21  # random-weight VOC-size model (the voc preset's)
    python -m bench.serving --model RUNDIR --device cpu --compile   # the run's DeepLab and its export
    python -m bench.serving --model runs/voc/export/model.onnx

Cases on the CPU: torch eager fp32, torch.compile fp32 (--compile), onnxruntime fp32 (model.onnx) and int8
(model_int8.onnx of `fastwsss export --int8`), and with the optional `openvino` package OpenVINO on the
same two files. On CUDA: torch eager fp32/fp16, CUDA graphs, compile + CUDA graphs (--compile),
onnxruntime fp32/fp16; TensorRT is listed as skipped with the reason. With --model RUNDIR the ONNX files
are the run's export when it is up to date (an int8 row needs `fastwsss export RUNDIR --int8`); otherwise
an fp32 model.onnx is exported to a temporary folder.

Timing: `Segmenter.segment` on a batch of uint8 images (normalisation, copies and the argmax included:
what a caller gets) for every --sizes (WxH) and --batches. All cases of one size and batch are timed
interleaved: after --warmup untimed calls of each, every round times each case once, the order rotating
from round to round, for --repeats rounds (or until --budget-s is spent), so that a change in the
machine's load touches every case alike. Reported: p50 (median), p10 and p90 per batch and images/s
from the median; `speedup_vs_eager` against torch eager fp32 of the same size and batch.

Quality next to each case: the largest absolute logit difference and argmax agreement against torch eager
fp32 on a structured 512 x 512 image, and with --model RUNDIR the mIoU on the run's val split and the
argmax agreement with torch eager over those images (bench/serving_quality.py). `targets` in the JSON
judges the fastest case at 512x512, batch 1. Without --model the weights are random (seeded), which the
JSON says: timings represent the architecture, but random logits have near ties.

CPU threads: --threads (default: physical cores) for torch, onnxruntime and OpenVINO alike.
"""

from __future__ import annotations

import argparse
import copy
import gc
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
    Timing,
    cpu_model,
    device_label,
    environment,
    fmt_or_dash,
    pick_device,
    print_table,
    summarize,
    time_once,
    timing_fields,
    write_json,
)
from fastwsss.export.runtime import Segmenter

RANDOM_MODEL = ("deeplabv2", "resnet18_half", 11)


def make_images(height: int, width: int, count: int) -> np.ndarray:
    """Deterministic structured images: gradients, a few discs and noise (not uniform noise, whose
    predictions are all near ties)."""
    rng = np.random.default_rng(height * 10_000 + width)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    out = []
    for index in range(count):
        image = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * (xx + yy) + index)], axis=-1) * 200.0
        for _ in range(4):
            cy, cx, r = rng.random(3) * [1, 1, 0.25]
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(0, 255, 3)
        out.append(np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """ "512x512,500x375" -> [(512, 512), (500, 375)]: (width, height) pairs; "64" means 64x64."""
    sizes = []
    for part in text.split(","):
        pieces = part.strip().lower().split("x")
        pieces = pieces * 2 if len(pieces) == 1 else pieces
        if len(pieces) != 2 or not all(p.isdigit() and int(p) > 0 for p in pieces):
            raise argparse.ArgumentTypeError(f"--sizes wants WxH pairs like 512x512,500x375; got {part!r}")
        sizes.append((int(pieces[0]), int(pieces[1])))
    return sizes


def parse_arch(text: str) -> tuple[str, str, int]:
    """ "deeplabv2:resnet101:21" -> ("deeplabv2", "resnet101", 21): the random-weight model to time."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) < 2:
        raise argparse.ArgumentTypeError(
            f"--arch wants MODEL:BACKBONE:LABELS, e.g. deeplabv2:resnet101:21; got {text!r}"
        )
    return parts[0], parts[1], int(parts[2])


def load_model(
    model: Path | None, arch: tuple[str, str, int] = RANDOM_MODEL
) -> tuple[torch.nn.Module | None, list[str], dict[str, Any], Path | None]:
    """(torch model or None, foreground class names, model description, ONNX file given)."""
    from fastwsss.engine.artifacts import final_seg_checkpoint
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


def run_exports(model: Path | None) -> dict[str, Path]:
    """The run's up-to-date export files by precision (fp32: model.onnx, int8: model_int8.onnx)."""
    if model is None or not model.is_dir():
        return {}
    from fastwsss.export.onnx import read_onnx_metadata
    from fastwsss.export.runtime import EXPORT_FOLDER, INT8_ONNX, _checkpoint_sha256

    sha = _checkpoint_sha256(model)
    found = {}
    for precision, name in (("fp32", "model.onnx"), ("int8", INT8_ONNX)):
        path = model / EXPORT_FOLDER / name
        if path.is_file() and read_onnx_metadata(path).get("source_sha256") == sha:
            found[precision] = path
    return found


def case_list(device: torch.device, has_torch: bool, use_compile: bool, onnx: dict[str, Path]) -> list[dict[str, Any]]:
    """(backend, variant, precision) cases that run on `device`, plus skipped ones with the reason."""
    import onnxruntime as ort

    from fastwsss.export.runtime_openvino import openvino_unavailable_reason
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
            variant, precision = ("compile+cuda_graphs", "fp16") if cuda else ("compile", "fp32")
            cases.append({"backend": "torch", "variant": variant, "precision": precision})
    ort_cuda = cuda and "CUDAExecutionProvider" in ort.get_available_providers()
    cases.append({"backend": "onnxruntime", "variant": "session", "precision": "fp32"})
    if ort_cuda and has_torch:
        cases.append({"backend": "onnxruntime", "variant": "session", "precision": "fp16"})
    no_int8 = "no up-to-date model_int8.onnx: run `fastwsss export RUNDIR --int8` and pass --model RUNDIR"
    if not cuda:
        int8 = {"backend": "onnxruntime", "variant": "session", "precision": "int8"}
        cases.append(int8 if "int8" in onnx else {**int8, "status": "skipped", "error": no_int8})
        why = openvino_unavailable_reason()
        for precision in ("fp32", "int8"):
            case = {"backend": "openvino", "variant": "cpu", "precision": precision}
            if why or precision not in onnx:
                case.update(status="skipped", error=why or no_int8)
            cases.append(case)
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
    from fastwsss.export.runtime_openvino import OpenVinoSegmenter
    from fastwsss.export.runtime_torch import TorchSegmenter

    if case["backend"] == "torch":
        return TorchSegmenter(
            copy.deepcopy(net), Path("bench"), {}, device, half=case["precision"] == "fp16",
            cuda_graphs="cuda_graphs" in case["variant"], compile="compile" in case["variant"],
        )  # fmt: skip
    if case["backend"] == "openvino":
        return OpenVinoSegmenter(onnx[case["precision"]], "cpu", threads=threads)
    return OnnxRuntimeSegmenter(onnx[case["precision"]], None if device.type == "cuda" else "cpu", threads=threads)


def parity(segmenter: Segmenter, reference: torch.Tensor, image: np.ndarray) -> dict[str, float]:
    logits = segmenter.logits(segmenter.normalize(image[None])).float().cpu()
    diff = (logits.double() - reference.double()).abs().max().item()
    agree = (logits.argmax(1) == reference.argmax(1)).double().mean().item() * 100.0
    return {"max_abs_logit_diff": diff, "argmax_agreement_pct": agree}


def time_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int, budget_s: float
) -> dict[str, Timing]:
    """Per-case timing of calls made in rotation (module docstring); at least 3 rounds whatever the budget."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    begin = time.perf_counter()
    for round_index in range(max(1, repeats)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_once(fns[name], device))
        if round_index >= 2 and time.perf_counter() - begin > budget_s:
            break
    return {name: summarize(values) for name, values in samples.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="RUNDIR, seg checkpoint or .onnx; default: random")
    parser.add_argument(
        "--arch",
        type=parse_arch,
        default=RANDOM_MODEL,
        metavar="MODEL:BACKBONE:LABELS",
        help="random-weight model when no --model is given (the voc preset: deeplabv2:resnet101:21)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda[:i]; default: cuda when present")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("512x512,500x375"), help="WxH list")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case (compilation, CUDA graphs)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per size and batch at most")
    parser.add_argument("--budget-s", type=float, default=120.0, help="time budget of the rounds per size and batch")
    parser.add_argument("--val-images", type=int, default=300, help="val images for the mIoU column (--model RUNDIR)")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads of every backend; default: physical cores"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (CUDA: + CUDA graphs; slow start)"
    )
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/serving-<device>.json")
    return parser.parse_args(argv)  # fmt: skip


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        head = [r["backend"], r["variant"], r["precision"], r.get("size", "-"), str(r.get("batch", "-"))]
        if r["status"] != "ok":
            rows.append([*head, r["status"], "-", "-", "-", "-", "-", r.get("error", "")[:60]])
            continue
        rows.append([*head, fmt_or_dash(r["median_ms"], ".1f"), fmt_or_dash(r["p90_ms"], ".1f"),
                     fmt_or_dash(r["images_per_s"], ".2f"), fmt_or_dash(r.get("speedup_vs_eager"), ".2f"),
                     fmt_or_dash(r.get("val_miou"), ".2f"), fmt_or_dash(r.get("val_agreement_pct"), ".2f"),
                     fmt_or_dash(r.get("max_abs_logit_diff"), ".1e")])  # fmt: skip
    return rows


def make_reference_input(image: np.ndarray, device: torch.device) -> torch.Tensor:
    from fastwsss.algorithms.cam_inference import normalize_image

    return normalize_image(image, device)


def prepare(args: argparse.Namespace, device: torch.device, tmp: Path) -> tuple[list[dict], dict, dict, Any]:
    """(cases, ONNX files by precision, model description, torch model or None)."""
    net, names, info, given_onnx = load_model(args.model, args.arch)
    onnx = {"fp32": given_onnx} if given_onnx else run_exports(args.model)
    if net is not None and "fp32" not in onnx:
        onnx["fp32"] = export_onnx(net, names, tmp, 512, fp16=False)
    cases = case_list(device, net is not None, args.compile, onnx)
    if any(c["backend"] == "onnxruntime" and c["precision"] == "fp16" for c in cases):
        onnx["fp16"] = export_onnx(net, names, tmp, 512, fp16=True)
    info["onnx"] = {precision: str(path) for precision, path in onnx.items()}
    return cases, onnx, info, net


def run_cases(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from bench.serving_quality import add_speedups, load_val, val_quality

    batches = [int(b) for b in args.batches.split(",")]
    probe = make_images(512, 512, 1)[0]
    pairs, num_labels, info_val = load_val(args.model, args.val_images)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cases, onnx, info, net = prepare(args, device, Path(tmp))
        info["val"] = info_val
        if net is not None:
            with torch.inference_mode():
                reference = copy.deepcopy(net).to(device).eval()(make_reference_input(probe, device)).float().cpu()
            info["reference"] = f"torch eager fp32 on {device}"
        else:
            from fastwsss.export.runtime_onnx import OnnxRuntimeSegmenter

            ref = OnnxRuntimeSegmenter(onnx["fp32"], "cpu")
            reference = ref.logits(ref.normalize(probe[None])).cpu()
            info["reference"] = "onnxruntime fp32 CPUExecutionProvider"
        live: dict[int, tuple[Segmenter, dict[str, Any]]] = {}
        reference_masks = None
        for index, case in enumerate(cases):
            if case.get("status") == "skipped":
                continue
            try:
                segmenter = make_segmenter(case, net, onnx, device, args.threads)
                quality = parity(segmenter, reference, probe)
                val, masks = val_quality(segmenter, pairs, num_labels, reference_masks)
                reference_masks = reference_masks if reference_masks is not None else masks
                live[index] = (segmenter, {**quality, **val, "detail": segmenter.detail})
                print(
                    f"{case['backend']} {case['variant']} {case['precision']}: val mIoU {val['val_miou']}",
                    file=sys.stderr,
                )
            except Exception as exc:  # noqa: BLE001  (one failing backend must not lose the others' numbers)
                case.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
        for width, height in args.sizes:
            for batch in batches:
                stack = list(make_images(height, width, batch))
                fns = {i: (lambda s=seg, x=stack: s.segment(x)) for i, (seg, _) in live.items()}
                timings = time_interleaved(fns, device, args.warmup, args.repeats, args.budget_s) if fns else {}
                for i, timing in timings.items():
                    results.append({**cases[i], "status": "ok", "size": f"{width}x{height}", "batch": batch,
                                    **live[i][1], **timing_fields(timing), "images_per_s": batch * 1e3 / timing.median_ms})  # fmt: skip
                print(f"{width}x{height} b{batch}: " + ", ".join(f"{cases[i]['backend']} {cases[i]['variant']} "
                      f"{cases[i]['precision']} {t.median_ms:.1f} ms" for i, t in timings.items()), file=sys.stderr)  # fmt: skip
        results += [case for case in cases if case.get("status") in ("skipped", "error")]
        live.clear()
        gc.collect()
    add_speedups(results)
    return results, info


def main(argv: list[str] | None = None) -> int:
    from bench.serving_quality import targets
    from fastwsss.export.runtime import cpu_threads

    args = parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        args.threads = args.threads or cpu_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    start_load = environment(device)["loadavg_1m"]
    results, info = run_cases(args, device)
    env = environment(device)
    env["loadavg_1m_start"] = start_load
    env["loadavg_1m_end"] = env.pop("loadavg_1m")
    env["cpu_model"] = cpu_model()
    import onnxruntime as ort

    env["onnxruntime"] = ort.__version__
    env["onnxruntime_providers"] = ort.get_available_providers()
    try:
        import openvino

        env["openvino"] = openvino.get_version()
    except ImportError:
        env["openvino"] = None
    payload = {
        "benchmark": "serving",
        "date": time.strftime("%Y-%m-%d"),
        "device": device_label(device),
        "environment": env,
        "model": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        "timing_method": ("CUDA events" if device.type == "cuda" else "time.perf_counter")
        + " around Segmenter.segment (normalisation, copies and argmax included); cases interleaved per round",
        "targets": targets(results) if device.type == "cpu" else None,
        "results": results,
    }
    path = write_json(args.json or RESULTS_DIR / f"serving-{device_label(device)}.json", payload)
    print_table(
        f"serving ({device_label(device)}, {info['source']})",
        ["backend", "variant", "prec", "size", "batch", "p50 ms", "p90 ms", "img/s", "x eager", "val mIoU",
         "agree %", "max|Δ|"],
        table_rows(results),
    )  # fmt: skip
    print(f"parity vs {info['reference']}; {info['val']}; targets: {payload['targets']}; results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
