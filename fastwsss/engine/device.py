"""The one device vocabulary of every command and setting: auto, cpu, cuda or cuda:N (default auto).

`auto` is the first CUDA GPU when torch sees one, else the CPU. `train`, `eval`, `segment`, `diagnose`,
`bench kernels` and the `device` setting all read a device name through `resolve_device`, so that the
same name means the same device everywhere and a bad one is the same one-line error.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastwsss.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_DEVICE = "auto"
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
"""The vocabulary as `--help` shows it; N is a GPU index."""
_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def check_device_name(name: str, setting: str = "device") -> str:
    """`name` when it is in the vocabulary, else a ConfigError naming `setting` and listing the valid names."""
    if not isinstance(name, str) or _PATTERN.fullmatch(name) is None:
        prefix = f"{setting}: " if setting else ""
        raise ConfigError(f"{prefix}{name!r} is not a device; valid: {', '.join(DEVICE_NAMES)}")
    return name


def requested_device(name: str | None) -> str | None:
    """The device the user asked for, or None for `auto` (for runtimes that pick their own provider)."""
    if name is None or check_device_name(name) == DEFAULT_DEVICE:
        return None
    return name


def resolve_device(name: str | None = DEFAULT_DEVICE) -> torch.device:
    """The torch device for `name` (None means auto); a CUDA device this machine lacks is a ConfigError.

    torch is imported here, not at the top, so that the settings checks can use the vocabulary cheaply."""
    import torch

    name = check_device_name(name or DEFAULT_DEVICE)
    if name == DEFAULT_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(name)
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise ConfigError(f"device: {name} requested but {count} CUDA device(s) are visible; use --device cpu")
    return chosen


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` moved to `device`; on the CPU its convolution weights are also made channels-last.

    With channels-last weights oneDNN runs every convolution of the network in that layout (the input
    follows the weights). On a 2-core AMD EPYC (torch 2.14.1, 2026-12-02, two runs of
    `python -m bench.training_step`) that made a CAM forward at 192 px 1.14 to 1.17x, a DeepLab prediction
    at 96 px 1.38 to 1.58x and a training step 1.07 to 1.10x as fast. Results differ from the contiguous
    layout only in float rounding. GPUs keep the layout they were given (not measured there).
    """
    import torch

    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model
