"""Stage `cam`: multi-scale + flip CAMs for every image of the CAM split, one compact npz per image.

The classifier is `classifier_checkpoint(ctx)`: C2AM's fine-tuned one for --method c2am; in CONTA rounds
>= 1 it also gets the image's M_t (Eq. 3 of its X_m). Finished images are never redone on --resume (each npz is written atomically, so an existing file is
complete). A bad image is reported in one line and skipped; the run goes on and the count is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fastwsss.cam_inference import multiscale_cam, save_cam_npz
from fastwsss.data import build_source
from fastwsss.errors import DataError
from fastwsss.io import atomic_path
from fastwsss.models.cam_net import load_cam_net
from fastwsss.progress import log, track, warn
from fastwsss.stages.cls import classifier_checkpoint, load_attention, uses_context
from fastwsss.stages.context import StageContext

FOLDER = "cams"


def cam_path(cam_dir: Path, image_id: str) -> Path:
    return cam_dir / f"{image_id}.npz"


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
    model, _ = load_cam_net(classifier_checkpoint(ctx), map_location=ctx.device, expect_num_classes=source.num_classes)
    model.to(ctx.device).eval()
    extra_for = context_maps(ctx)
    cam_dir = ctx.run.stage_dir(FOLDER)

    todo = [i for i in source.ids if not cam_path(cam_dir, i).is_file()]
    if len(todo) < len(source.ids):
        log(f"cam: {len(source.ids) - len(todo)} of {len(source.ids)} images already done, {len(todo)} to go")
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
        save_cam_npz(cam_path(cam_dir, image_id), result)
        ctx.step("cam", count)
    if failed:
        with atomic_path(cam_dir / "failed.txt") as tmp:
            tmp.write_text("\n".join(failed) + "\n")
        warn(f"cam: {len(failed)} image(s) could not be read and were skipped; see {cam_dir / 'failed.txt'}")
    ctx.run.mark_done(FOLDER, {"images": len(source.ids), "failed": len(failed)})
