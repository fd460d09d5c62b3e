"""Stage `confounder` (CONTA rounds t >= 1): X_m and the confounder set C from round t-1's masks.

Reads round t-1's segmentation predictions (`conta.mask_source = seg`, the paper's choice) or pseudo
masks (`pseudo`) for the classifier's training images and the CAM images; training images the previous
round did not predict (VOC: train_aug outside train) are predicted here with its DeepLab. Writes
RUNDIR/rounds/<t>/confounder/confounders.npy (C, n x hw), xm.npz (X_m per image) and confounders.png
(a picture of C). Under torchrun the images still to predict are sharded over the ranks (each loads the
DeepLab on its own device); rank 0 alone then builds C and X_m, which reads every mask once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastwsss.algorithms.seg_inference import predict_mask
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource, read_label_png
from fastwsss.data.palette import save_mask_png
from fastwsss.engine.device import place_model
from fastwsss.engine.distributed import barrier, on_main, shard
from fastwsss.engine.files import atomic_path
from fastwsss.engine.progress import log, track, warn
from fastwsss.engine.rundir import CONFOUNDER, SEG, RunDir, id_file
from fastwsss.errors import CheckpointError, DataError
from fastwsss.methods.conta import (
    ConfounderAttention,
    ConfounderSetBuilder,
    ContextClassifier,
    MaskTable,
    foreground_map,
)
from fastwsss.models.checkpoint import save_torch_file
from fastwsss.models.deeplab import load_seg_model
from fastwsss.reporting.visual import heatmap_sheet
from fastwsss.stages.context import StageContext

FOLDER = CONFOUNDER


def load_confounders(round_path: Path) -> tuple[torch.Tensor, MaskTable]:
    """(C as a float32 tensor (n, hw), the X_m table) of the round at `round_path`."""
    round_dir = RunDir(Path(round_path))
    path = round_dir.confounders_file
    if not path.is_file():
        raise CheckpointError(f"{path}: confounder set not found (run the confounder stage of this round first)")
    return torch.from_numpy(np.load(path, allow_pickle=False)), MaskTable.load(round_dir.xm_file)


def load_attention(round_path: Path) -> tuple[ConfounderAttention, MaskTable]:
    """A CONTA round's trained Eq. 3 attention (eval mode) and its X_m table."""
    confounders, table = load_confounders(round_path)
    path = RunDir(Path(round_path)).attention_file
    if not path.is_file():
        raise CheckpointError(f"{path}: CONTA attention weights not found (run this round's cls stage)")
    attention = ConfounderAttention(confounders)
    attention.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return attention.eval(), table


class ContextInput:
    """CONTA's M_t as the classifier's extra channel in a round >= 1 (`Method.classifier_input`).

    s = f([X, M_t]) (ContextClassifier): a CAMNet with one extra channel at `conta.extra_at`, and the Eq. 3
    attention whose W1, W2 train with it, saved beside the classifier as rounds/<t>/cls/attention.pt.
    """

    channels = 1

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.at = ctx.config.conta.extra_at
        self.table: MaskTable | None = None

    def wrap(self, net: nn.Module) -> nn.Module:
        cfg = self.ctx.config
        confounders, self.table = load_confounders(self.ctx.run.path)
        attention = ConfounderAttention(confounders, seed=cfg.seed)
        return ContextClassifier(net, attention, cfg.conta.attention_lr_mult * cfg.cls.head_lr_mult)

    def batch(self, ids: list[str]) -> torch.Tensor:
        if self.table is None:
            raise RuntimeError("ContextInput.batch before wrap")
        return self.table.batch(ids)

    def save(self, model: nn.Module) -> None:
        save_torch_file(model.attention.state_dict(), self.ctx.run.attention_file, checksum=False)  # a plain state dict


def context_maps(ctx: StageContext) -> Callable[[str], torch.Tensor]:
    """image id -> the classifier's M_t (1, S, S) of this round, for the cam stage (`Method.cam_input`)."""
    attention, table = load_attention(ctx.run.path)

    def extra(image_id: str) -> torch.Tensor:
        with torch.no_grad():
            return attention(table.batch([image_id]))[0]

    return extra


