"""Where each released value of the `voc` and `coco` presets comes from: file and line of the released code
(jiwoon-ahn/irn a2ece00, yiping-wang/c2am ae1639f, dongzhang89/CONTA e19d692) or the paper section.

`fastwsss presets voc [--method c2am|conta]` prints every setting with its source, so that a reviewer can
check a preset in one read (docs/reproduce.md). Settings without an entry are this project's own (paths,
workers, the seed) or have no released counterpart.
"""

from __future__ import annotations

from fastwsss.methods import get_method

IRN = "jiwoon-ahn/irn"
C2AM = "yiping-wang/c2am"
CONTA = "dongzhang89/CONTA"
DEEPLAB = f"{CONTA} segmentation"

IRNET_SOURCES: dict[str, str] = {
    "data.train_split": f"{IRN} run_sample.py:16 (--train_list voc12/train_aug.txt)",
    "data.val_split": f"{IRN} run_sample.py:17",
    "data.eval_split": f"{IRN} run_sample.py:21 (chainer_eval_set train), step/eval_cam.py:8, step/eval_sem_seg.py:9",
    "data.cam_split": f"{IRN} step/make_cam.py:69, step/cam_to_ir_label.py:50, step/train_irn.py:17 (train_list); "
                      "run_sample.py:18-20 (pseudo masks of train_aug to train DeepLab)",
    "cls.backbone": f"{IRN} net/resnet50_cam.py:12",
    "cls.output_stride": f"{IRN} net/resnet50_cam.py:12 (strides 2, 2, 2, 1)",
    "cls.freeze_bn": f"{IRN} net/resnet50.py:11 (FixedBatchNorm), net/resnet50_cam.py:39-43 (conv1, bn1 frozen)",
    "cls.train_bn_affine": f"{IRN} net/resnet50.py:11 (FixedBatchNorm keeps weight and bias trainable)",
    "cls.detach_early": f"{IRN} net/resnet50_cam.py:28",
    "cls.epochs": f"{IRN} run_sample.py:27",
    "cls.batch_size": f"{IRN} run_sample.py:26",
    "cls.lr": f"{IRN} run_sample.py:28",
    "cls.head_lr_mult": f"{IRN} step/train_cam.py:59",
    "cls.weight_decay": f"{IRN} run_sample.py:29, step/train_cam.py:58-59 (per group)",
    "cls.momentum": f"{IRN} misc/torchutils.py:11-12 (weight_decay passed positionally into SGD's momentum)",
    "cls.resize_long": f"{IRN} step/train_cam.py:45",
    "cls.crop": f"{IRN} run_sample.py:25",
    "cls.weights": f"{IRN} net/resnet50_cam.py:12 (pretrained=True: ImageNet ResNet-50); give it with --weights",
    "cam.scales": f"{IRN} run_sample.py:31",
    "ir_label.fg_threshold": f"{IRN} run_sample.py:35",
    "ir_label.bg_threshold": f"{IRN} run_sample.py:36",
    "ir_label.crf": f"{IRN} step/cam_to_ir_label.py:29,34",
    "irn.backbone": f"{IRN} net/resnet50_irn.py:13",
    "irn.backbone_from": f"{IRN} net/resnet50_irn.py:13 (pretrained=True)",
    "irn.weights": f"{IRN} net/resnet50_irn.py:13 (ImageNet ResNet-50); --weights gives it too",
    "irn.radius": f"{IRN} step/train_irn.py:12",
    "irn.epochs": f"{IRN} run_sample.py:42",
    "irn.batch_size": f"{IRN} run_sample.py:41",
    "irn.lr": f"{IRN} run_sample.py:43, step/train_irn.py:34 (edge branch at 1x)",
    "irn.weight_decay": f"{IRN} run_sample.py:44",
    "irn.momentum": f"{IRN} misc/torchutils.py:11-12",
    "irn.scale_range": f"{IRN} step/train_irn.py:25",
    "irn.crop": f"{IRN} run_sample.py:40",
    "irn.pairs": f"{IRN} misc/indexing.py:62-63,85 (PathIndex source window)",
    "irn.label_offset": f"{IRN} voc12/dataloader.py:269 (pil_rescale x0.25, nearest)",
    "irn.infer_pad": f"{IRN} net/resnet50_irn.py:99,107 (EdgeDisplacement pads to crop_size 512)",
    "irn.relu_after_upsample": f"{IRN} net/resnet50_irn.py:33-50",
    "pseudo.radius": f"{IRN} step/make_sem_seg_labels.py:41",
    "pseudo.beta": f"{IRN} run_sample.py:47",
    "pseudo.exp_times": f"{IRN} run_sample.py:48",
    "pseudo.bg_threshold": f"{IRN} run_sample.py:52",
    "eval.cam_bg_threshold": f"{IRN} run_sample.py:30",
    "eval.cam_bg_sweep": f"{C2AM} run_c2am.sh:11-18 (0.13..0.20), plus this project's wider values",
    "seg.model": f"{DEEPLAB}/configs/voc12.yaml:31 (DeepLabV2_ResNet101_MSC)",
    "seg.backbone": f"{DEEPLAB}/configs/voc12.yaml:32",
    "seg.weights": f"{DEEPLAB}/configs/voc12.yaml:34, main.py:129-134 (ImageNet ResNet-101); give it with --seg-weights",
    "seg.batch_size": f"{DEEPLAB}/configs/voc12.yaml:38,41 (5 per forward x ITER_SIZE 2)",
    "seg.iter_size": f"{DEEPLAB}/configs/voc12.yaml:41, main.py:201-221",
    "seg.iterations": f"{DEEPLAB}/configs/voc12.yaml:40",
    "seg.lr": f"{DEEPLAB}/configs/voc12.yaml:45",
    "seg.head_lr_mult": f"{DEEPLAB}/main.py:153",
    "seg.param_groups": f"{DEEPLAB}/main.py:43-62,144-160 (1x convs, 10x ASPP weights, 20x ASPP biases no decay)",
    "seg.weight_decay": f"{DEEPLAB}/configs/voc12.yaml:49",
    "seg.momentum": f"{DEEPLAB}/configs/voc12.yaml:46",
    "seg.lr_step": f"{DEEPLAB}/configs/voc12.yaml:44, libs/utils/lr_scheduler.py (PolynomialLR step_size)",
    "seg.crop": f"{DEEPLAB}/configs/voc12.yaml:27",
    "seg.scales": f"{DEEPLAB}/configs/voc12.yaml:11, libs/datasets/base.py:61",
    "seg.freeze_bn": f"{DEEPLAB}/main.py:189",
    "seg.loss_at": f"{DEEPLAB}/main.py:65-72,213-217 (labels resized to each logit)",
    "seg.crf": f"{DEEPLAB}/main.py:375 (a separate, optional crf command), configs/voc12.yaml:52-58 (its kernels)",
    "seg.msc_scales": f"{DEEPLAB}/libs/models/msc.py:18 (0.5, 0.75; loss on every output and their max)",
}

