"""Stage `c2am`: fine-tune the baseline classifier with C2AM's scaled logits (docs/algorithms.md section 6).

Starts from RUNDIR/cls/ckpt.pt with BatchNorm in train mode and every layer trainable (the released
schedule; `c2am.freeze_bn`), trains `c2am.epochs` with BCE-with-logits of s_c * M_c (M_c from the global
CAM) at lr `c2am.lr` (head x `c2am.head_lr_mult`), and writes RUNDIR/c2am/ckpt.pt, which the cam stage then
uses with the plain logits.

The released fine-tune (C2AM's net/resnet50_cam.py, Net) is torchvision's ResNet-50 at output stride 32
with conv1 and bn1 frozen, while its CAMs come from the stride-16 network (CAM) with the same weights:
`c2am.output_stride` 32 and `c2am.freeze_stem` do the same here. Strides change no weight shape, so the
fine-tuned weights are saved in a classifier of the baseline's stride.
"""

from __future__ import annotations

import torch

from fastwsss.data import build_source
from fastwsss.data.datasets import ClassificationDataset
from fastwsss.engine.device import place_model
from fastwsss.engine.distributed import is_main
from fastwsss.engine.rundir import C2AM, CLS
from fastwsss.engine.training import TrainJob, run_epochs, sgd_optimizer, with_multipliers
from fastwsss.methods.c2am import c2am_loss, load_global_cam, logit_constants
from fastwsss.models.cam_net import CAMNet, load_cam_net, save_checkpoint
from fastwsss.stages.context import StageContext

STAGE = FOLDER = C2AM


def run_c2am_cls(ctx: StageContext) -> None:
    cfg = ctx.config
    m = cfg.c2am
    ctx.run.stage_dir(FOLDER)
    source = build_source(cfg.data, cfg.data.train_split)
    baseline, _ = load_cam_net(ctx.run.checkpoint(CLS), "cpu", expect_num_classes=source.num_classes)
    stride = m.output_stride or baseline.output_stride
    model = CAMNet(**{**baseline.init_kwargs, "freeze_bn": m.freeze_bn, "detach_early": False, "output_stride": stride,
                      "train_bn_affine": baseline.train_bn_affine and m.freeze_bn})
    model.load_state_dict(baseline.state_dict())
    if m.freeze_stem:
        for module in (model.backbone.stage1.conv1, model.backbone.stage1.bn1):
            module.requires_grad_(False)
    place_model(model, ctx.device)
    constants = logit_constants(load_global_cam(ctx.run.global_cam_file), m.gamma).to(ctx.device)
    if not m.scale_logits:  # the ablation control: same schedule, plain logits
        constants = torch.ones_like(constants)
    dataset = ClassificationDataset(source, cfg.cls.resize_long, cfg.cls.crop, seed=cfg.seed, augment=True)

    def loss(forward: torch.nn.Module, sample: dict) -> torch.Tensor:
        return c2am_loss(forward(sample["image"]), sample["label"], constants)

    job = TrainJob(
        stage=STAGE, metric_stage=STAGE, split=cfg.data.train_split, model=model,
        optimizer=sgd_optimizer(with_multipliers(model.param_groups(), m.head_lr_mult), m.lr, cfg.cls.momentum,
                                cfg.cls.weight_decay), dataset=dataset, epochs=m.epochs,
        batch_size=m.batch_size, last_path=ctx.run.last_checkpoint(STAGE), compute_loss=loss, hint="lower c2am.lr or check the global CAM",
    )
    steps = run_epochs(ctx, job)
    if is_main():
        saved = CAMNet(**{**model.init_kwargs, "output_stride": baseline.output_stride})
        saved.load_state_dict(model.state_dict())
        save_checkpoint(ctx.run.checkpoint(STAGE), saved, {"class_names": source.class_names, "data": cfg.data.name,
                                                           "logit_constants": constants.cpu(),
                                                           "trained_output_stride": stride})
    ctx.run.mark_done(STAGE, {"epochs": m.epochs, "steps": steps, "output_stride": stride,
                              "weights": {"classifier": str(ctx.run.checkpoint(CLS))}})
