"""Stage `eval`: score whatever the run directory holds against the ground truth (ALGORITHMS.md section 9).

CAM seeds: a constant background plane is prepended to the normalised high_res CAMs and the argmax taken,
for the configured threshold and for a sweep of thresholds (C2AM sweeps 0.13..0.20). One metrics row per
evaluated output, appended to RUNDIR/metrics.jsonl; mIoU is stored as a fraction in 0..1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastwsss.cam_inference import cam_seed_mask, load_cam_npz
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource
from fastwsss.errors import DataError
from fastwsss.metrics import ConfusionMeter, json_ious
from fastwsss.progress import track, warn
from fastwsss.stages.cam import FOLDER as CAM_FOLDER
from fastwsss.stages.cam import cam_path
from fastwsss.stages.context import StageContext


def evaluate_cam_seeds(ctx: StageContext, source: SegmentationSource) -> dict[str, Any] | None:
    """Seed mIoU of the stored CAMs over `source`, with the background-threshold sweep."""
    cam_dir = ctx.run.path / CAM_FOLDER
    if not cam_dir.is_dir():
        return None
    e = ctx.config.eval
    thresholds = sorted({*e.cam_bg_sweep, e.cam_bg_threshold})
    meters = {t: ConfusionMeter(source.num_classes + 1) for t in thresholds}
    missing = 0
    for image_id in track(source.ids, f"eval: cam seeds ({source.split})"):
        path = cam_path(cam_dir, image_id)
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
    evaluated = len(source.ids) - missing
    if evaluated == 0:
        warn(f"eval: no CAMs to evaluate in {cam_dir} for split {source.split}")
        return None
    if missing:
        warn(f"eval: {missing} of {len(source.ids)} images had no CAM or mask and were left out")
    sweep = {f"{t:.2f}": meters[t].miou() for t in thresholds}
    best = max(thresholds, key=lambda t: np.nan_to_num(meters[t].miou(), nan=-1.0))
    default = meters[e.cam_bg_threshold]
    return {
        "stage": "cam",
        "split": source.split,
        "method": ctx.config.method,
        "miou": default.miou(),
        "per_class_iou": json_ious(default.iou()),
        "class_names": ["background", *source.class_names],
        "bg_threshold": e.cam_bg_threshold,
        "best_bg_threshold": best,
        "best_miou": meters[best].miou(),
        "sweep": sweep,
        "images": evaluated,
    }


def run_eval(ctx: StageContext) -> list[dict[str, Any]]:
    cfg = ctx.config
    rows = []
    source = build_source(cfg.data, cfg.data.cam_split)
    row = evaluate_cam_seeds(ctx, source)
    if row is not None:
        rows.append(ctx.run.log_metric(row))
    return rows
