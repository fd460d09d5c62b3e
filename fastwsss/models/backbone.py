"""ResNet backbones split into four stages, with the output strides IRNet uses.

The standard names build exactly torchvision's ResNet trunks (same blocks, same initialisation, random
weights) so that a torchvision ImageNet state dict loads into them; `resnet18_half` and
`resnet18_quarter` are the same BasicBlock trunk with every width divided by 2 or 4, for the CPU presets.

Output stride (docs/algorithms.md section 2):
    32: strides (conv1, layer2, layer3, layer4) = (2, 2, 2, 2), torchvision's default
    16: (2, 2, 2, 1), layer4 keeps stride 1 WITHOUT dilation (IRNet's choice)
     8: (2, 2, 1, 1), layer3 and layer4 keep stride 1, again without dilation
The max-pool after conv1 always has stride 2. Every strided layer maps a side n to ceil(n / 2).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fastwsss.errors import CheckpointError, ConfigError

# Strides of (layer2, layer3, layer4) for each output stride; conv1 and the max-pool always halve.
LAYER_STRIDES: dict[int, tuple[int, int, int]] = {32: (2, 2, 2), 16: (2, 2, 1), 8: (2, 1, 1)}
IMAGENET_WIDTH = 64


def _make_layer(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet layer, built like torchvision's `ResNet._make_layer` (so state-dict keys match)."""
    expansion = block.expansion  # type: ignore[attr-defined]
    downsample = None
    if stride != 1 or inplanes != planes * expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class Backbone(nn.Module):
    """A ResNet trunk as four stages: stage1 = conv1, bn1, relu, maxpool, layer1; stage2..4 = layer2..4.

    `forward` returns the stage-4 feature map; `forward_stages` returns all four (IRN's edge branch).
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: tuple[int, int, int, int],
        base_width: int = IMAGENET_WIDTH,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        if output_stride not in LAYER_STRIDES:
            raise ConfigError(f"output_stride: must be one of {sorted(LAYER_STRIDES)}, got {output_stride}")
        self.base_width = base_width
        self.output_stride = output_stride
        expansion = block.expansion  # type: ignore[attr-defined]
        widths = [base_width * 2**i for i in range(4)]
        strides = (1, *LAYER_STRIDES[output_stride])
        self.stage_channels: tuple[int, ...] = tuple(w * expansion for w in widths)
        self.out_channels: int = self.stage_channels[-1]

        built = []
        inplanes = base_width
        for width, blocks, stride in zip(widths, layers, strides, strict=True):
            built.append(_make_layer(block, inplanes, width, blocks, stride))
            inplanes = width * expansion
        self.stage1 = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False),
                bn1=nn.BatchNorm2d(base_width),
                relu=nn.ReLU(inplace=True),
                maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
                layer1=built[0],
            )
        )
        self.stage2, self.stage3, self.stage4 = built[1:]
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation: He-normal (fan out) convolutions, BatchNorm scale 1 / shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of stage1..stage4 (strides 4, 8, then per output stride)."""
        outputs = []
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage4(self.stage3(self.stage2(self.stage1(x))))


BACKBONES: dict[str, partial[Backbone]] = {
    "resnet18": partial(Backbone, BasicBlock, (2, 2, 2, 2)),
    "resnet34": partial(Backbone, BasicBlock, (3, 4, 6, 3)),
    "resnet50": partial(Backbone, Bottleneck, (3, 4, 6, 3)),
    "resnet101": partial(Backbone, Bottleneck, (3, 4, 23, 3)),
    "resnet18_half": partial(Backbone, BasicBlock, (2, 2, 2, 2), base_width=IMAGENET_WIDTH // 2),
    "resnet18_quarter": partial(Backbone, BasicBlock, (2, 2, 2, 2), base_width=IMAGENET_WIDTH // 4),
}


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer inside `module` (the layers a frozen-BatchNorm model keeps in eval mode)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def keep_batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer inside `module` back in eval mode (after a model's `.train()` call), so that
    frozen statistics stay frozen."""
    for layer in batchnorm_layers(module):
        layer.eval()


def feature_size(size: int, output_stride: int) -> int:
    """Side of the stage-4 map for an input side `size`: a ceil(n / 2) per stride-2 step."""
    steps = 2 + sum(s == 2 for s in LAYER_STRIDES[output_stride])
    for _ in range(steps):
        size = (size + 1) // 2
    return size


def build_backbone(name: str, output_stride: int = 16, weights: str | Path | None = None) -> Backbone:
    """A registered backbone, randomly initialised, then loaded from a torchvision ImageNet file if given."""
    if name not in BACKBONES:
        raise ConfigError(f"backbone: unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")
    backbone = BACKBONES[name](output_stride=output_stride)
    if weights is not None:
        if backbone.base_width != IMAGENET_WIDTH:
            standard = [
                n for n in BACKBONES if BACKBONES[n].keywords.get("base_width", IMAGENET_WIDTH) == IMAGENET_WIDTH
            ]
            raise ConfigError(
                f"weights: {name} is a reduced-width network and cannot take ImageNet weights; "
                f"drop the weights setting or choose one of {', '.join(standard)}"
            )
        load_imagenet_weights(backbone, weights)
    return backbone


def _backbone_key(torchvision_key: str) -> str | None:
    """Where a torchvision ResNet key lives in a Backbone (None for keys outside the trunk)."""
    head, _, rest = torchvision_key.partition(".")
    if head in ("conv1", "bn1", "layer1"):
        return f"stage1.{torchvision_key}"
    if head in ("layer2", "layer3", "layer4"):
        return f"stage{head[-1]}.{rest}"
    return None


def _torchvision_key(backbone_key: str) -> str:
    """Inverse of `_backbone_key`, for error messages that speak the file's language."""
    head, _, rest = backbone_key.partition(".")
    return rest if head == "stage1" else f"layer{head[-1]}.{rest}"


def load_imagenet_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a torchvision ResNet state dict (e.g. resnet50-0676ba61.pth) into `backbone`; `fc.*` is ignored.

    Every trunk key must be present with the right shape; `num_batches_tracked` may be absent (the
    2017 torchvision files predate it). Errors name the file and the first offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: weights file not found (download the torchvision ImageNet ResNet weights, "
            "e.g. resnet50-0676ba61.pth; see README)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load weights file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a torchvision state dict (expected a flat dict of tensors)")

    own = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        target = _backbone_key(key)
        if target is None or target not in own:
            raise CheckpointError(f"{path}: unexpected key {key!r}: the file does not fit this backbone")
        if own[target].shape != value.shape:
            raise CheckpointError(
                f"{path}: key {key!r} has shape {tuple(value.shape)}, the backbone expects {tuple(own[target].shape)}"
            )
        mapped[target] = value
    for key in own:
        if key not in mapped and not key.endswith("num_batches_tracked"):
            raise CheckpointError(f"{path}: missing key {_torchvision_key(key)!r}: the file does not fit this backbone")
    backbone.load_state_dict(mapped, strict=False)
