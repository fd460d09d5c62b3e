"""The CAM classifier of docs/algorithms.md section 2: ResNet features -> GAP -> 1x1 conv head -> K logits.

Training-time freezing follows IRNet:
- `freeze_bn`: every BatchNorm uses its running statistics (stays in eval mode even under `.train()`)
  and its affine parameters get no gradient; the stem convolution (conv1) is frozen as well. Without
  ImageNet weights this would keep random features, which is why the CPU presets switch it off.
  `train_bn_affine` (with `freeze_bn`) is IRNet's FixedBatchNorm instead: statistics fixed, but the affine
  parameters of every BatchNorm except the stem's bn1 keep training (conv1 and bn1 stay frozen).
- `detach_early`: features are detached after stage2, so stage1 and stage2 receive no gradient; their
  parameters are marked `requires_grad=False` and left out of `param_groups()`.

`extra_channels` > 0 (CONTA, section 7) concatenates an extra map, resized bilinearly to the feature grid,
at the end of the blocks named by `extra_at` (the paper's ablation, ResNet numbering): block5 = after
layer4, before the head (the paper's choice); block2..block4 = after layer1..layer3, so the first
convolution (and its shortcut) of the next layer takes `extra_channels` more inputs, zero-initialised so
that ImageNet behaviour is kept at the start; dense = all four.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastwsss.errors import CheckpointError, ConfigError
from fastwsss.models.backbone import batchnorm_layers, build_backbone, keep_batchnorm_eval
from fastwsss.models.checkpoint import read_model_file, rebuild, save_model_file

CHECKPOINT_FORMAT = "fastwsss.cam_net/1"
EXTRA_BLOCKS: dict[str, tuple[int, ...]] = {
    "block2": (2,), "block3": (3,), "block4": (4,), "block5": (5,), "dense": (2, 3, 4, 5),
}


def _resize_conv_input(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of `conv` taking `in_channels` inputs: shared input channels keep their weights, new ones are zero."""
    resized = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None)
    keep = min(in_channels, conv.in_channels)
    with torch.no_grad():
        resized.weight.zero_()
        resized.weight[:, :keep] = conv.weight[:, :keep]
        if conv.bias is not None:
            resized.bias.copy_(conv.bias)
    return resized.to(conv.weight.device)


def _change_stage_input(stage: nn.Sequential, delta: int) -> None:
    """Give a ResNet layer `delta` more (or fewer) input channels: its first block's conv1 and shortcut conv."""
    block = stage[0]
    if block.downsample is None:
        raise ValueError("cannot change the input of a ResNet layer without a shortcut convolution")
    block.conv1 = _resize_conv_input(block.conv1, block.conv1.in_channels + delta)
    block.downsample[0] = _resize_conv_input(block.downsample[0], block.downsample[0].in_channels + delta)


