"""DeepLab segmentation models trained on the pseudo masks (docs/algorithms.md section 8).

Two registered models, both mapping (B, 3, H, W) images to (B, K+1, H, W) logits:

- `deeplabv2`: a registered `Backbone` at output stride 8 and an ASPP of four 3x3 convolutions with
  dilation 6, 12, 18, 24, each straight to the K+1 classes, their outputs summed (the DeepLab-v2 head).
- `deeplabv3`: for resnet50 / resnet101, torchvision's `deeplabv3_resnet50/101` (built with no weights, no
  auxiliary head); for every other backbone (e.g. the CPU presets' `resnet18_quarter`), our `Backbone`
  at output stride 8 with torchvision's ASPP (rates 12, 24, 36, torchvision's choice at stride 8) and the
  rest of torchvision's DeepLabHead. Its ASPP width is min(256, backbone channels) so that a reduced-width
  backbone does not get a head larger than itself.

Dilation: `build_backbone(..., output_stride=8)` keeps layer3 and layer4 at stride 1 WITHOUT dilation
(IRNet's choice). DeepLab instead dilates them, so `dilate_backbone` sets dilation and padding 2 on every
3x3 convolution of stage3 and 4 on those of stage4, on the built modules (backbone.py is left as it is).
Every block of a stage gets the stage's rate, as in the original DeepLab-v2 (torchvision's own dilated
ResNet gives the first block of a stage the previous rate; that only matters for its models, which keep
it). Dilation changes no weight shape, so ImageNet weights load the same way.

The final resize is `F.interpolate(size=images.shape[-2:], mode="bilinear", align_corners=False)`, so an
exported graph resizes by the input's shape (docs/deploy.md). BatchNorm trains as usual unless
`freeze_batchnorm()` is called (`seg.freeze_bn`, the released DeepLab's freeze_bn): then every BatchNorm of
the backbone keeps its ImageNet statistics (eval mode under `.train()` too) and its affine parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101
from torchvision.models.segmentation.deeplabv3 import ASPP

from fastwsss.errors import CheckpointError, ConfigError, one_line
from fastwsss.models.backbone import (
    Backbone,
    _torchvision_key,
    batchnorm_layers,
    build_backbone,
    keep_batchnorm_eval,
    load_imagenet_weights,
)
from fastwsss.models.checkpoint import read_model_file, rebuild, save_model_file
from fastwsss.models.msc import msc_pyramid

CHECKPOINT_FORMAT = "fastwsss.seg_model/1"
OUTPUT_STRIDE = 8
V2_RATES = (6, 12, 18, 24)
V3_RATES = (12, 24, 36)
STAGE_DILATION = {"stage3": 2, "stage4": 4}
TORCHVISION_V3 = {"resnet50": deeplabv3_resnet50, "resnet101": deeplabv3_resnet101}


def dilate_backbone(backbone: Backbone) -> Backbone:
    """Give stage3 / stage4 of an output-stride-8 backbone DeepLab's dilation 2 / 4 (in place)."""
    if backbone.output_stride != OUTPUT_STRIDE:
        raise ConfigError(
            f"output_stride: DeepLab dilation needs an output-stride-8 backbone, got {backbone.output_stride}"
        )
    for stage_name, rate in STAGE_DILATION.items():
        for module in getattr(backbone, stage_name).modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                module.dilation = (rate, rate)
                module.padding = (rate, rate)
    return backbone


def _upsample(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class SegModel(nn.Module):
    """Common interface: `backbone` and `head` submodules, `features`, `forward`, `param_groups`, `init_kwargs`."""

    backbone: nn.Module
    head: nn.Module

    def __init__(self, model: str, backbone: str, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(
                f"num_classes: a segmentation model needs >= 2 labels (background + K), got {num_classes}"
            )
        self.num_classes = num_classes
        # What a checkpoint needs to rebuild the module; the weights path is superseded by the state dict.
        self.init_kwargs: dict[str, Any] = {"name": model, "backbone": backbone, "num_classes": num_classes}
        self.frozen_bn = False

    def freeze_batchnorm(self) -> SegModel:
        """Keep the backbone's BatchNorm statistics and affine parameters as loaded (see the module docstring)."""
        self.frozen_bn = True
        for module in batchnorm_layers(self.backbone):
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> SegModel:
        super().train(mode)
        if self.frozen_bn:
            keep_batchnorm_eval(self.backbone)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The stride-8 feature map the head reads."""
        return self.backbone(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, K+1, h, w) on the head's stride-8 grid."""
        return self.head(self.features(images))

    def forward(
        self, images: torch.Tensor, upsample: bool = True, scales: tuple[float, ...] = ()
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, K+1, H, W) at the input's size; with upsample=False on the head's stride-8 grid.

        With `scales`, the list of DeepLab's MSC outputs (`fastwsss.models.msc.msc_pyramid`) in one call, so
        that a DistributedDataParallel wrapper sees one forward per backward.
        """
        if scales:
            return msc_pyramid(self.logits, images, scales)
        logits = self.logits(images)
        return _upsample(logits, images) if upsample else logits

    def param_groups(self) -> list[dict[str, Any]]:
        """[backbone parameters, head parameters]; the trainer gives the head a larger lr."""
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad]},
            {"name": "head", "params": [p for p in self.head.parameters() if p.requires_grad]},
        ]


class ASPPSum(nn.Module):
    """DeepLab-v2's classifier: parallel dilated 3x3 convolutions to the classes, outputs summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = V2_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(SegModel):
    def __init__(self, backbone: str, num_classes: int, weights: str | Path | None = None) -> None:
        super().__init__("deeplabv2", backbone, num_classes)
        self.backbone = dilate_backbone(build_backbone(backbone, OUTPUT_STRIDE, weights))
        self.head = ASPPSum(self.backbone.out_channels, num_classes)


def _v3_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """torchvision's DeepLabHead layout with an ASPP width of min(256, in_channels)."""
    width = min(256, in_channels)
    return nn.Sequential(
        ASPP(in_channels, V3_RATES, out_channels=width),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, num_classes, 1),
    )


class _OutFeatures(nn.Module):
    """torchvision's IntermediateLayerGetter returns {"out": map}; this unwraps it (and keeps its keys)."""

    def __init__(self, getter: nn.Module) -> None:
        super().__init__()
        self.body = getter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)["out"]


