"""Stage `pseudo`: propagate the CAMs along IRN's boundaries by random walk (docs/algorithms.md section 5).

Per image: boundary probabilities at stride 4 from the image and its flip, `cam4 * (1 - edge)` walked with
the column-normalised transition T = A^beta / colsum for 2^exp_times steps (the sparse walk of
`fastwsss.kernels.random_walk`, never the dense n x n matrix), bilinear x4 upsampling cropped to the image,
one global max over all classes, a constant background plane (0.25), argmax -> class ids. The `synthetic`
preset refines the maps by colour affinity before the background level (`pseudo.refine_iterations`).

On a GPU `CUDA_WALK_BATCH` images are handled together: images of one size through the IRN as one batch, the
walks as one padded batch (`random_walk_batch`: the same result per image, one launch per step for the whole
batch instead of per image); on the CPU each image is walked alone,
exactly as before batching existed, so CPU results are unchanged bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fastwsss.algorithms.cam_inference import load_cam_npz, normalize_image
from fastwsss.algorithms.colour_refine import DILATIONS, refine_maps
from fastwsss.algorithms.thresholds import class_thresholds, seed_mask
from fastwsss.data import build_source
from fastwsss.data.palette import save_mask_png
from fastwsss.engine.device import place_model
from fastwsss.engine.progress import track, warn
from fastwsss.engine.rundir import CAMS, IRN, PSEUDO
from fastwsss.errors import DataError, FastwsssError
from fastwsss.kernels.random_walk import random_walk
from fastwsss.kernels.random_walk_batch import random_walk_batch
from fastwsss.models.irn import grid_size, load_irn
from fastwsss.stages.context import StageContext
from fastwsss.stages.per_image import finish_images, images_to_do

FOLDER = PSEUDO
CAM_FOLDER = CAMS
CUDA_WALK_BATCH = 16
"""Images per walk call on a GPU: enough programs per step to fill an H100/H200 at VOC's 1-3 classes."""


def walk_batch_size(device: torch.device) -> int:
    """Images walked per call: CUDA_WALK_BATCH on a GPU, 1 on the CPU (the per-image path, unchanged)."""
    return CUDA_WALK_BATCH if device.type == "cuda" else 1


def walk_to_mask(
    rw: torch.Tensor,
    keys: np.ndarray,
    size: tuple[int, int],
    bg_threshold: float,
    bg_rule: str = "fixed",
    image: np.ndarray | None = None,
    refine_iterations: int = 0,
    refine_dilations: tuple[int, ...] = DILATIONS,
) -> np.ndarray:
    """Post-processing of IRNet: x4 upsample, crop, divide by one global max, background plane, argmax.

    `bg_rule` "otsu" replaces the constant plane by each map's own Otsu level, at least `bg_threshold`
    (fastwsss.algorithms.thresholds). With `image` and `refine_iterations` > 0 the normalised maps are first refined by
    colour affinity (fastwsss.algorithms.colour_refine)."""
    height, width = size
    if rw.shape[0] == 0:
        return np.zeros(size, dtype=np.uint8)
    h4, w4 = rw.shape[-2:]
    up = F.interpolate(rw[None].float(), size=(4 * h4, 4 * w4), mode="bilinear", align_corners=False)[0, :, :height, :width]
    peak = up.max()
    up = up / peak if peak > 0 else torch.zeros_like(up)
    if image is not None and refine_iterations > 0:
        up = refine_maps(up, image, refine_iterations, refine_dilations)
    if bg_rule != "fixed":
        maps = up.cpu().numpy()
        return seed_mask(maps, keys, class_thresholds(maps, bg_rule, bg_threshold))
    planes = torch.cat([torch.full_like(up[:1], bg_threshold), up], dim=0)
    index = planes.argmax(dim=0).cpu().numpy()
    lookup = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]).astype(np.uint8)
    return lookup[index]


@torch.inference_mode()
def propagate_image(model: torch.nn.Module, image: np.ndarray, cam4: np.ndarray, keys: np.ndarray,
                    cfg_pseudo, device: torch.device) -> np.ndarray:
    """The pseudo mask of one image from its CAMs and the boundary net."""
    height, width = image.shape[:2]
    if len(keys) == 0:
        return np.zeros((height, width), dtype=np.uint8)
    cams, edge = _walk_inputs(model, image, cam4, device)
    rw = random_walk(cams, edge, beta=cfg_pseudo.beta, exp_times=cfg_pseudo.exp_times, radius=cfg_pseudo.radius)
    return _to_mask(rw, keys, image, cfg_pseudo)


def _to_mask(rw: torch.Tensor, keys: np.ndarray, image: np.ndarray, cfg_pseudo) -> np.ndarray:
    """`walk_to_mask` with the stage's settings."""
    return walk_to_mask(rw, keys, image.shape[:2], cfg_pseudo.bg_threshold, cfg_pseudo.bg_rule, image,
                        cfg_pseudo.refine_iterations, cfg_pseudo.refine_dilations)  # fmt: skip


