"""IRN's boundary (edge) branch on a frozen ResNet (docs/algorithms.md section 4).

Five feature taps of the frozen backbone -- the stem after the max-pool (stride 4), layer1 (stride 4),
layer2 (stride 8), layer3 (stride 16) and layer4 (the backbone's output stride) -- each go through a
1x1 convolution to 32 channels, GroupNorm(4, 32) and ReLU; the deeper three are upsampled bilinearly to
the stride-4 grid, the 160 channels are concatenated and a biased 1x1 convolution gives one boundary
logit per stride-4 cell. Only this head is trained: the backbone stays in eval mode (BatchNorm uses its
running statistics under `.train()` too), its parameters have `requires_grad=False` and its features
are computed under `torch.no_grad()`.

Output grid: for an input side n the stem already yields ceil(n / 4) = (n - 1) // 4 + 1 cells, the grid
every later stage (IR-label pairs, random walk) uses. The deeper taps, however, only line up with it
when n is a multiple of their stride. The input is therefore padded at the bottom and right with zeros
(the mean colour of a normalised image) to a multiple of the output stride, every tap is then an exact
integer downscale of the padded stride-4 grid and is upsampled by an exact factor, and the fused map is
cropped back to ((H - 1) // 4 + 1, (W - 1) // 4 + 1). Cell (i, j) is centred on input pixel (4i, 4j).

Two released definitions of IRNet (net/resnet50_irn.py) are options, off by default:
- `relu_after_upsample`: the deeper taps are upsampled before their ReLU (conv, GroupNorm, upsample, ReLU),
  as IRNet's fc_edge3..5 are; the default applies the ReLU first.
- `infer_pad`: inference (`boundary`, `boundary_with_flip`) pads the image to infer_pad x infer_pad, as
  IRNet's EdgeDisplacement pads every image to its 512 training crop. GroupNorm normalises over the whole
  map, padding included, so the edge map depends on this size; 0 pads to a multiple of the stride only.
  An image larger than infer_pad is padded to the next multiple of the stride.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastwsss.models.backbone import Backbone, build_backbone
from fastwsss.models.cam_net import load_cam_net
from fastwsss.models.checkpoint import read_model_file, rebuild, save_model_file

CHECKPOINT_FORMAT = "fastwsss.irn/1"
TAP_CHANNELS = 32
NUM_TAPS = 5
STRIDE = 4


def grid_size(height: int, width: int) -> tuple[int, int]:
    """The stride-4 grid of an H x W input: ((H - 1) // 4 + 1, (W - 1) // 4 + 1)."""
    return (height - 1) // STRIDE + 1, (width - 1) // STRIDE + 1


def _tap_block(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, TAP_CHANNELS, kernel_size=1, bias=False),
        nn.GroupNorm(4, TAP_CHANNELS),
        nn.ReLU(inplace=True),
    )


class EdgeHead(nn.Module):
    """The trainable part: one 1x1 conv + GroupNorm + ReLU per tap, then the fusing 1x1 conv."""

    def __init__(self, tap_channels: tuple[int, ...]) -> None:
        super().__init__()
        if len(tap_channels) != NUM_TAPS:
            raise ValueError(f"EdgeHead needs {NUM_TAPS} tap channel counts, got {tap_channels}")
        self.taps = nn.ModuleList(_tap_block(c) for c in tap_channels)
        self.fuse = nn.Conv2d(NUM_TAPS * TAP_CHANNELS, 1, kernel_size=1, bias=True)

    def forward(self, features: list[torch.Tensor], relu_after_upsample: bool = False) -> torch.Tensor:
        """Boundary logits on the grid of the first tap (every tap's size must divide it exactly)."""
        size = features[0].shape[-2:]
        maps = []
        for block, feature in zip(self.taps, features, strict=True):
            conv, norm, relu = block
            mapped = norm(conv(feature))
            if not relu_after_upsample:
                mapped = relu(mapped)
            if mapped.shape[-2:] != size:
                mapped = F.interpolate(mapped, size=size, mode="bilinear", align_corners=False)
            if relu_after_upsample:
                mapped = relu(mapped)
            maps.append(mapped)
        return self.fuse(torch.cat(maps, dim=1))