class DeepLabV3(SegModel):
    """Needs batches of >= 2 images in training mode (ASPP's pooled branch has a BatchNorm on 1x1 maps)."""

    def __init__(self, backbone: str, num_classes: int, weights: str | Path | None = None) -> None:
        super().__init__("deeplabv3", backbone, num_classes)
        if backbone in TORCHVISION_V3:
            net = TORCHVISION_V3[backbone](weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
            self.backbone = _OutFeatures(net.backbone)
            self.head = net.classifier
            if weights is not None:
                _load_into_torchvision_trunk(self.backbone.body, backbone, weights)
        else:
            self.backbone = dilate_backbone(build_backbone(backbone, OUTPUT_STRIDE, weights))
            self.head = _v3_head(self.backbone.out_channels, num_classes)


def _load_into_torchvision_trunk(trunk: nn.Module, name: str, weights: str | Path) -> None:
    """Load an ImageNet file into torchvision's ResNet trunk, checked by `load_imagenet_weights` first.

    The file goes into one of our Backbones (whose errors name the file and the key), whose tensors are
    then copied under their torchvision names (stage1.conv1.* -> conv1.*, stage2.* -> layer2.*, ...).
    """
    checked = build_backbone(name, OUTPUT_STRIDE)
    load_imagenet_weights(checked, weights)
    state = {_torchvision_key(key): value for key, value in checked.state_dict().items()}
    try:
        trunk.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights}: does not fit torchvision's {name} trunk ({one_line(str(exc))[:300]})"
        ) from exc


SEG_MODELS: dict[str, type[SegModel]] = {"deeplabv2": DeepLabV2, "deeplabv3": DeepLabV3}


def build_seg_model(name: str, backbone: str, num_classes: int, weights: str | Path | None = None) -> SegModel:
    """A registered segmentation model with `num_classes` = K + 1 outputs (background included)."""
    if name not in SEG_MODELS:
        raise ConfigError(f"seg.model: unknown model {name!r}; valid models: {', '.join(SEG_MODELS)}")
    return SEG_MODELS[name](backbone, num_classes, weights)


def save_seg_checkpoint(path: str | Path, model: SegModel, meta: dict[str, Any] | None = None) -> None:
    """Write constructor kwargs, state dict and `meta` (plain values and tensors) atomically to `path`."""
    save_model_file(path, CHECKPOINT_FORMAT, model.init_kwargs, {"state_dict": model.state_dict()}, meta, "meta")


def load_seg_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    expect_num_classes: int | None = None,
) -> tuple[SegModel, dict[str, Any]]:
    """Rebuild a model written by `save_seg_checkpoint`; returns (model in eval mode, metadata).

    `expect_num_classes` counts background too (K + 1), like `build_seg_model`.
    """
    payload = read_model_file(path, CHECKPOINT_FORMAT, "segmentation", ["name", "backbone", "num_classes"],
                              map_location, not_found="segmentation checkpoint not found")
    kwargs = payload["kwargs"]
    if expect_num_classes is not None and kwargs["num_classes"] != expect_num_classes:
        raise CheckpointError(
            f"{path}: checkpoint predicts {kwargs['num_classes']} labels (background included) "
            f"but the data set has {expect_num_classes}"
        )

    def make() -> SegModel:
        model = build_seg_model(**kwargs)
        model.load_state_dict(payload["state_dict"])
        return model

    return rebuild(path, make).to(map_location).eval(), dict(payload.get("meta") or {})
