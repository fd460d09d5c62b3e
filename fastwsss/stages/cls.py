"""Stage `cls`: train the CAM classifier (ALGORITHMS.md section 2).

Multilabel soft-margin loss, SGD with poly lr (head lr x head_lr_mult), a resumable checkpoint after every
epoch (RUNDIR/cls/last.pt) and the final model in RUNDIR/cls/ckpt.pt. Data order and augmentation are
functions of (seed, epoch, index), so a resumed run trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fastwsss.data import build_source
from fastwsss.data.datasets import ClassificationDataset
from fastwsss.errors import CheckpointError, FastwsssError
from fastwsss.io import atomic_path
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.progress import log, make_progress
from fastwsss.stages.context import StageContext

STAGE = FOLDER = "cls"


def poly_lr(base_lr: float, step: int, max_step: int, power: float = 0.9) -> float:
    return base_lr * (1.0 - step / max_step) ** power


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch, a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_items, generator=generator).tolist()


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
    out = ctx.run.stage_dir(STAGE)
    source = build_source(cfg.data, cfg.data.train_split)
    source.check_files()
    dataset = ClassificationDataset(source, c.resize_long, c.crop, seed=cfg.seed, augment=True)
    model = build_classifier(ctx, source.num_classes).to(ctx.device)
    optimizer = make_optimizer(model, ctx)

    batch = min(c.batch_size, len(dataset))
    steps_per_epoch = len(dataset) // batch
    max_step = steps_per_epoch * c.epochs
    start_epoch, step = 0, 0
    last_path = out / "last.pt"
    if ctx.resume and last_path.is_file():
        try:
            state = torch.load(last_path, map_location=ctx.device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:
            raise CheckpointError(f"{last_path}: cannot resume from this checkpoint ({exc})") from exc
        start_epoch, step = state["epoch"] + 1, state["step"]
        log(f"cls: resuming after epoch {start_epoch} of {c.epochs} from {last_path}")

    with make_progress() as progress:
        task = progress.add_task("cls: train", total=max_step, completed=step, info="")
        for epoch in range(start_epoch, c.epochs):
            dataset.set_epoch(epoch)
            order = epoch_order(len(dataset), cfg.seed, epoch)[: steps_per_epoch * batch]
            loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=cfg.data.num_workers, drop_last=True)
            model.train()
            total, count = 0.0, 0
            for sample in loader:
                images = sample["image"].to(ctx.device, non_blocking=True)
                labels = sample["label"].to(ctx.device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = poly_lr(group["initial_lr"], step, max_step)
                loss = F.multilabel_soft_margin_loss(model(images), labels)
                if not math.isfinite(loss.item()):
                    raise FastwsssError(
                        f"cls: loss is {loss.item()} at epoch {epoch + 1} step {step + 1}; the last good checkpoint "
                        f"stays at {last_path if last_path.exists() else 'none (first epoch)'}; lower --lr or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                total += loss.item()
                count += 1
                progress.update(task, advance=1, info=f"epoch {epoch + 1}/{c.epochs} loss {total / count:.4f}")
                ctx.step(STAGE, step)
            with atomic_path(last_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step}, tmp)
            ctx.run.log_metric(
                {"stage": STAGE, "split": cfg.data.train_split, "method": cfg.method, "epoch": epoch + 1,
                 "loss": total / max(count, 1), "miou": None, "per_class_iou": None}
            )
    save_checkpoint(out / "ckpt.pt", model, {"class_names": source.class_names, "data": cfg.data.name})
    ctx.run.mark_done(STAGE, {"epochs": c.epochs, "steps": step})
