"""Where the IRNet half of the pipeline loses mIoU: the boundary net or the walk?

For the first N images of the CAM split (which need ground-truth masks) it measures

* the boundary net's mean boundary probability on the IR labels' own borders (two confident labels side
  by side), in their unsure band (255, where IRN learns to put the borders between labels that face
  each other across it), on the ground truth's object borders and elsewhere (an IRN that learned what
  it was taught is high on the first two; one that is useful is high on the third);
* the pseudo-mask mIoU of the walk with the boundary net's map, with a boundary map drawn from the ground
  truth (what a perfect boundary net would give), and with no walk at all (exp_times 0), each at the run's
  pseudo settings and also at a quarter of its steps.

If the ground-truth map gains over "no walk" while the IRN map loses, the walk works and the boundary net
learned the wrong borders; both are computed by the same `random_walk` and `walk_to_mask` as the pseudo
stage, so nothing here is a second implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastwsss.algorithms.cam_inference import load_cam_npz, normalize_image
from fastwsss.algorithms.irn_pairs import STRIDE
from fastwsss.algorithms.metrics import ConfusionMeter
from fastwsss.data import build_source
from fastwsss.data.base import read_label_png
from fastwsss.data.palette import IGNORE_INDEX
from fastwsss.engine.device import DEFAULT_DEVICE, resolve_device
from fastwsss.engine.progress import track, warn
from fastwsss.engine.rundir import IRN, open_run_dir
from fastwsss.errors import DataError, FastwsssError
from fastwsss.kernels.random_walk import random_walk
from fastwsss.models.irn import load_irn
from fastwsss.stages.pseudo import walk_to_mask


def label_borders(labels: np.ndarray, ignore: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(H, W) bool: pixels whose right or lower neighbour has another label (pairs touching `ignore` left out)."""
    g = torch.from_numpy(labels.astype(np.int64))
    valid = torch.ones_like(g, dtype=torch.bool) if ignore is None else g != ignore
    border = torch.zeros_like(g, dtype=torch.bool)
    border[:, :-1] |= (g[:, 1:] != g[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    border[:-1, :] |= (g[1:, :] != g[:-1, :]) & valid[1:, :] & valid[:-1, :]
    return border


def to_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A full-resolution bool mask on the stride-4 grid `grid`: a cell is set when any of its pixels is."""
    h4, w4 = grid
    padded = torch.zeros(h4 * STRIDE, w4 * STRIDE)
    height, width = min(mask.shape[0], h4 * STRIDE), min(mask.shape[1], w4 * STRIDE)
    padded[:height, :width] = mask[:height, :width].float()
    return F.max_pool2d(padded[None, None], STRIDE)[0, 0] > 0


@dataclass
class MeanOver:
    """A running mean of per-image means (an image without such cells adds nothing)."""

    total: float = 0.0
    count: int = 0

    def add(self, values: torch.Tensor) -> None:
        if values.numel():
            self.total += float(values.mean())
            self.count += 1

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


def diagnose_walk(rundir: str | Path, images: int = 150, device: str = DEFAULT_DEVICE) -> dict[str, Any]:
    """The measurements of the module docstring for `rundir`, as one JSON-friendly dict."""
    device = resolve_device(device)
    run = open_run_dir(rundir)
    config = run.load_config()
    source = build_source(config.data, config.data.cam_split)
    if not source.has_masks():
        raise DataError(f"{config.data.cam_split}: the walk diagnosis needs ground-truth masks of the CAM split")
    model, _ = load_irn(run.checkpoint(IRN), map_location=device)
    model.to(device).eval()
    p = config.pseudo
    steps = {"full": p.exp_times, "quarter": max(p.exp_times - 2, 0)}
    variants = [f"{edge} edge, {name} walk" for edge in ("irn", "ground-truth") for name in steps] + ["no walk"]
    meters = {name: ConfusionMeter(source.num_classes + 1) for name in variants}
    on_ir, in_band, on_gt, elsewhere = MeanOver(), MeanOver(), MeanOver(), MeanOver()
    used = 0
    for image_id in track(source.ids[:images], "diagnose: walk"):
        try:
            image, gt = source.load_pair(image_id)
            cams = load_cam_npz(run.cam_file(image_id))
            ir_label = read_label_png(run.ir_label_file(image_id), source.num_classes)
        except (FastwsssError, OSError) as exc:
            warn(f"diagnose: {image_id}: {exc}; left out")
            continue
        with torch.inference_mode():
            edge = model.boundary_with_flip(normalize_image(image).to(device))[0, 0].float().cpu()
        grid = tuple(edge.shape)
        ir_border, gt_border = to_grid(label_borders(ir_label), grid), to_grid(label_borders(gt, None), grid)
        band = to_grid(torch.from_numpy(ir_label == IGNORE_INDEX), grid) & ~ir_border
        on_ir.add(edge[ir_border])
        in_band.add(edge[band])
        on_gt.add(edge[gt_border])
        elsewhere.add(edge[~ir_border & ~band & ~gt_border])
        cam4 = torch.from_numpy(cams.cam4.astype(np.float32))
        def to_mask(walked: torch.Tensor) -> np.ndarray:
            return walk_to_mask(walked, cams.keys, image.shape[:2], p.bg_threshold, p.bg_rule, image,  # noqa: B023
                                p.refine_iterations, p.refine_dilations)  # fmt: skip

        for edge_name, boundary in (("irn", edge), ("ground-truth", gt_border.float())):
            for step_name, exp_times in steps.items():
                walked = random_walk(cam4, boundary, beta=p.beta, exp_times=exp_times, radius=p.radius)
                meters[f"{edge_name} edge, {step_name} walk"].update(to_mask(walked), gt)
        unwalked = random_walk(cam4, edge, beta=p.beta, exp_times=0, radius=p.radius)
        meters["no walk"].update(to_mask(unwalked), gt)
        used += 1
    if used == 0:
        raise DataError(f"{run.path}: no image had a CAM, an IR label and a mask; run the pipeline up to irn first")
    return {
        "rundir": str(run.path),
        "images": used,
        "pseudo": {"beta": p.beta, "exp_times": steps, "radius": p.radius, "bg_threshold": p.bg_threshold},
        "boundary_probability": {"on_ir_label_borders": on_ir.value(), "in_ir_label_unsure_band": in_band.value(),
                                 "on_ground_truth_borders": on_gt.value(), "elsewhere": elsewhere.value()},
        "pseudo_miou": {name: meter.miou() for name, meter in meters.items()},
    }
