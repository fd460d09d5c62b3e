"""Stage `cls`: train the CAM classifier (docs/algorithms.md section 2).

Multilabel soft-margin loss, SGD with poly lr (head lr x head_lr_mult), a resumable checkpoint after every
epoch (RUNDIR/cls/last.pt, see fastwsss.engine.training) and the final model in RUNDIR/cls/ckpt.pt.

A method may give the classifier an extra input map (`Method.classifier_input`; CONTA's M_t in rounds
t >= 1): the CAMNet then has its extra channels, the method wraps it in the model that is trained and
saves what it added after training. Every round starts from the same initialisation as round 0, so the
extra input is the only thing that differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastwsss.data import build_source
from fastwsss.data.datasets import ClassificationDataset
from fastwsss.engine.device import place_model
from fastwsss.engine.distributed import is_main
from fastwsss.engine.rundir import CLS
from fastwsss.engine.training import TrainJob, run_epochs, sgd_optimizer, with_multipliers
from fastwsss.engine.weights import weights_record
from fastwsss.methods import ClassifierInput, get_method
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.stages.context import StageContext

STAGE = FOLDER = CLS


def classifier_input(ctx: StageContext) -> ClassifierInput | None:
    """The extra input map of the classifier in this stage context, or None (the image alone)."""
    hook = get_method(ctx.config.method).classifier_input
    return hook(ctx) if hook is not None else None


def build_classifier(ctx: StageContext, num_classes: int, extra: ClassifierInput | None = None) -> CAMNet:
    c = ctx.config.cls
    torch.manual_seed(ctx.config.seed)
    where = {} if extra is None else {"extra_channels": extra.channels, "extra_at": extra.at}
    return CAMNet(
        c.backbone,
        num_classes,
        output_stride=c.output_stride,
        weights=c.weights,
        freeze_bn=c.freeze_bn,
        detach_early=c.detach_early,
        train_bn_affine=c.train_bn_affine,
        **where,
    )


def run_cls(ctx: StageContext) -> None:
    cfg = ctx.config
    c = cfg.cls
    ctx.run.stage_dir(FOLDER)
    source = build_source(cfg.data, cfg.data.train_split)
    source.check_files()
    dataset = ClassificationDataset(source, c.resize_long, c.crop, seed=cfg.seed, augment=True)
    extra = classifier_input(ctx)
    net = place_model(build_classifier(ctx, source.num_classes, extra), ctx.device)
    model: nn.Module = net
    if extra is not None:
        model = extra.wrap(net).to(ctx.device)

        def loss(forward: nn.Module, sample: dict) -> torch.Tensor:
            maps = extra.batch(sample["id"]).to(ctx.device)
            return F.multilabel_soft_margin_loss(forward(sample["image"], maps), sample["label"])
    else:

        def loss(forward: nn.Module, sample: dict) -> torch.Tensor:
            return F.multilabel_soft_margin_loss(forward(sample["image"]), sample["label"])

    job = TrainJob(
        stage=STAGE, metric_stage=STAGE, split=cfg.data.train_split, model=model,
        optimizer=sgd_optimizer(with_multipliers(model.param_groups(), c.head_lr_mult), c.lr, c.momentum, c.weight_decay), dataset=dataset, epochs=c.epochs,
        batch_size=c.batch_size, last_path=ctx.run.last_checkpoint(STAGE), compute_loss=loss, hint="lower cls.lr (--lr) or check the data",
    )
    steps = run_epochs(ctx, job)
    if is_main():
        if extra is not None:
            extra.save(model)
        save_checkpoint(ctx.run.checkpoint(STAGE), net, {"class_names": source.class_names, "data": cfg.data.name})
    ctx.run.mark_done(STAGE, {"epochs": c.epochs, "steps": steps, "weights": weights_record(c.weights)})
