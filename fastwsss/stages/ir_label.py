"""Stage `ir_label`: confident seeds from the CAMs for IRN training (docs/algorithms.md section 3).

A pixel is a sure foreground pixel of class c when c wins the argmax against a background plane at the
high threshold (0.30), a sure background pixel when even the low threshold (0.05) beats every class, and
"unsure" (255, ignored by IRN) in between. IRNet refines both argmaxes with a dense CRF: here that is
`ir_label.crf` (on in the `voc` preset), which needs pydensecrf2 (PyPI ships it only as sources, so a C++
compiler is needed: `pip install 'fastwsss[crf]'`). Without the CRF the seeds follow the CAM contours
more loosely at object borders, which the unsure band and IRN's boundary learning partly absorb.
"""

from __future__ import annotations

import numpy as np

from fastwsss.algorithms.cam_inference import cam_seed_mask, load_cam_npz
from fastwsss.algorithms.crf import crf_available, crf_refine_labels
from fastwsss.algorithms.thresholds import class_thresholds, seed_mask
from fastwsss.data import build_source
from fastwsss.data.palette import IGNORE_INDEX, save_mask_png
from fastwsss.engine.distributed import all_gather, is_main
from fastwsss.engine.progress import track, warn
from fastwsss.engine.rundir import IR_LABELS
from fastwsss.errors import ConfigError, DataError, FastwsssError
from fastwsss.stages.context import StageContext
from fastwsss.stages.per_image import images_to_do

FOLDER = IR_LABELS


def _crf_seed(image: np.ndarray, seed: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """CRF-refine a seed mask of class ids by working on plane indices (0 = background, j = keys[j-1])."""
    lookup = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    to_plane = {int(class_id): plane for plane, class_id in enumerate(lookup)}
    planes = np.vectorize(to_plane.__getitem__, otypes=[np.int64])(seed) if seed.size else seed.astype(np.int64)
    refined = crf_refine_labels(image, planes, len(lookup))
    return lookup[refined].astype(np.uint8)


def ir_label_from_cams(
    high_res: np.ndarray,
    keys: np.ndarray,
    fg_threshold: float,
    bg_threshold: float,
    image: np.ndarray | None = None,
    fg_rule: str = "fixed",
) -> np.ndarray:
    """(H, W) uint8: class ids where confident, 0 where surely background, 255 where unsure.

    `fg_rule` "otsu" cuts each class map at its own Otsu level (at least `fg_threshold`) instead of at
    `fg_threshold` (fastwsss.algorithms.thresholds). With `image` given, both seed masks are refined by the dense CRF
    before they are combined.
    """
    if not bg_threshold < fg_threshold:
        raise ValueError(f"ir_label.bg_threshold ({bg_threshold}) must be below ir_label.fg_threshold ({fg_threshold})")
    if fg_rule == "fixed":
        fg = cam_seed_mask(high_res, keys, fg_threshold)
    else:
        fg = seed_mask(high_res, keys, class_thresholds(high_res, fg_rule, fg_threshold))
    bg = cam_seed_mask(high_res, keys, bg_threshold)
    if image is not None:
        fg, bg = _crf_seed(image, fg, keys), _crf_seed(image, bg, keys)
    label = fg.copy()
    label[fg == 0] = IGNORE_INDEX
    label[(fg == 0) & (bg == 0)] = 0
    return label


def run_ir_label(ctx: StageContext) -> None:
    cfg = ctx.config
    source = build_source(cfg.data, cfg.data.cam_split)
    cam_dir = ctx.run.cams_dir
    if not cam_dir.is_dir():
        raise FastwsssError(f"{cam_dir}: no CAMs; run the cam stage first")
    if cfg.ir_label.crf and not crf_available():
        raise ConfigError("ir_label.crf: pydensecrf2 is not installed; pip install 'fastwsss[crf]' or turn crf off")
    ctx.run.stage_dir(FOLDER)
    todo = images_to_do("ir_label", source.ids, ctx.run.ir_label_file)
    missing = 0
    for count, image_id in enumerate(track(todo, "ir_label"), start=1):
        path = ctx.run.cam_file(image_id)
        if not path.is_file():
            missing += 1
            continue
        try:
            cams = load_cam_npz(path)
            image = source.load_image(image_id) if cfg.ir_label.crf else None
        except DataError as exc:
            warn(str(exc))
            missing += 1
            continue
        label = ir_label_from_cams(cams.high_res, cams.keys, cfg.ir_label.fg_threshold, cfg.ir_label.bg_threshold, image,
                                   cfg.ir_label.fg_rule)
        save_mask_png(label, ctx.run.ir_label_file(image_id))
        ctx.step("ir_label", count)
    missing = sum(all_gather(missing))
    if missing and is_main():
        warn(f"ir_label: {missing} image(s) had no readable CAM and got no IR label")
    ctx.run.mark_done(FOLDER, {"images": len(source.ids), "missing": missing})
