"""Stage `eval`: score whatever the run directory holds against the ground truth (docs/algorithms.md section 9).

CAM seeds: a constant background plane is prepended to the normalised high_res CAMs and the argmax taken,
for the configured threshold and for a sweep of thresholds (C2AM sweeps 0.13..0.20). IR labels are scored
on their confident pixels only (255 = unsure is left out) with the share of pixels that are confident;
pseudo masks and the segmentation model's predictions on the training images as plain masks. Where the
data set records context regions (synthetic), the CAM row also carries the context leakage
(fastwsss.algorithms.context_metrics). One metrics
row per evaluated output, appended to RUNDIR/metrics.jsonl; mIoU is stored as a fraction in 0..1. Under
torchrun each rank scores its shard of the images and the confusion matrices and counts are summed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastwsss.algorithms.cam_inference import cam_seed_mask, load_cam_npz
from fastwsss.algorithms.context_metrics import ContextLeakageMeter
from fastwsss.algorithms.metrics import ConfusionMeter, score_row
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource, read_label_png
from fastwsss.data.palette import IGNORE_INDEX
from fastwsss.engine.distributed import is_main, shard, sum_array
from fastwsss.engine.progress import track, warn
from fastwsss.engine.rundir import id_file
from fastwsss.errors import DataError
from fastwsss.stages.context import StageContext


def evaluate_cam_seeds(ctx: StageContext, source: SegmentationSource) -> dict[str, Any] | None:
    """Seed mIoU of the stored CAMs over `source`, with the background-threshold sweep."""
    cam_dir = ctx.run.cams_dir
    if not cam_dir.is_dir():
        return None
    e = ctx.config.eval
    thresholds = sorted({*e.cam_bg_sweep, e.cam_bg_threshold})
    meters = {t: ConfusionMeter(source.num_classes + 1) for t in thresholds}
    load_context = getattr(source, "load_context", None)
    leakage = ContextLeakageMeter(e.cam_bg_threshold) if load_context is not None else None
    missing = 0
    mine = shard(source.ids)
    for image_id in track(mine, f"eval: cam seeds ({source.split})"):
        path = ctx.run.cam_file(image_id)
        if not path.is_file():
            missing += 1
            continue
        try:
            gt = source.load_mask(image_id)
        except DataError as exc:
            warn(str(exc))
            missing += 1
            continue
        cams = load_cam_npz(path)
        if cams.high_res.shape[1:] != gt.shape:
            warn(f"{path}: CAM is {cams.high_res.shape[1:]} but the mask is {gt.shape}; skipped")
            missing += 1
            continue
        for t in thresholds:
            meters[t].update(cam_seed_mask(cams.high_res, cams.keys, t), gt)
        if leakage is not None:
            try:
                leakage.update(cams.high_res, load_context(image_id))
            except DataError as exc:
                warn(f"{exc}; context leakage is left without this image")
    evaluated = int(sum_array(np.array([len(mine) - missing]))[0])
    missing = len(source.ids) - evaluated
    for meter in meters.values():
        meter.matrix = sum_array(meter.matrix)
    if leakage is not None:
        on_context, total, images = sum_array(np.array([leakage.on_context, leakage.total, leakage.images], np.float64))
        leakage.on_context, leakage.total, leakage.images = float(on_context), float(total), int(images)
    if evaluated == 0:
        if is_main():
            warn(f"eval: no CAMs to evaluate in {cam_dir} for split {source.split}")
        return None
    if missing and is_main():
        warn(f"eval: {missing} of {len(source.ids)} images had no CAM or mask and were left out")
    sweep = {f"{t:.2f}": meters[t].miou() for t in thresholds}
    best = max(thresholds, key=lambda t: np.nan_to_num(meters[t].miou(), nan=-1.0))
    return score_row(
        "cam", source.split, ctx.config.method, meters[e.cam_bg_threshold], source.class_names, evaluated,
        bg_threshold=e.cam_bg_threshold, best_bg_threshold=best, best_miou=meters[best].miou(), sweep=sweep,
        context_leakage=None if leakage is None else leakage.value(),
    )


def evaluate_mask_folder(ctx: StageContext, folder: Path, source: SegmentationSource, stage: str) -> dict[str, Any] | None:
    """mIoU of the class-index PNGs `folder/<id>.png` over `source`; 255 in a prediction counts as unsure."""
    if not folder.is_dir():
        return None
    meter = ConfusionMeter(source.num_classes + 1)
    evaluated = confident = labelled = 0
    for image_id in track(shard(source.ids), f"eval: {stage} ({source.split})"):
        path = id_file(folder, image_id, ".png")
        if not path.is_file():
            continue
        try:
            gt = source.load_mask(image_id)
            pred = read_label_png(path, source.num_classes)
        except DataError as exc:
            warn(str(exc))
            continue
        if pred.shape != gt.shape:
            warn(f"{path}: mask is {pred.shape} but the ground truth is {gt.shape}; skipped")
            continue
        meter.update(pred, gt)
        valid = gt != IGNORE_INDEX
        labelled += int(valid.sum())
        confident += int((valid & (pred != IGNORE_INDEX)).sum())
        evaluated += 1
    meter.matrix = sum_array(meter.matrix)
    evaluated, confident, labelled = (int(v) for v in sum_array(np.array([evaluated, confident, labelled], np.int64)))
    if evaluated == 0:
        return None
    if evaluated < len(source.ids) and is_main():
        warn(f"eval: {stage}: {len(source.ids) - evaluated} of {len(source.ids)} images had no output and were left out")
    return score_row(stage, source.split, ctx.config.method, meter, source.class_names, evaluated,
                     confident_fraction=confident / max(labelled, 1))


def run_eval(ctx: StageContext) -> list[dict[str, Any]]:
    cfg = ctx.config
    rows = []
    source = build_source(cfg.data, cfg.data.eval_split or cfg.data.cam_split)
    scored = [evaluate_cam_seeds(ctx, source)]
    run = ctx.run
    for stage, folder in (("ir_label", run.ir_labels_dir), ("pseudo", run.pseudo_dir), ("seg", run.seg_predictions_dir)):
        scored.append(evaluate_mask_folder(ctx, folder, source, stage))
    for row in scored:
        if row is not None:
            rows.append(ctx.run.log_metric(row))
    return rows
