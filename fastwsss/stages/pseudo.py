"""Stage `pseudo`: propagate the CAMs along IRN's boundaries by random walk (ALGORITHMS.md section 5).

Per image: boundary probabilities at stride 4 from the image and its flip, `cam4 * (1 - edge)` walked with
the column-normalised transition T = A^beta / colsum for 2^exp_times steps (the sparse walk of
`fastwsss.kernels.random_walk`, never the dense n x n matrix), bilinear x4 upsampling cropped to the image,
one global max over all classes, a constant background plane (0.25), argmax -> class ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastwsss.cam_inference import load_cam_npz, normalize_image
from fastwsss.data import build_source
from fastwsss.data.palette import save_mask_png
from fastwsss.errors import DataError, FastwsssError
from fastwsss.kernels.random_walk import random_walk
from fastwsss.models.irn import load_irn
from fastwsss.progress import track, warn
from fastwsss.rundir import id_file
from fastwsss.stages.cam import FOLDER as CAM_FOLDER
from fastwsss.stages.cam import cam_path
from fastwsss.stages.context import StageContext
from fastwsss.stages.per_image import finish_images, images_to_do

FOLDER = "pseudo"


def walk_to_mask(rw: torch.Tensor, keys: np.ndarray, size: tuple[int, int], bg_threshold: float) -> np.ndarray:
    """Post-processing of IRNet: x4 upsample, crop, divide by one global max, background plane, argmax."""
    height, width = size
    if rw.shape[0] == 0:
        return np.zeros(size, dtype=np.uint8)
    h4, w4 = rw.shape[-2:]
    up = F.interpolate(rw[None].float(), size=(4 * h4, 4 * w4), mode="bilinear", align_corners=False)[0, :, :height, :width]
    peak = up.max()
    up = up / peak if peak > 0 else torch.zeros_like(up)
    planes = torch.cat([torch.full_like(up[:1], bg_threshold), up], dim=0)
    index = planes.argmax(dim=0).cpu().numpy()
    lookup = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    return lookup[index]


def pseudo_path(folder: Path, image_id: str) -> Path:
    return id_file(folder, image_id, ".png")


@torch.inference_mode()
def propagate_image(model: torch.nn.Module, image: np.ndarray, cam4: np.ndarray, keys: np.ndarray,
                    cfg_pseudo, device: torch.device) -> np.ndarray:
    """The pseudo mask of one image from its CAMs and the boundary net."""
    height, width = image.shape[:2]
    if len(keys) == 0:
        return np.zeros((height, width), dtype=np.uint8)
    x = normalize_image(image).to(device)
    edge = model.boundary_with_flip(x)[0, 0]
    cams = torch.from_numpy(cam4).to(device=device, dtype=torch.float32)
    if cams.shape[-2:] != edge.shape:
        raise DataError(f"CAM grid {tuple(cams.shape[-2:])} does not match the boundary grid {tuple(edge.shape)}")
    rw = random_walk(cams, edge, beta=cfg_pseudo.beta, exp_times=cfg_pseudo.exp_times, radius=cfg_pseudo.radius)
    return walk_to_mask(rw, keys, (height, width), cfg_pseudo.bg_threshold)


def run_pseudo(ctx: StageContext) -> None:
    cfg = ctx.config
    source = build_source(cfg.data, cfg.data.cam_split)
    cam_dir = ctx.run.path / CAM_FOLDER
    if not cam_dir.is_dir():
        raise FastwsssError(f"{cam_dir}: no CAMs; run the cam stage first")
    model, _ = load_irn(ctx.run.path / "irn" / "ckpt.pt", map_location=ctx.device)
    model.to(ctx.device).eval()
    out = ctx.run.stage_dir(FOLDER)
    todo = images_to_do("pseudo", source.ids, lambda i: pseudo_path(out, i))
    failed: list[str] = []
    for count, image_id in enumerate(track(todo, "pseudo: random walk"), start=1):
        try:
            image = source.load_image(image_id)
            cams = load_cam_npz(cam_path(cam_dir, image_id))
            mask = propagate_image(model, image, cams.cam4, cams.keys, cfg.pseudo, ctx.device)
        except DataError as exc:
            warn(f"{image_id}: {exc}")
            failed.append(f"{image_id}\t{exc}")
            continue
        save_mask_png(mask, pseudo_path(out, image_id))
        ctx.step("pseudo", count)
    failed = finish_images(ctx, "pseudo", out, failed)
    ctx.run.mark_done(FOLDER, {"images": len(source.ids), "failed": len(failed)})