def _walk_inputs(model: torch.nn.Module, image: np.ndarray, cam4: np.ndarray,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(cams, edge) on `device`: the stride-4 CAMs and the boundary map with flip; a DataError on a grid mismatch."""
    x = normalize_image(image).to(device)
    edge = model.boundary_with_flip(x)[0, 0]
    cams = torch.from_numpy(cam4).to(device=device, dtype=torch.float32)
    _check_grid(cam4, tuple(edge.shape))
    return cams, edge


def _boundaries(model: torch.nn.Module, images: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """The IRN boundary map (with flip) of every image; images of one size go through the network together."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(image.shape[:2], []).append(i)
    edges: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for members in by_size.values():
        x = torch.cat([normalize_image(images[i]) for i in members]).to(device)
        for i, edge in zip(members, model.boundary_with_flip(x)[:, 0], strict=True):
            edges[i] = edge
    return edges


def _check_grid(cam4: np.ndarray, grid: tuple[int, ...]) -> None:
    if tuple(cam4.shape[-2:]) != tuple(grid):
        raise DataError(f"CAM grid {tuple(cam4.shape[-2:])} does not match the boundary grid {tuple(grid)}")


@torch.inference_mode()
def propagate_images(model: torch.nn.Module, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                     cfg_pseudo, device: torch.device) -> list[np.ndarray]:  # fmt: skip
    """`propagate_image` of every (image, cam4, keys) in `items`: images of one size through the IRN as one
    batch, the walks as one padded batch (`random_walk_batch`).

    The boundary maps and walks are queued on the device before any mask is read back, so the host waits
    once per batch, not once per image. A grid mismatch raises DataError for the whole batch: callers that
    must skip bad images check them one by one (`_check_grid`) first, as `run_pseudo` does. Batched
    convolutions may round differently from one image at a time (last bits of the boundary maps).
    """
    if len(items) == 1:
        return [propagate_image(model, *items[0], cfg_pseudo, device)]
    walked = [i for i, (_, _, keys) in enumerate(items) if len(keys)]
    masks = [np.zeros(image.shape[:2], dtype=np.uint8) for image, _, _ in items]
    if not walked:
        return masks
    edges = _boundaries(model, [items[i][0] for i in walked], device)
    cams = []
    for i, edge in zip(walked, edges, strict=True):
        _check_grid(items[i][1], tuple(edge.shape))
        cams.append(torch.from_numpy(items[i][1]).to(device=device, dtype=torch.float32))
    results = random_walk_batch(cams, edges, beta=cfg_pseudo.beta, exp_times=cfg_pseudo.exp_times,
                                radius=cfg_pseudo.radius)  # fmt: skip
    for i, rw in zip(walked, results, strict=True):
        image, _, keys = items[i]
        masks[i] = _to_mask(rw, keys, image, cfg_pseudo)
    return masks


def run_pseudo(ctx: StageContext) -> None:
    cfg = ctx.config
    source = build_source(cfg.data, cfg.data.cam_split)
    cam_dir = ctx.run.cams_dir
    if not cam_dir.is_dir():
        raise FastwsssError(f"{cam_dir}: no CAMs; run the cam stage first")
    model, _ = load_irn(ctx.run.checkpoint(IRN), map_location=ctx.device)
    place_model(model, ctx.device).eval()
    out = ctx.run.stage_dir(FOLDER)
    todo = images_to_do("pseudo", source.ids, ctx.run.pseudo_file)
    failed: list[str] = []
    batch = walk_batch_size(ctx.device)
    count = 0
    for start in track(range(0, len(todo), batch), "pseudo: random walk", total=math.ceil(len(todo) / batch)):
        ids, items = [], []
        for image_id in todo[start : start + batch]:
            try:
                image = source.load_image(image_id)
                cams = load_cam_npz(ctx.run.cam_file(image_id))
                if batch > 1 and len(cams.keys):
                    _check_grid(cams.cam4, grid_size(*image.shape[:2]))  # a bad grid fails this image alone
            except DataError as exc:
                warn(f"{image_id}: {exc}")
                failed.append(f"{image_id}\t{exc}")
                continue
            ids.append(image_id)
            items.append((image, cams.cam4, cams.keys))
        if not items:
            continue
        try:
            masks = propagate_images(model, items, cfg.pseudo, ctx.device)
        except DataError as exc:
            warn(f"{ids[0]}: {exc}")
            failed.append(f"{ids[0]}\t{exc}")
            continue
        for image_id, mask in zip(ids, masks, strict=True):
            save_mask_png(mask, ctx.run.pseudo_file(image_id))
            count += 1
            ctx.step("pseudo", count)
    failed = finish_images(ctx, "pseudo", out, failed)
    ctx.run.mark_done(FOLDER, {"images": len(source.ids), "failed": len(failed)})
