"""Stage `irn`: train IRN's boundary branch from the IR labels (docs/algorithms.md section 4).

Inputs: RUNDIR/ir_labels/<id>.png (P-mode, 0 = sure background, 1..K = class, 255 = unsure) for the
images of `data.cam_split`, written by the ir_label stage, and -- with `irn.backbone_from = "cls"` -- the
classifier RUNDIR/cls/ckpt.pt whose backbone is copied and frozen.

Each step: boundary logits at stride 4, affinities 1 - max(sigmoid(edge)) along the path of every pair of
the radius-`irn.radius` half disc (`fastwsss.algorithms.affinity.path_max_affinity`), the pair loss of
`fastwsss.algorithms.irn_pairs` (all in-grid pairs, or IRNet's PathIndex window with `irn.pairs`; labels sampled at
`irn.label_offset`). SGD with momentum `irn.momentum` on the edge head only, poly lr per step. As in the cls stage,
data order and augmentation are functions of (seed, epoch, index) and RUNDIR/irn/last.pt is written after
every epoch, so a resumed run trains exactly as an uninterrupted one; the final model is RUNDIR/irn/ckpt.pt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastwsss.algorithms.affinity import path_max_affinity
from fastwsss.algorithms.irn_pairs import affinity_loss, downsample_labels, pair_masks
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource, read_label_png
from fastwsss.data.datasets import ClassificationDataset
from fastwsss.data.palette import IGNORE_INDEX
from fastwsss.data.transforms import apply_crop, hflip, resize_long_mask
from fastwsss.engine.device import place_model
from fastwsss.engine.distributed import global_batch_mean, is_main
from fastwsss.engine.progress import warn
from fastwsss.engine.rundir import IR_LABELS, IRN, id_file
from fastwsss.engine.training import TrainJob, run_epochs, sgd_optimizer
from fastwsss.engine.weights import weights_record
from fastwsss.errors import ConfigError, DataError
from fastwsss.models.irn import BoundaryNet, save_irn_checkpoint
from fastwsss.stages.context import StageContext

STAGE = FOLDER = IRN
IR_LABEL_FOLDER = IR_LABELS


class IRLabelDataset(ClassificationDataset):
    """Normalised image crops with their IR-label crops, augmented exactly like classifier training.

    Random long-side resize in `resize_long`, or by a factor of the image's size in `scale_range` (IRNet's
    0.5..1.5), bicubic image, nearest label; random h-flip, random crop (padding: image 0, label 255). Only
    `ids` (those with an IR-label file) are used, in that order.
    """

    def __init__(
        self,
        source: SegmentationSource,
        label_dir: Path,
        ids: list[str],
        resize_long: tuple[int, int],
        crop: int,
        seed: int = 0,
        scale_range: tuple[float, ...] = (),
    ) -> None:
        super().__init__(source, resize_long, crop, seed=seed, augment=True, scale_range=scale_range)
        self.label_dir = Path(label_dir)
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def label_path(self, image_id: str) -> Path:
        return id_file(self.label_dir, image_id, ".png")

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        image = self.source.load_image(image_id)
        path = self.label_path(image_id)
        label = read_label_png(path, self.source.num_classes)
        if label.shape != image.shape[:2]:
            raise DataError(
                f"{path}: IR label is {label.shape[1]}x{label.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        long_side, flip, box = self._geometry(image.shape[0], image.shape[1], self.rng_for(index))
        label = resize_long_mask(label, long_side)
        if flip:
            label = hflip(label)
        label = apply_crop(label, box, self.crop, IGNORE_INDEX)
        return {
            "image": self._image_tensor(image, long_side, flip, box),
            "ir_label": torch.from_numpy(label.astype(np.int64)),
            "id": image_id,
        }


def labelled_ids(source: SegmentationSource, label_dir: Path) -> list[str]:
    """Ids of the split that have an IR-label file; the missing ones are reported in one warning line."""
    ids = [i for i in source.ids if id_file(label_dir, i, ".png").is_file()]
    missing = len(source.ids) - len(ids)
    if not ids:
        raise DataError(f"{label_dir}: no IR labels for split {source.split!r}; run the ir_label stage first")
    if missing:
        warn(f"irn: {missing} of {len(source.ids)} images have no IR label in {label_dir} and are skipped")
    return ids


def build_boundary_net(ctx: StageContext) -> BoundaryNet:
    n = ctx.config.irn
    torch.manual_seed(ctx.config.seed)
    options = {"infer_pad": n.infer_pad, "relu_after_upsample": n.relu_after_upsample}
    if n.backbone_from == "imagenet":
        return BoundaryNet.from_imagenet(n.backbone, n.weights, **options)
    if n.backbone_from == "cls":
        return BoundaryNet.from_classifier(ctx.run.classifier_checkpoint(ctx.config.method), **options)
    raise ConfigError(f"irn.backbone_from: must be 'imagenet' or 'cls', got {n.backbone_from!r}")


def run_irn(ctx: StageContext) -> None:
    cfg = ctx.config
    n = cfg.irn
    ctx.run.stage_dir(FOLDER)
    source = build_source(cfg.data, cfg.data.cam_split)
    label_dir = ctx.run.ir_labels_dir
    ids = labelled_ids(source, label_dir)
    dataset = IRLabelDataset(source, label_dir, ids, n.resize_long, n.crop, seed=cfg.seed, scale_range=n.scale_range)
    model = place_model(build_boundary_net(ctx), ctx.device)
    optimizer = sgd_optimizer([{"params": list(model.head_parameters())}], n.lr, n.momentum, n.weight_decay)
    window = n.pairs == "pathindex"

    def loss(forward: torch.nn.Module, sample: dict) -> torch.Tensor:
        aff = path_max_affinity(torch.sigmoid(forward(sample["image"])), n.radius)
        masks = pair_masks(downsample_labels(sample["ir_label"], n.label_offset), n.radius, window=window)
        total, _ = affinity_loss(aff, masks, global_batch_mean)
        return total

    job = TrainJob(
        stage=STAGE, metric_stage=STAGE, split=cfg.data.cam_split, model=model, optimizer=optimizer,
        dataset=dataset, epochs=n.epochs, batch_size=n.batch_size, last_path=ctx.run.last_checkpoint(STAGE), compute_loss=loss,
        hint="lower irn.lr or check the IR labels", checkpointed=model.head,
    )
    steps = run_epochs(ctx, job)
    if is_main():
        save_irn_checkpoint(
            ctx.run.checkpoint(STAGE), model, {"backbone_from": n.backbone_from, "radius": n.radius, "data": cfg.data.name}
        )
    classifier = ctx.run.classifier_checkpoint(cfg.method)
    loaded = weights_record(n.weights) if n.backbone_from == "imagenet" else {"classifier": str(classifier)}
    ctx.run.mark_done(
        STAGE, {"epochs": n.epochs, "steps": steps, "images": len(ids), "skipped": len(source.ids) - len(ids),
                "weights": loaded}
    )
