"""Stage `seg`: train DeepLab on the pseudo masks, evaluate it, predict the CAM split (docs/algorithms.md sections 8-9).

Training data: the images of `data.cam_split` with RUNDIR/pseudo/<id>.png (P-mode, 0 = background, 1..K)
as their masks; images without a pseudo mask are left out with one summary warning. Augmentation: the long
side is drawn uniformly from the integers round(scale_range[0] * L) .. round(scale_range[1] * L), L being
that image's own long side (a simple form of DeepLab's 0.5-1.5 rescaling), then a random h-flip and a
random crop of `seg.crop` (images padded with the mean colour, masks with 255). Like `cls`, data order and
augmentation are functions of (seed, epoch, index) and the global torch RNG state is checkpointed, so a
resumed run trains exactly as an uninterrupted one.

Loss: pixel cross entropy with 255 ignored (a batch with no labelled pixel contributes 0, not NaN). SGD
with momentum and weight decay, poly lr (power 0.9) per step, head lr x `head_lr_mult`.

The released DeepLab schedule (CONTA / C2AM segmentation/main.py) is a set of settings, used by the
`voc`/`coco` presets: `seg.iterations` steps of `seg.batch_size` images in `seg.iter_size` forward chunks,
the poly lr recomputed every `seg.lr_step` steps, rescale factors drawn from `seg.scales`, BatchNorm frozen
(`seg.freeze_bn`), the 1x/10x/20x parameter groups (`seg.param_groups`), the loss at the logit grid with
nearest-downsampled labels (`seg.loss_at`) summed over the MSC outputs (`seg.msc_scales`), whose max also
gives the predictions (fastwsss.models.msc).

Outputs: RUNDIR/seg/last.pt (after every epoch), ckpt.pt (final), pred/<id>.png (palette PNG of every
cam-split image, used by CONTA), metrics rows `seg_train` per epoch and `seg` for the val split and for
the cam split (each scored against its ground truth when it has one). `ctx.step("seg", step)` runs after
every optimiser step and `ctx.step("seg_pred", count)` after every written prediction. Under torchrun
the training is DistributedDataParallel and each rank evaluates and predicts its shard of the images; the
confusion matrices are summed, so the rows equal a single process's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastwsss.algorithms.metrics import ConfusionMeter, score_row
from fastwsss.algorithms.seg_inference import predict_mask
from fastwsss.config import SegConfig
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource, read_label_png
from fastwsss.data.datasets import SegmentationDataset
from fastwsss.data.palette import IGNORE_INDEX, save_mask_png
from fastwsss.engine.device import place_model
from fastwsss.engine.distributed import BatchMean, global_batch_mean, is_main, local_mean, shard, sum_array
from fastwsss.engine.progress import track, warn
from fastwsss.engine.rundir import SEG, id_file
from fastwsss.engine.training import TrainJob, run_epochs, sgd_optimizer, with_multipliers
from fastwsss.engine.weights import weights_record
from fastwsss.errors import ConfigError, DataError, FastwsssError
from fastwsss.models.cam_net import load_cam_net
from fastwsss.models.deeplab import SegModel, build_seg_model, save_seg_checkpoint
from fastwsss.models.msc import deeplab_param_groups, msc_outputs, nearest_labels
from fastwsss.stages.context import StageContext

STAGE = FOLDER = SEG


class PseudoMaskSource(SegmentationSource):
    """The images of `base` whose pseudo mask exists in `pseudo_dir`, with that mask as their mask."""

    def __init__(self, base: SegmentationSource, pseudo_dir: Path) -> None:
        super().__init__(base.root, base.split, base.class_names)
        self.base = base
        self.pseudo_dir = Path(pseudo_dir)
        self._ids = [i for i in base.ids if self.mask_path(i).is_file()]
        self.missing = len(base.ids) - len(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def image_path(self, image_id: str) -> Path:
        return self.base.image_path(image_id)

    def load_image(self, image_id: str) -> np.ndarray:
        return self.base.load_image(image_id)

    def mask_path(self, image_id: str) -> Path:
        return id_file(self.pseudo_dir, image_id, ".png")


class ScaledSegmentationDataset(SegmentationDataset):
    """A SegmentationDataset whose random long side is a multiple of each image's own: uniform in
    `scale_range`, or a factor drawn from `scales` when that is not empty (DeepLab's set).

    The parent's fixed `resize_long` range is not used when augmenting; evaluation mode (augment=False)
    behaves as the parent's.
    """

    def __init__(
        self,
        source: SegmentationSource,
        scale_range: tuple[float, float],
        crop: int,
        seed: int = 0,
        augment: bool = True,
        scales: tuple[float, ...] = (),
    ) -> None:
        super().__init__(source, (crop, crop), crop, seed=seed, augment=augment, scale_range=scale_range,
                         scale_set=scales)


def pseudo_source(base: SegmentationSource, pseudo_dir: Path) -> PseudoMaskSource:
    """The training source; FastwsssError naming `pseudo_dir` when it holds no mask for the split."""
    source = PseudoMaskSource(base, pseudo_dir)
    if not source.ids:
        raise FastwsssError(
            f"{pseudo_dir}: no pseudo masks for the {len(base.ids)} images of split {base.split!r}; "
            "run the pseudo stage first"
        )
    if source.missing:
        warn(
            f"seg: {source.missing} of {len(base.ids)} images of {base.split!r} have no pseudo mask in {pseudo_dir}; skipped"
        )
    return source


def _make_optimizer(model: SegModel, s: SegConfig) -> torch.optim.SGD:
    """DeepLab's three released groups (`seg.param_groups` "deeplab"), or backbone and head at lr x head_lr_mult."""
    if s.param_groups == "deeplab":
        groups = deeplab_param_groups(model, s.head_lr_mult, s.weight_decay)
    else:
        groups = with_multipliers(list(model.param_groups()), s.head_lr_mult)
    return sgd_optimizer(groups, s.lr, s.momentum, s.weight_decay)


def msc_loss(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, s: SegConfig,
             batch_mean: BatchMean = local_mean) -> torch.Tensor:
    """Sum of `seg_loss` over the MSC outputs, each against the labels at its grid (`seg.loss_at` "logits")
    or upsampled to the crop ("input")."""
    total = images.new_zeros(())
    for logits in msc_outputs(model, images, s.msc_scales):
        if s.loss_at == "logits":
            total = total + seg_loss(logits, nearest_labels(masks, tuple(logits.shape[-2:])), batch_mean)
        else:
            upsampled = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
            total = total + seg_loss(upsampled, masks, batch_mean)
    return total


def seg_loss(logits: torch.Tensor, masks: torch.Tensor, batch_mean: BatchMean = local_mean) -> torch.Tensor:
    """Mean pixel cross entropy over the labelled pixels (255 ignored); 0 when there are none.

    `batch_mean` is `global_batch_mean` under DistributedDataParallel: the mean over the global batch's pixels.
    """
    total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return batch_mean(total, (masks != IGNORE_INDEX).sum())


def init_from_classifier(model: SegModel, checkpoint: Path) -> None:
    """Start the segmentation backbone from a trained CAM classifier's (seg.init = "classifier").

    Both are the same registered backbone; dilation changes no weight shape, and a CONTA classifier's extra
    input channels are dropped (`CAMNet.image_backbone`)."""
    net, _ = load_cam_net(checkpoint)
    trunk = net.image_backbone()
    try:
        model.backbone.load_state_dict(trunk.state_dict())
    except (AttributeError, RuntimeError) as exc:
        raise ConfigError(f"seg.init: {checkpoint}: the classifier's backbone does not fit the "
                          f"{model.init_kwargs['name']} backbone ({type(exc).__name__})") from exc


def train_seg(ctx: StageContext, source: SegmentationSource) -> tuple[SegModel, int]:
    """Train (or resume training) on `source`; returns the trained model and the number of steps."""
    cfg = ctx.config
    s = cfg.seg
    dataset = ScaledSegmentationDataset(source, s.scale_range, s.crop, seed=cfg.seed, augment=True, scales=s.scales)
    if s.model == "deeplabv3" and min(s.batch_size, len(dataset)) < 2:
        raise ConfigError(f"seg.batch_size: deeplabv3 trains on batches of >= 2 images, got {len(dataset)} image(s)")
    if min(s.batch_size, len(dataset)) % s.iter_size:
        raise ConfigError(f"seg.iter_size: {len(dataset)} training image(s) do not split into {s.iter_size} chunks")
    torch.manual_seed(cfg.seed)
    model = place_model(build_seg_model(s.model, s.backbone, source.num_classes + 1, s.weights), ctx.device)
    if s.init == "classifier":
        init_from_classifier(model, ctx.run.classifier_checkpoint(cfg.method))
    if s.freeze_bn:
        model.freeze_batchnorm()
    released = s.msc_scales or s.loss_at != "input"

    def loss(forward: nn.Module, sample: dict) -> torch.Tensor:
        if released:
            return msc_loss(forward, sample["image"], sample["mask"], s, global_batch_mean)
        return seg_loss(forward(sample["image"]), sample["mask"], global_batch_mean)

    job = TrainJob(
        stage=STAGE, metric_stage="seg_train", split=source.split, model=model, optimizer=_make_optimizer(model, s),
        dataset=dataset, epochs=s.epochs, batch_size=s.batch_size, last_path=ctx.run.last_checkpoint(STAGE), compute_loss=loss,
        hint="lower seg.lr or check the pseudo masks", max_steps=s.iterations or None, accumulate=s.iter_size,
        lr_step=s.lr_step,
    )
    return model, run_epochs(ctx, job)


def _score_row(ctx: StageContext, source: SegmentationSource, meter: ConfusionMeter, images: int) -> dict[str, Any]:
    return score_row(STAGE, source.split, ctx.config.method, meter, source.class_names, images)


def _ground_truth(source: SegmentationSource, image_id: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The ground-truth mask, or None (with a warning) when it cannot be read or has another size."""
    try:
        gt = source.load_mask(image_id)
    except DataError as exc:
        warn(str(exc))
        return None
    if gt.shape != shape:
        warn(f"{source.mask_path(image_id)}: mask is {gt.shape} but the prediction is {shape}; not scored")
        return None
    return gt


def _predict(ctx: StageContext, model: SegModel, image: np.ndarray) -> np.ndarray:
    """`predict_mask` with the run's test-time settings (MSC scales, CRF, colour refinement)."""
    s = ctx.config.seg
    return predict_mask(model, image, ctx.device, s.msc_scales, s.crf, s.refine_iterations)


def evaluate_split(ctx: StageContext, model: SegModel, source: SegmentationSource) -> dict[str, Any] | None:
    """mIoU of the model's predictions on `source` against its ground truth; None where it has none."""
    if not source.has_masks():
        warn(f"seg: split {source.split!r} has no ground-truth masks; not evaluated")
        return None
    meter = ConfusionMeter(source.num_classes + 1)
    scored = 0
    for image_id in track(shard(source.ids), f"seg: eval ({source.split})"):
        try:
            image = source.load_image(image_id)
        except DataError as exc:
            warn(str(exc))
            continue
        pred = _predict(ctx, model, image)
        gt = _ground_truth(source, image_id, pred.shape)
        if gt is not None:
            meter.update(pred, gt)
            scored += 1
    return _log_score(ctx, source, meter, scored)


def _log_score(ctx: StageContext, source: SegmentationSource, meter: ConfusionMeter, scored: int) -> dict[str, Any] | None:
    """Sum the ranks' confusion matrices (each scored its shard) and log the row; None when nothing was scored."""
    meter.matrix = sum_array(meter.matrix)
    scored = int(sum_array(np.array([scored]))[0])
    return ctx.run.log_metric(_score_row(ctx, source, meter, scored)) if scored else None


def predict_split(
    ctx: StageContext, model: SegModel, source: SegmentationSource, pred_dir: Path
) -> tuple[int, dict[str, Any] | None]:
    """Write pred_dir/<id>.png for every image of `source` and score them when the split has masks.

    On resume an existing prediction (written atomically, so complete) is read back instead of redone.
    Returns (number of predictions available, metrics row or None).
    """
    score = source.has_masks()
    meter = ConfusionMeter(source.num_classes + 1)
    done = scored = count = 0
    for image_id in track(shard(source.ids), f"seg: predict ({source.split})"):
        path = id_file(pred_dir, image_id, ".png")
        try:
            if ctx.resume and path.is_file():
                pred = read_label_png(path, source.num_classes)
            else:
                pred = _predict(ctx, model, source.load_image(image_id))
                save_mask_png(pred, path)
                count += 1
                ctx.step("seg_pred", count)
        except DataError as exc:
            warn(str(exc))
            continue
        done += 1
        gt = _ground_truth(source, image_id, pred.shape) if score else None
        if gt is not None:
            meter.update(pred, gt)
            scored += 1
    done = int(sum_array(np.array([done]))[0])
    if done < len(source.ids) and is_main():
        warn(f"seg: {len(source.ids) - done} of {len(source.ids)} images of {source.split!r} could not be predicted")
    return done, _log_score(ctx, source, meter, scored)


def run_seg(ctx: StageContext) -> None:
    cfg = ctx.config
    ctx.run.stage_dir(FOLDER)
    base = build_source(cfg.data, cfg.data.cam_split)
    source = pseudo_source(base, ctx.run.pseudo_dir)
    model, steps = train_seg(ctx, source)
    if is_main():
        save_seg_checkpoint(ctx.run.checkpoint(STAGE), model, {"class_names": base.class_names, "data": cfg.data.name})
    model.eval()
    val_row = evaluate_split(ctx, model, build_source(cfg.data, cfg.data.val_split))
    for split in cfg.data.test_splits:
        evaluate_split(ctx, model, build_source(cfg.data, split))
    predicted, cam_row = predict_split(ctx, model, base, ctx.run.seg_predictions_dir)
    ctx.run.mark_done(
        FOLDER,
        {
            "epochs": cfg.seg.epochs,
            "steps": steps,
            "weights": weights_record(cfg.seg.weights),
            "init": cfg.seg.init,
            "train_images": len(source.ids),
            "predicted": predicted,
            "val_miou": None if val_row is None else val_row["miou"],
            "cam_split_miou": None if cam_row is None else cam_row["miou"],
        },
    )
