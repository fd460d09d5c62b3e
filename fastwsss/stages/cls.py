"""Stage `cls`: train the CAM classifier (docs/algorithms.md section 2).

Multilabel soft-margin loss, SGD with poly lr (head lr x head_lr_mult), a resumable checkpoint after every
epoch (RUNDIR/cls/last.pt, see fastwsss.training) and the final model in RUNDIR/cls/ckpt.pt.

In CONTA rounds t >= 1 the classifier is s = f([X, M_t]) (fastwsss.methods.conta.ContextClassifier): a
CAMNet with one extra channel at `conta.extra_at`, and the Eq. 3 attention whose W1, W2 train with it.
Every round starts from the same initialisation as round 0, so M_t is the only thing that differs. The
attention is saved beside the classifier as RUNDIR/rounds/<t>/cls/attention.pt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastwsss.data import build_source
from fastwsss.data.datasets import ClassificationDataset
from fastwsss.distributed import is_main
from fastwsss.errors import CheckpointError
from fastwsss.methods.conta import ConfounderAttention, ContextClassifier, MaskTable
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.models.checkpoint import save_torch_file
from fastwsss.rundir import CLS, RunDir
from fastwsss.stages.confounder import load_confounders
from fastwsss.stages.context import StageContext
from fastwsss.training import TrainJob, run_epochs
from fastwsss.weights import weights_record

STAGE = FOLDER = CLS


def uses_context(ctx: StageContext) -> bool:
    """True in CONTA rounds >= 1, where the classifier also sees M_t."""
    return ctx.config.method == "conta" and (ctx.round or 0) >= 1


def build_classifier(ctx: StageContext, num_classes: int, extra_channels: int = 0) -> CAMNet:
    c = ctx.config.cls
    torch.manual_seed(ctx.config.seed)
    return CAMNet(
        c.backbone,
        num_classes,
        output_stride=c.output_stride,
        weights=c.weights,
        freeze_bn=c.freeze_bn,
        detach_early=c.detach_early,
        extra_channels=extra_channels,
        extra_at=ctx.config.conta.extra_at,
        train_bn_affine=c.train_bn_affine,
    )


def make_optimizer(groups: list[dict[str, Any]], lr: float, ctx: StageContext) -> torch.optim.SGD:
    """SGD over parameter groups, each at lr x its "lr_mult" (default 1); `initial_lr` drives the poly schedule."""
    c = ctx.config.cls
    groups = [{**g, "lr": lr * g.get("lr_mult", 1.0), "initial_lr": lr * g.get("lr_mult", 1.0)} for g in groups]
    return torch.optim.SGD(groups, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)


def with_multipliers(groups: list[dict[str, Any]], head_lr_mult: float) -> list[dict[str, Any]]:
    """[backbone, head, ...] groups with the head's multiplier set (later groups keep theirs, else the head's)."""
    backbone, head, *rest = groups
    return [backbone, {**head, "lr_mult": head_lr_mult}, *({"lr_mult": head_lr_mult, **g} for g in rest)]


def load_attention(round_path: Path) -> tuple[ConfounderAttention, MaskTable]:
    """A CONTA round's trained Eq. 3 attention (eval mode) and its X_m table."""
    confounders, table = load_confounders(round_path)
    path = RunDir(Path(round_path)).attention_file
    if not path.is_file():
        raise CheckpointError(f"{path}: CONTA attention weights not found (run this round's cls stage)")
    attention = ConfounderAttention(confounders)
    attention.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return attention.eval(), table


def run_cls(ctx: StageContext) -> None:
    cfg = ctx.config
    c = cfg.cls
    ctx.run.stage_dir(FOLDER)
    source = build_source(cfg.data, cfg.data.train_split)
    source.check_files()
    dataset = ClassificationDataset(source, c.resize_long, c.crop, seed=cfg.seed, augment=True)
    net = build_classifier(ctx, source.num_classes, extra_channels=1 if uses_context(ctx) else 0).to(ctx.device)
    model: nn.Module = net
    if uses_context(ctx):
        confounders, table = load_confounders(ctx.run.path)
        attention = ConfounderAttention(confounders, seed=cfg.seed)
        model = ContextClassifier(net, attention, cfg.conta.attention_lr_mult * c.head_lr_mult).to(ctx.device)

        def loss(forward: nn.Module, sample: dict) -> torch.Tensor:
            xm = table.batch(sample["id"]).to(ctx.device)
            return F.multilabel_soft_margin_loss(forward(sample["image"], xm), sample["label"])
    else:

        def loss(forward: nn.Module, sample: dict) -> torch.Tensor:
            return F.multilabel_soft_margin_loss(forward(sample["image"]), sample["label"])

    job = TrainJob(
        stage=STAGE, metric_stage=STAGE, split=cfg.data.train_split, model=model,
        optimizer=make_optimizer(with_multipliers(model.param_groups(), c.head_lr_mult), c.lr, ctx), dataset=dataset, epochs=c.epochs,
        batch_size=c.batch_size, last_path=ctx.run.last_checkpoint(STAGE), compute_loss=loss, hint="lower cls.lr (--lr) or check the data",
    )
    steps = run_epochs(ctx, job)
    if is_main():
        if isinstance(model, ContextClassifier):
            save_torch_file(model.attention.state_dict(), ctx.run.attention_file, checksum=False)  # a plain state dict
        save_checkpoint(ctx.run.checkpoint(STAGE), net, {"class_names": source.class_names, "data": cfg.data.name})
    ctx.run.mark_done(STAGE, {"epochs": c.epochs, "steps": steps, "weights": weights_record(c.weights)})
