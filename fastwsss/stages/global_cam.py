"""Stage `global_cam` (C2AM): the global CAM G of the baseline classifier over the training images.

Every image of `data.train_split` gets the baseline's multi-scale CAM (the cam stage's settings), resized to
c2am.global_size^2 ignoring the aspect ratio; G is their mean (fastwsss.methods.c2am). Writes
RUNDIR/global_cam/global_cam.npy (K x S x S), constants.json (M_c per class) and global_cam.png. Under
torchrun each rank sums the CAMs of its shard of the images and rank 0 writes G from the summed totals.
"""

from __future__ import annotations

import numpy as np

from fastwsss.algorithms.cam_inference import multiscale_cam
from fastwsss.data import build_source
from fastwsss.engine.distributed import is_main, shard, sum_array
from fastwsss.engine.files import atomic_path, write_json
from fastwsss.engine.progress import track, warn
from fastwsss.engine.rundir import CLS, GLOBAL_CAM
from fastwsss.errors import DataError
from fastwsss.methods.c2am import GlobalCamAccumulator, logit_constants
from fastwsss.models.cam_net import load_cam_net
from fastwsss.reporting.visual import heatmap_sheet
from fastwsss.stages.context import StageContext

FOLDER = GLOBAL_CAM


def run_global_cam(ctx: StageContext) -> None:
    cfg = ctx.config
    m = cfg.c2am
    ctx.run.stage_dir(FOLDER)
    source = build_source(cfg.data, cfg.data.train_split)
    model, _ = load_cam_net(ctx.run.checkpoint(CLS), ctx.device, expect_num_classes=source.num_classes)
    model.eval()
    accumulator = GlobalCamAccumulator(source.num_classes, m.global_size)
    skipped = 0
    for count, image_id in enumerate(track(shard(source.ids), f"global_cam: {source.split}"), start=1):
        try:
            image, labels = source.load_image(image_id), source.labels(image_id)
        except DataError as exc:
            warn(str(exc))
            skipped += 1
            continue
        result = multiscale_cam(model, image, labels, cfg.cam.scales, ctx.device)
        accumulator.add(result.keys, result.high_res)
        ctx.step("global_cam", count)
    accumulator.total, accumulator.class_images = sum_array(accumulator.total), sum_array(accumulator.class_images)
    accumulator.images, skipped = (int(v) for v in sum_array(np.array([accumulator.images, skipped])))
    if not is_main():  # every rank had its shard; rank 0 writes the sums
        return
    global_cam = accumulator.result(by_class=m.by_class)
    with atomic_path(ctx.run.global_cam_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, global_cam)
    constants = logit_constants(global_cam, m.gamma).tolist()
    write_json(ctx.run.global_cam_constants_file, {"gamma": m.gamma, "by_class": m.by_class,
                                                   "M_c": dict(zip(source.class_names, constants, strict=True))})
    heatmap_sheet(global_cam, source.class_names, ctx.run.global_cam_picture)
    ctx.run.mark_done(FOLDER, {"images": accumulator.images, "skipped": skipped})