def _predict_missing(ctx: StageContext, ids: list[str], source: SegmentationSource, out: Path) -> None:
    model, _ = load_seg_model(ctx.previous_round().checkpoint(SEG), ctx.device, source.num_classes + 1)
    place_model(model, ctx.device).eval()
    for image_id in track(ids, "confounder: predict X_m"):
        try:
            image = source.load_image(image_id)
        except DataError as exc:
            warn(f"{exc}; no prediction, so its X_m is left at zero")
            continue
        save_mask_png(predict_mask(model, image, ctx.device, ctx.config.seg.msc_scales), id_file(out, image_id, ".png"))


def run_confounder(ctx: StageContext) -> None:
    cfg = ctx.config
    t = cfg.conta
    ctx.run.stage_dir(FOLDER)
    prev = ctx.previous_round()
    mask_dir = prev.seg_predictions_dir if t.mask_source == "seg" else prev.pseudo_dir
    own_dir = ctx.run.confounder_predictions_dir
    train = build_source(cfg.data, cfg.data.train_split)
    cam = build_source(cfg.data, cfg.data.cam_split)
    train_ids = set(train.ids)
    ids = train.ids + [i for i in cam.ids if i not in train_ids]

    def mask_path(image_id: str) -> Path:
        own = id_file(own_dir, image_id, ".png")
        return own if own.is_file() else id_file(mask_dir, image_id, ".png")

    def still_missing() -> list[str]:
        missing = [i for i in ids if not mask_path(i).is_file()]
        if missing and t.mask_source == "pseudo":
            raise DataError(f"{mask_dir}: no pseudo mask for {len(missing)} images (first {missing[0]}); "
                            "set conta.mask_source=seg or make pseudo masks for data.train_split")
        if missing:
            log(f"confounder: predicting {len(missing)} training images round {ctx.round - 1} did not predict")
            own_dir.mkdir(exist_ok=True)
        return missing

    missing = on_main(still_missing)  # one list for every rank, taken before any rank writes a prediction
    if missing:
        _predict_missing(ctx, shard(missing), train, own_dir)
    barrier()  # every rank's predictions are on disk before rank 0 reads them
    on_main(lambda: _write_confounders(ctx, train, ids, mask_path, len(missing)))


def _write_confounders(
    ctx: StageContext, train: SegmentationSource, ids: list[str], mask_path: Callable[[str], Path], predicted: int
) -> None:
    """C from the training images' masks, X_m of every image, the picture of C and the DONE marker."""
    t = ctx.config.conta
    ctx.run.stage_dir(FOLDER)
    train_ids = set(train.ids)
    builder = ConfounderSetBuilder(train.num_classes, t.mask_size)
    maps = np.zeros((len(ids), t.mask_size**2), np.float32)
    for k, image_id in enumerate(track(ids, "confounder: C and X_m")):
        try:
            mask = read_label_png(mask_path(image_id), train.num_classes)
        except DataError as exc:
            warn(f"{exc}; its X_m is left at zero")
            continue
        maps[k] = foreground_map(mask, t.mask_size)
        if image_id in train_ids:
            builder.add(mask, train.labels(image_id))
    confounders = builder.result()
    with atomic_path(ctx.run.confounders_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, confounders)
    MaskTable(ids, maps).save(ctx.run.xm_file)
    side = t.mask_size
    heatmap_sheet(confounders.reshape(-1, side, side), train.class_names, ctx.run.confounders_picture)
    empty = [train.class_names[i] for i in np.flatnonzero(builder.counts == 0)]
    if empty:
        warn(f"confounder: no training image is tagged {', '.join(empty)}; their rows of C are zero")
    ctx.run.mark_done(FOLDER, {"images": len(ids), "mask_source": t.mask_source, "predicted_here": predicted,
                               "class_images": builder.counts.tolist()})