class CAMNet(nn.Module):
    """Multi-label classifier whose 1x1 head, applied before pooling, gives class activation maps."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        output_stride: int = 16,
        weights: str | Path | None = None,
        freeze_bn: bool = True,
        detach_early: bool = True,
        extra_channels: int = 0,
        extra_at: str = "block5",
        train_bn_affine: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes: must be >= 1, got {num_classes}")
        if extra_channels < 0:
            raise ConfigError(f"extra_channels: must be >= 0, got {extra_channels}")
        if extra_at not in EXTRA_BLOCKS:
            raise ConfigError(f"extra_at: unknown block {extra_at!r}; valid: {', '.join(EXTRA_BLOCKS)}")
        self.backbone = build_backbone(backbone, output_stride, weights)
        self.extra_blocks = EXTRA_BLOCKS[extra_at] if extra_channels else ()
        for block in self.extra_blocks:
            if block < 5:
                _change_stage_input(getattr(self.backbone, f"stage{block}"), extra_channels)
        head_in = self.backbone.out_channels + (extra_channels if 5 in self.extra_blocks else 0)
        self.head = nn.Conv2d(head_in, num_classes, kernel_size=1, bias=False)
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.freeze_bn = freeze_bn
        self.detach_early = detach_early
        self.train_bn_affine = train_bn_affine
        self.extra_channels = extra_channels
        # What a checkpoint needs to rebuild the module; the weights path is not kept because the saved
        # state dict supersedes it.
        self.init_kwargs: dict[str, Any] = {
            "backbone": backbone,
            "num_classes": num_classes,
            "output_stride": output_stride,
            "freeze_bn": freeze_bn,
            "detach_early": detach_early,
            "extra_channels": extra_channels,
            "extra_at": extra_at,
            "train_bn_affine": train_bn_affine,
        }
        self._freeze()
        self.train()

    def _freeze(self) -> None:
        frozen: list[nn.Module] = []
        if self.freeze_bn:
            frozen += [self.backbone.stage1.conv1, self.backbone.stage1.bn1]
            if not self.train_bn_affine:
                frozen += batchnorm_layers(self.backbone)
        if self.detach_early:
            frozen += [self.backbone.stage1, self.backbone.stage2]
        for module in frozen:
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> CAMNet:
        """Like nn.Module.train, but frozen BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            keep_batchnorm_eval(self.backbone)
        return self

    def _check_extra(self, x: torch.Tensor, extra: torch.Tensor | None) -> None:
        if self.extra_channels == 0:
            if extra is not None:
                raise ValueError("this CAMNet has extra_channels=0 but an extra map was given")
            return
        if extra is None or extra.dim() != 4 or extra.shape[1] != self.extra_channels or extra.shape[0] != x.shape[0]:
            got = None if extra is None else tuple(extra.shape)
            raise ValueError(f"extra must have shape (B={x.shape[0]}, {self.extra_channels}, h, w), got {got}")

    @staticmethod
    def _append(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        extra = F.interpolate(extra.to(x.dtype), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([x, extra], dim=1)

    def features(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Stage-4 features (B, C, h, w), plus the extra map's channels when it is appended at block 5."""
        self._check_extra(x, extra)
        stages = (self.backbone.stage1, self.backbone.stage2, self.backbone.stage3, self.backbone.stage4)
        for number, stage in enumerate(stages, start=1):
            x = stage(x)
            if number == 2 and self.detach_early:
                x = x.detach()
            if number + 1 in self.extra_blocks:
                x = self._append(x, extra)
        return x

    def image_backbone(self) -> nn.Module:
        """A copy of the backbone that takes the image alone (the extra inputs' weights dropped = a zero map)."""
        backbone = copy.deepcopy(self.backbone)
        for block in self.extra_blocks:
            if block < 5:
                _change_stage_input(getattr(backbone, f"stage{block}"), -self.extra_channels)
        return backbone

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Image-level logits (B, K): global average pooling, then the 1x1 head."""
        pooled = self.features(x, extra).mean(dim=(2, 3), keepdim=True)
        return self.head(pooled).flatten(1)

    def cam(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Class activation maps ReLU(head(features)) of shape (B, K, h, w): no pooling, no normalisation."""
        return F.relu(self.head(self.features(x, extra)))

    def param_groups(self) -> list[dict[str, Any]]:
        """[backbone trainable parameters, head parameters]; the trainer gives the head a larger lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return [
            {"name": "backbone", "params": backbone},
            {"name": "head", "params": list(self.head.parameters())},
        ]


def save_checkpoint(path: str | Path, model: CAMNet, extra: dict[str, Any] | None = None) -> None:
    """Write the model's constructor kwargs, state dict and `extra` metadata atomically to `path`.

    `extra` may hold numbers, strings, None, lists/tuples/dicts of those, and tensors.
    """
    save_model_file(path, CHECKPOINT_FORMAT, model.init_kwargs, {"state_dict": model.state_dict()}, extra)


def load_cam_net(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    expect_num_classes: int | None = None,
) -> tuple[CAMNet, dict[str, Any]]:
    """Rebuild a CAMNet from a checkpoint written by `save_checkpoint`; returns (model, metadata)."""
    payload = read_model_file(path, CHECKPOINT_FORMAT, "CAMNet", ["num_classes"], map_location)
    kwargs = payload["kwargs"]
    if expect_num_classes is not None and kwargs["num_classes"] != expect_num_classes:
        raise CheckpointError(
            f"{path}: checkpoint has {kwargs['num_classes']} classes but the data set has {expect_num_classes}"
        )

    def make() -> CAMNet:
        model = CAMNet(**kwargs)
        model.load_state_dict(payload["state_dict"])
        return model

    return rebuild(path, make).to(map_location), dict(payload.get("meta") or {})
