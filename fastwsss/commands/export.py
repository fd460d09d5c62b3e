"""`fastwsss export RUNDIR`: ONNX files with a parity report, and TensorRT engines where TensorRT can run.

Writes to RUNDIR/export (or --out):
    model.onnx           images -> logits (the final DeepLab)            what = seg | all
    model_labels.onnx    images -> labels (argmax in the graph)          what = seg | all
    cam.onnx             images -> logits, max-normalised cams           what = cam | all
    model_int8.onnx      images -> logits, static int8 with Q/DQ nodes (--int8; export/quantize.py)
    parity.json          torch eager vs onnxruntime on the first 4 images of the val split + one at an odd size;
                         with --int8 also the int8 model's val mIoU beside fp32's, argmax agreement, max logit
                         difference and the score of every calibration method tried (export/int8_eval.py)
    manifest.json        the files this command wrote in the folder
    *.engine, timing.*   with --trt, where TensorRT and a CUDA GPU are present (export/tensorrt.py)

Overwriting: the out folder may be missing, empty, or hold an earlier export of the same run; then only
the files listed in its manifest.json are overwritten. Any other file in it (or a manifest of another run)
makes the command refuse before anything is written, so a user's own files are never replaced.

--trt without TensorRT or without a GPU is not an error: the ONNX files and parity.json are written and the
result says exactly why no engine was built (`tensorrt.reason`).

--int8 alone writes model_int8.onnx for CPU serving: calibrated on the first --calib readable training
images with each calibration method, the one with the best val mIoU kept. --trt --int8 builds the engine
from that Q/DQ file on TensorRT >= 11 (strongly typed) and with a calibrator over the fp32 graph on
TensorRT 10. A run without a val split still exports: parity uses training images and the int8 report
marks the mIoU as absent, saying why.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.markup import escape
from rich.table import Table

from fastwsss.config import RunConfig
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource
from fastwsss.engine.artifacts import final_classifier_checkpoint, final_seg_checkpoint
from fastwsss.engine.files import write_json
from fastwsss.engine.progress import console
from fastwsss.engine.rundir import open_run_dir
from fastwsss.errors import ConfigError, DataError, RunDirError, one_line
from fastwsss.export.int8_eval import val_source
from fastwsss.export.onnx import build_metadata, export_cam_onnx, export_seg_onnx, parity_report
from fastwsss.export.runtime_openvino import openvino_unavailable_reason
from fastwsss.export.tensorrt import Profile, build_engine, build_plan, tensorrt_unavailable_reason

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "fastwsss.export/1"
PARITY = "parity.json"
PARITY_IMAGES = 4
INT8_ONNX = "model_int8.onnx"
WHAT = ("seg", "cam", "all")


def check_options(trt: bool, fp16: bool, int8: bool, calib: int, what: str) -> str:
    """Validate the flag combination; returns the engine precision (fp32, fp16 or int8)."""
    if what not in WHAT:
        raise ConfigError(f"--what: unknown {what!r}; valid: {', '.join(WHAT)}")
    if fp16 and int8:
        raise ConfigError("--fp16 and --int8: choose one engine precision")
    if fp16 and not trt:
        raise ConfigError("--fp16 sets the TensorRT engine precision; add --trt")
    if int8 and calib <= 0:
        raise ConfigError(f"--calib: --int8 needs N > 0 calibration images, got {calib}")
    if int8 and what == "cam" and not trt:
        raise ConfigError("--int8 quantises the DeepLab: use --what seg or --what all (or add --trt for an engine)")
    return "fp16" if fp16 else "int8" if int8 else "fp32"


def claim_out_dir(out_dir: Path, rundir: Path) -> list[str]:
    """The files an earlier export of `rundir` wrote in `out_dir` (may be overwritten); refuses anything else."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise RunDirError(f"{out_dir}: exists and is not a folder; choose another --out")
    present = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    if not present:
        return []
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise RunDirError(
            f"{out_dir}: not empty and has no {MANIFEST} (not written by fastwsss export); choose another --out"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        owned, owner = list(manifest["files"]), str(manifest["rundir"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RunDirError(f"{manifest_path}: not a fastwsss export manifest; choose another --out") from None
    if owner != str(rundir.resolve()):
        raise RunDirError(f"{out_dir}: holds the export of another run ({owner}); choose another --out")
    foreign = [name for name in present if name != MANIFEST and name not in owned]
    if foreign:
        raise RunDirError(
            f"{out_dir}: holds {foreign[0]}, which fastwsss export did not write (not in {MANIFEST}); "
            "move it or choose another --out"
        )
    return owned


def _record(out_dir: Path, rundir: Path, files: list[str]) -> None:
    """List `files` in the manifest before (or as) they are written, so a rerun may overwrite them."""
    write_json(out_dir / MANIFEST, {
        "format": MANIFEST_FORMAT, "rundir": str(rundir.resolve()), "files": sorted(set(files)),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })  # fmt: skip


def odd_size(height: int, width: int) -> tuple[int, int]:
    """A smaller size with odd sides, different from (height, width) (parity at a non-export shape)."""
    new_h = max(17, int(height * 0.8)) | 1
    new_w = max(17, int(width * 0.7)) | 1
    if (new_h, new_w) == (height, width):
        new_h += 2
    return new_h, new_w


def parity_images(source: SegmentationSource, count: int = PARITY_IMAGES) -> tuple[list[np.ndarray], list[dict]]:
    """The first `count` readable images of `source` plus the first one resized to an odd size, and their
    description; an unreadable image is skipped with one line naming it."""
    ids, images = [], []
    for image_id in source.ids:
        if len(ids) == count:
            break
        try:
            images.append(source.load_image(image_id))
        except DataError as exc:
            _say(f"skipped parity image {source.image_path(image_id)}: {one_line(str(exc))[:160]}")
            continue
        ids.append(image_id)
    if not ids:
        raise DataError(f"{source.root}: split {source.split!r} has no readable image for the parity check")
    info = [{"id": i, "height": int(a.shape[0]), "width": int(a.shape[1])} for i, a in zip(ids, images, strict=True)]
    height, width = odd_size(*images[0].shape[:2])
    images.append(np.asarray(Image.fromarray(images[0]).resize((width, height), Image.Resampling.BILINEAR)))
    info.append({"id": f"{ids[0]} resized", "height": height, "width": width})
    return images, info


def _say(message: str) -> None:
    console.print(escape(message), soft_wrap=True, highlight=False)


def _export_int8(
    out_dir: Path, rundir: Path, config: RunConfig, calib: int, eval_images: int, num_labels: int
) -> dict[str, Any]:
    """model_int8.onnx: one candidate per calibration method, the best by measured score kept; its report."""
    from fastwsss.export import int8_eval, quantize

    train = build_source(config.data, config.data.train_split)
    calibration = quantize.load_calibration_images(train, calib, say=_say)
    plan = int8_eval.plan_evaluation(config, rundir, {*calibration.ids, *calibration.skipped}, eval_images or None)
    if plan.note:
        _say(f"int8: {plan.note}")
    with tempfile.TemporaryDirectory(prefix="fastwsss-int8-") as tmp:
        candidates = {}
        for method in quantize.METHODS:
            _say(f"int8: quantising with {method} calibration on {len(calibration.images)} {train.split} images ...")
            candidates[method] = quantize.quantize_seg_onnx(out_dir / "model.onnx", Path(tmp) / f"{method}.onnx",
                                                            calibration, method)  # fmt: skip
        _say(f"int8: scoring {len(candidates)} candidates and fp32 on {len(plan.ids)} {plan.source.split} images ...")
        runners = {method: int8_eval.ort_runner(path) for method, path in candidates.items()}
        scores = int8_eval.score_candidates(out_dir / "model.onnx", runners, plan, num_labels, say=_say)
        method = int8_eval.choose(scores)
        quantize.copy_candidate(candidates[method], out_dir / INT8_ONNX)
    info = {"split": train.split, "images": len(calibration.images), "first_id": calibration.ids[0],
            "last_id": calibration.ids[-1], "skipped": calibration.skipped}  # fmt: skip
    report = int8_eval.int8_report(INT8_ONNX, method, scores, plan, info)
    if openvino_unavailable_reason() is None:  # the same scores for the optional OpenVINO backend
        _say(f"int8: scoring {INT8_ONNX} on OpenVINO on the same {len(plan.ids)} images ...")
        runner = {"openvino": int8_eval.openvino_runner(out_dir / INT8_ONNX)}
        row = int8_eval.score_candidates(out_dir / "model.onnx", runner, plan, num_labels)["candidates"]["openvino"]
        row["miou"] = row["miou"] if report["miou"] is not None else None
        report["openvino"] = {**row, "passed": int8_eval.passes(row, report["fp32_miou"])}
    for row in report["candidates"]:
        score = "-" if row["miou"] is None else f"{row['miou']:.2f}"
        _say(f"int8 {row['method']}: mIoU {score}, argmax agreement {row['agreement_pct']:.2f}%, "
             f"max |logit diff| {row['max_abs_diff']:.3f}" + ("  <- kept" if row["method"] == method else ""))  # fmt: skip
    if "openvino" in report:
        row = report["openvino"]
        score = "-" if row["miou"] is None else f"{row['miou']:.2f}"
        _say(f"int8 {method} on OpenVINO: mIoU {score}, argmax agreement {row['agreement_pct']:.2f}%, "
             f"max |logit diff| {row['max_abs_diff']:.3f}")  # fmt: skip
    fp32 = "absent" if report["fp32_miou"] is None else f"{report['fp32_miou']:.2f}"
    _say(f"int8: {INT8_ONNX} ({method}) on {report['images']} {report['split']} images: mIoU "
         f"{'absent' if report['miou'] is None else format(report['miou'], '.2f')} (fp32 {fp32})")  # fmt: skip
    return report


def _summary_row(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "precision", "max_abs_diff", "agreement_pct", "passed", "method", "miou", "fp32_miou")
    return {key: report[key] for key in keep if key in report}


def export_command(
    rundir: Path,
    trt: bool = False,
    fp16: bool = False,
    int8: bool = False,
    calib: int = 0,
    min_shape: str = "1x3x512x512",
    opt_shape: str = "1x3x512x512",
    max_shape: str = "1x3x512x512",
    out: Path | None = None,
    what: str = "seg",
    eval_images: int = 0,
) -> dict[str, Any]:
    """Export the run's final model(s) to ONNX, check parity, build TensorRT engines with --trt; see module doc.

    `eval_images`: with --int8, score the calibration methods on the first N val images (0: all of them).
    Returns {out, files, parity, parity_passed, providers, tensorrt: {requested, built, reason, engines}, ok}.
    """
    precision = check_options(trt, fp16, int8, calib, what)
    profile = Profile.from_strings(min_shape, opt_shape, max_shape)
    run = open_run_dir(rundir)
    config = run.load_config()
    reason, plan = None, None
    if trt:
        reason = tensorrt_unavailable_reason()
        if reason is None:  # decide (and refuse int8 on TensorRT >= 11) before the slow part
            import tensorrt as trt_module

            plan = build_plan(str(trt_module.__version__), precision)
    out_dir = Path(out) if out is not None else run.path / "export"
    owned = claim_out_dir(out_dir, run.path)
    source, _ = val_source(config)  # without a val split, parity runs on training images
    source = source or build_source(config.data, config.data.train_split)
    images, image_info = parity_images(source)
    crop = (config.seg.crop, config.seg.crop)

    jobs: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = []  # (file name, model, export kwargs, meta)
    if what in ("seg", "all"):
        from fastwsss.models.deeplab import load_seg_model

        ckpt = final_seg_checkpoint(run.path)
        model, _ = load_seg_model(ckpt, expect_num_classes=source.num_classes + 1)
        meta = {**build_metadata(source.class_names, ckpt), "source_checkpoint": str(ckpt.relative_to(run.path))}
        jobs += [("model", model, {"with_argmax": False}, meta), ("model_labels", model, {"with_argmax": True}, meta)]
    if what in ("cam", "all"):
        from fastwsss.models.cam_net import load_cam_net

        ckpt = final_classifier_checkpoint(run.path)
        model, _ = load_cam_net(ckpt, expect_num_classes=source.num_classes)
        meta = {**build_metadata(source.class_names, ckpt), "source_checkpoint": str(ckpt.relative_to(run.path))}
        jobs.append(("cam", model.eval(), {}, meta))
    fp16_onnx = plan is not None and plan.needs_fp16_onnx
    stems = [stem for stem, *_ in jobs] + ([f"{stem}_fp16" for stem, *_ in jobs] if fp16_onnx else [])
    write_qdq = int8 and what in ("seg", "all")  # model_int8.onnx is the quantised DeepLab
    files = [f"{stem}.onnx" for stem in stems] + ([INT8_ONNX] if write_qdq else []) + [PARITY]
    owned = sorted(set(owned) | set(files))
    _record(out_dir, run.path, owned)

    reports: dict[str, dict[str, Any]] = {}
    for stem, model, kwargs, meta in jobs:
        for half in (False, True) if fp16_onnx else (False,):
            name = f"{stem}_fp16.onnx" if half else f"{stem}.onnx"
            console.print(f"exporting {escape(name)} ...")
            exporter = export_cam_onnx if stem == "cam" else export_seg_onnx
            exporter(model, out_dir / name, metadata=meta, example_hw=crop, fp16=half, **kwargs)
            reports[name] = parity_report(model, out_dir / name, images)
    if write_qdq:
        reports[INT8_ONNX] = _export_int8(out_dir, run.path, config, calib, eval_images, source.num_classes + 1)
    parity_passed = all(report["passed"] for report in reports.values())
    write_json(out_dir / PARITY, {"images": image_info, "passed": parity_passed, "reports": reports})

    engines: list[str] = []
    if plan is not None:
        calib_images = []
        if precision == "int8":
            train = build_source(config.data, config.data.train_split)
            calib_images = [train.load_image(image_id) for image_id in train.ids[:calib]]
        for stem, *_ in jobs:
            onnx_name = f"{stem}_fp16.onnx" if fp16_onnx else f"{stem}.onnx"
            if plan.needs_qdq_onnx:  # strongly typed int8: only the quantised DeepLab has Q/DQ pairs
                if stem != "model":
                    console.print(f"no int8 engine of {escape(stem)}.onnx: only the DeepLab is quantised (Q/DQ)")
                    continue
                onnx_name = INT8_ONNX
            console.print(f"building the TensorRT {precision} engine of {escape(onnx_name)} ({profile}) ...")
            try:
                engine = build_engine(out_dir / onnx_name, out_dir, profile, precision, calib_images or None,
                                      stem=f"{stem}_{precision}")  # fmt: skip
                engines.append(engine.name)
            finally:  # the caches a failed build may leave are ours too
                caches = {p.name for pattern in ("timing.*.cache", "calib.*.cache") for p in out_dir.glob(pattern)}
                owned = sorted(set(owned) | caches | set(engines))
                _record(out_dir, run.path, owned)

    providers = sorted({p for report in reports.values() for p in report["providers"]})
    result = {
        "out": str(out_dir),
        "files": files + engines,
        "parity": {name: _summary_row(report) for name, report in reports.items()},
        "parity_passed": parity_passed,
        "providers": providers,
        "tensorrt": {
            "requested": trt,
            "built": bool(engines),
            "reason": reason,
            "precision": precision if trt else None,
            "profile": profile.to_dict() if trt else None,
            "engines": engines,
        },
        "ok": parity_passed and (not trt or bool(engines)),
    }
    _print_summary(result)
    return result


def _print_summary(result: dict[str, Any]) -> None:
    table = Table(title=f"export -> {escape(result['out'])}", show_lines=False)
    for column in ("file", "kind", "precision", "max |diff|", "argmax agree", "val mIoU (fp32)", "parity"):
        table.add_column(column)
    for name, row in result["parity"].items():
        diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2e}"
        verdict = "[green]pass[/green]" if row["passed"] else "[red]FAIL[/red]"
        miou = "-"
        if "miou" in row:  # the int8 model: scored on the val split, or marked absent without one
            miou = "absent" if row["miou"] is None else f"{row['miou']:.2f} ({row['fp32_miou']:.2f})"
        table.add_row(escape(name), row["kind"], row["precision"], diff, f"{row['agreement_pct']:.3f}%", miou, verdict)
    console.print(table)
    console.print(f"onnxruntime providers used: {', '.join(result['providers'])}")
    info = result["tensorrt"]
    if info["requested"] and info["built"]:
        console.print(f"TensorRT engines: {escape(', '.join(info['engines']))}")
    elif info["requested"]:
        console.print(f"[yellow]no TensorRT engine:[/yellow] {escape(info['reason'] or 'unknown reason')}; "
                      "the ONNX files are written")  # fmt: skip