C2AM_SOURCES: dict[str, str] = {
    "cam.scales": f"{C2AM} cfg/c2am.yml:23",
    "ir_label.fg_threshold": f"{C2AM} cfg/c2am.yml:34",
    "ir_label.bg_threshold": f"{C2AM} cfg/c2am.yml:35",
    "pseudo.bg_threshold": f"{C2AM} cfg/c2am.yml:43",
    "c2am.global_size": f"{C2AM} cfg/c2am.yml:24 (cam_square_shape)",
    "c2am.gamma": f"{C2AM} cfg/c2am.yml:22",
    "c2am.epochs": f"{C2AM} cfg/c2am.yml:27",
    "c2am.batch_size": f"{C2AM} cfg/c2am.yml:26",
    "c2am.lr": f"{C2AM} cfg/c2am.yml:28",
    "c2am.head_lr_mult": f"{C2AM} train_c2am.py:81",
    "c2am.freeze_bn": f"{C2AM} net/resnet50_cam.py:12 (torchvision BatchNorm in train mode)",
    "c2am.output_stride": f"{C2AM} net/resnet50_cam.py:12 (torchvision resnet50, stride 32)",
    "c2am.freeze_stem": f"{C2AM} net/resnet50_cam.py:36-41",
    "seg.batch_size": f"{C2AM} segmentation/configs/voc12.yaml:38,41 (10 per forward x ITER_SIZE 2)",
    "seg.iterations": f"{C2AM} segmentation/configs/voc12.yaml:40",
    "seg.scales": f"{C2AM} segmentation/configs/voc12.yaml:11",
}

CONTA_SOURCES: dict[str, str] = {
    "conta.rounds": "CONTA paper, Sec. 4.3 (round 3 for IRNet)",
    "conta.extra_at": "CONTA paper, Sec. 4.2 Q3 and Table 1 (block5)",
    "conta.mask_source": "CONTA paper, Sec. 4.2 Q4 and Table 1 (segmentation mask)",
}

COCO_SOURCES: dict[str, str] = {
    "seg.iterations": f"{DEEPLAB}/configs/coco.yaml:40",
    "data.train_split": "COCO 2014 train (fastwsss.data.coco layout)",
    "data.cam_split": "COCO 2014 train (fastwsss.data.coco layout)",
}


def sources(preset: str, method: str) -> dict[str, str]:
    """Dotted setting -> where its value comes from, for `preset` and `method` (empty for the CPU presets)."""
    if preset not in ("voc", "coco"):
        return {}
    table = dict(IRNET_SOURCES)
    declared = get_method(method)
    if declared.sources is not None:
        table.update(declared.sources(preset))
    if preset == "coco":  # VOC's split lists do not apply
        table = {key: value for key, value in table.items() if not key.startswith("data.")}
        table.update(COCO_SOURCES)
    return table