class BoundaryNet(nn.Module):
    """Frozen backbone + trainable `EdgeHead`; `forward` gives boundary logits (B, 1, h4, w4)."""

    def __init__(
        self,
        backbone: str,
        output_stride: int = 16,
        weights: str | Path | None = None,
        infer_pad: int = 0,
        relu_after_upsample: bool = False,
    ) -> None:
        super().__init__()
        self.backbone: Backbone = build_backbone(backbone, output_stride, weights)
        width = self.backbone.base_width
        self.head = EdgeHead((width, *self.backbone.stage_channels))
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.infer_pad = infer_pad
        self.relu_after_upsample = relu_after_upsample
        # The checkpoint's constructor kwargs; the weights path is not kept because the saved backbone
        # state supersedes it.
        self.init_kwargs: dict[str, Any] = {"backbone": backbone, "output_stride": output_stride,
                                            "infer_pad": infer_pad, "relu_after_upsample": relu_after_upsample}
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        self.train()

    @classmethod
    def from_imagenet(cls, backbone_name: str, weights: str | Path | None, **options: Any) -> BoundaryNet:
        """IRNet's setting: an ImageNet backbone at output stride 16 (weights=None: random, for tests only)."""
        return cls(backbone_name, output_stride=16, weights=weights, **options)

    @classmethod
    def from_classifier(cls, cam_net_checkpoint: str | Path, **options: Any) -> BoundaryNet:
        """The backbone of a trained CAM classifier (same architecture and output stride, weights copied)."""
        cam_net, _ = load_cam_net(cam_net_checkpoint)
        model = cls(cam_net.backbone_name, output_stride=cam_net.output_stride, **options)
        model.backbone.load_state_dict(cam_net.image_backbone().state_dict())
        return model

    def train(self, mode: bool = True) -> BoundaryNet:
        """Like nn.Module.train, but the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (the optimiser's only group)."""
        return list(self.head.parameters())

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.backbone.stage1
        t1 = stem.maxpool(stem.relu(stem.bn1(stem.conv1(x))))
        t2 = stem.layer1(t1)
        t3 = self.backbone.stage2(t2)
        t4 = self.backbone.stage3(t3)
        t5 = self.backbone.stage4(t4)
        return [t1, t2, t3, t4, t5]

    def forward(self, x: torch.Tensor, pad_to: int = 0) -> torch.Tensor:
        """Boundary logits (B, 1, (H-1)//4+1, (W-1)//4+1) of normalised images (B, 3, H, W).

        The input is zero-padded at the bottom and right to at least pad_to x pad_to and to a multiple of
        the output stride.
        """
        height, width = x.shape[-2:]
        multiple = max(self.output_stride, STRIDE)
        pad_h = max(pad_to, height + -height % multiple) - height
        pad_w = max(pad_to, width + -width % multiple) - width
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        with torch.no_grad():
            features = self._taps(x)
        logits = self.head([f.detach() for f in features], self.relu_after_upsample)
        h4, w4 = grid_size(height, width)
        return logits[..., :h4, :w4]

    def boundary(self, x: torch.Tensor) -> torch.Tensor:
        """Boundary probabilities sigmoid(logits), padded for inference (`infer_pad`)."""
        return torch.sigmoid(self(x, self.infer_pad))

    def boundary_with_flip(self, x: torch.Tensor) -> torch.Tensor:
        """IRNet's inference: sigmoid of the mean of the logits of x and of the mirrored-back logits of hflip(x).

        When W - 1 is not a multiple of 4 the mirrored grid is shifted by (W - 1) % 4 input pixels against
        the direct one; IRNet accepts the same shift.
        """
        direct = self(x, self.infer_pad)
        mirrored = self(x.flip(-1), self.infer_pad).flip(-1)
        return torch.sigmoid(direct / 2 + mirrored / 2)


def save_irn_checkpoint(path: str | Path, model: BoundaryNet, extra: dict[str, Any] | None = None) -> None:
    """Write constructor kwargs, head weights, backbone weights and `extra` metadata atomically.

    The backbone is stored as well so that the file stands alone (a `from_classifier` model does not
    depend on the classifier checkpoint any more). `extra` may hold plain values, containers and tensors.
    """
    weights = {"head": model.head.state_dict(), "backbone": model.backbone.state_dict()}
    save_model_file(path, CHECKPOINT_FORMAT, model.init_kwargs, weights, extra)


def load_irn(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[BoundaryNet, dict[str, Any]]:
    """Rebuild a BoundaryNet written by `save_irn_checkpoint`; returns (model in eval mode, metadata)."""
    payload = read_model_file(path, CHECKPOINT_FORMAT, "IRN", ["backbone"], map_location,
                              not_found="IRN checkpoint not found (run the irn stage first)")

    def make() -> BoundaryNet:
        model = BoundaryNet(**payload["kwargs"])
        model.head.load_state_dict(payload["head"])
        model.backbone.load_state_dict(payload["backbone"])
        return model

    return rebuild(path, make).to(map_location).eval(), dict(payload.get("meta") or {})
