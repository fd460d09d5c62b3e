"""Stage `cls`: train the CAM classifier (ALGORITHMS.md section 2).

Multilabel soft-margin loss, SGD with poly lr (head lr x head_lr_mult), a resumable checkpoint after every
epoch (RUNDIR/cls/last.pt, see fastwsss.training) and the final model in RUNDIR/cls/ckpt.pt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastwsss.data import build_source
from fastwsss.data.datasets import ClassificationDataset
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.stages.context import StageContext
from fastwsss.training import TrainJob, run_epochs

STAGE = FOLDER = "cls"


def build_classifier(ctx: StageContext, num_classes: int) -> CAMNet:
    c = ctx.config.cls
    torch.manual_seed(ctx.config.seed)
    return CAMNet(
        c.backbone,
        num_classes,
        output_stride=c.output_stride,
        weights=c.weights,
        freeze_bn=c.freeze_bn,
        detach_early=c.detach_early,
    )


def make_optimizer(model: CAMNet, ctx: StageContext) -> torch.optim.SGD:
    c = ctx.config.cls
    backbone_group, head_group = model.param_groups()
    groups = [
        {**backbone_group, "lr": c.lr, "initial_lr": c.lr},
        {**head_group, "lr": c.lr * c.head_lr_mult, "initial_lr": c.lr * c.head_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def run_cls(ctx: StageContext) -> None:
    cfg = ctx.config
    c = cfg.cls
    out = ctx.run.stage_dir(FOLDER)
    source = build_source(cfg.data, cfg.data.train_split)
    source.check_files()
    dataset = ClassificationDataset(source, c.resize_long, c.crop, seed=cfg.seed, augment=True)
    model = build_classifier(ctx, source.num_classes).to(ctx.device)

    def loss(sample: dict) -> torch.Tensor:
        return F.multilabel_soft_margin_loss(model(sample["image"]), sample["label"])

    job = TrainJob(
        stage=STAGE, metric_stage=STAGE, split=cfg.data.train_split, model=model,
        optimizer=make_optimizer(model, ctx), dataset=dataset, epochs=c.epochs, batch_size=c.batch_size,
        last_path=out / "last.pt", compute_loss=loss, hint="lower cls.lr (--lr) or check the data",
    )
    steps = run_epochs(ctx, job)
    save_checkpoint(out / "ckpt.pt", model, {"class_names": source.class_names, "data": cfg.data.name})
    ctx.run.mark_done(STAGE, {"epochs": c.epochs, "steps": steps})
