"""Stage `cam`: multi-scale + flip CAMs for every image of the CAM split, one compact npz per image.

The classifier is `RunDir.classifier_checkpoint` (the method's `classifier_stage`: C2AM's fine-tuned one for
--method c2am); where the method gives it an extra input (`Method.cam_input`: CONTA's M_t in rounds >= 1)
each image gets its map. Finished images are never redone on --resume (each npz is written atomically,
so an existing file is complete); under torchrun each rank takes its shard of the images
(fastwsss.stages.per_image). A bad image is reported in one line and skipped; the run goes on and the
count is reported.
"""

from __future__ import annotations

from fastwsss.algorithms.cam_inference import multiscale_cam, save_cam_npz
from fastwsss.data import build_source
from fastwsss.engine.device import place_model
from fastwsss.engine.progress import track, warn
from fastwsss.engine.rundir import CAMS
from fastwsss.errors import DataError
from fastwsss.methods import ExtraMap, get_method
from fastwsss.models.cam_net import load_cam_net
from fastwsss.stages.context import StageContext
from fastwsss.stages.per_image import finish_images, images_to_do

FOLDER = CAMS


def context_maps(ctx: StageContext) -> ExtraMap:
    """image id -> the classifier's extra input in this stage context (`Method.cam_input`), else None."""
    hook = get_method(ctx.config.method).cam_input
    maps = hook(ctx) if hook is not None else None
    return maps if maps is not None else lambda image_id: None


def run_cam(ctx: StageContext) -> None:
    cfg = ctx.config
    source = build_source(cfg.data, cfg.data.cam_split)
    checkpoint = ctx.run.classifier_checkpoint(cfg.method)
    model, _ = load_cam_net(checkpoint, map_location=ctx.device, expect_num_classes=source.num_classes)
    place_model(model, ctx.device).eval()
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
