"""Stage `cam`: multi-scale + flip CAMs for every image of the CAM split, one compact npz per image.

The classifier is `RunDir.classifier_checkpoint`: C2AM's fine-tuned one for --method c2am; in CONTA rounds
>= 1 it also gets the image's M_t (Eq. 3 of its X_m). Finished images are never redone on --resume (each npz is written atomically, so an existing file is
complete); under torchrun each rank takes its shard of the images (fastwsss.stages.per_image). A bad image is reported in one line and skipped; the run goes on and the count is reported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastwsss.cam_inference import multiscale_cam, save_cam_npz
from fastwsss.data import build_source
from fastwsss.errors import DataError
from fastwsss.models.cam_net import load_cam_net
from fastwsss.progress import track, warn
from fastwsss.rundir import CAMS
from fastwsss.stages.cls import load_attention, uses_context
from fastwsss.stages.context import StageContext
from fastwsss.stages.per_image import finish_images, images_to_do

FOLDER = CAMS

ExtraMap = Callable[[str], torch.Tensor | None]


def context_maps(ctx: StageContext) -> ExtraMap:
    """image id -> the classifier's extra input: CONTA's M_t (1, S, S) in rounds >= 1, else None."""
    if not uses_context(ctx):
        return lambda image_id: None
    attention, table = load_attention(ctx.run.path)

    def extra(image_id: str) -> torch.Tensor:
        with torch.no_grad():
            return attention(table.batch([image_id]))[0]

    return extra


def run_cam(ctx: StageContext) -> None:
    cfg = ctx.config
    source = build_source(cfg.data, cfg.data.cam_split)
    checkpoint = ctx.run.classifier_checkpoint(cfg.method)
    model, _ = load_cam_net(checkpoint, map_location=ctx.device, expect_num_classes=source.num_classes)
    model.to(ctx.device).eval()
    extra_for = context_maps(ctx)
    cam_dir = ctx.run.stage_dir(FOLDER)

    todo = images_to_do("cam", source.ids, ctx.run.cam_file)
    failed: list[str] = []
    for count, image_id in enumerate(track(todo, f"cam: {cfg.data.cam_split}"), start=1):
        try:
            image = source.load_image(image_id)
            labels = source.labels(image_id)
        except DataError as exc:
            warn(str(exc))
            failed.append(f"{image_id}\t{exc}")
            continue
        result = multiscale_cam(model, image, labels, cfg.cam.scales, ctx.device, extra=extra_for(image_id))
        save_cam_npz(ctx.run.cam_file(image_id), result)
        ctx.step("cam", count)
    failed = finish_images(ctx, "cam", cam_dir, failed, "could not be read and were skipped")
    ctx.run.mark_done(FOLDER, {"images": len(source.ids), "failed": len(failed)})
