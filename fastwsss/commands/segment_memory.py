"""A memory budget for `fastwsss segment`: batches sized from the images' pixel counts.

A batch of B images of H x W pixels needs about `bytes_per_pixel * B * H * W` bytes besides the model:
the uint8 and float copies of the input, the backbone's activations, and the full-resolution logits of
every class (which dominate for large images: K + 1 float32 planes). Images are packed into batches of at
most --batch-size whose sum stays under the budget (default: half of the memory available when the command
starts); an image that alone exceeds it fails with one line naming it. The estimate is checked against the
measured peak in tests/test_segment_memory.py.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from PIL import Image

from fastwsss.errors import ConfigError

DEFAULT_FRACTION = 0.5
"""Share of the memory available at start that the images of one batch may use."""
INPUT_BYTES = 3 + 12 + 12 + 12
"""Per pixel: the uint8 image, its float copy, and the two float temporaries of normalisation."""
UNHOOKED_MODEL_BYTES = 512
"""Per pixel, for backends whose layers cannot be inspected (onnxruntime, TensorRT): a conservative guess
(a full-width ResNet-101 at output stride 8 keeps about 130 bytes per input pixel in one activation)."""
LIVE_FACTOR = 5
"""Copies of the largest activation alive at once. A layer's input, its output and a residual branch make
three; the CPU convolutions add reordered copies of input and output. Measured: the model alone peaks at 73
to 79 bytes per pixel for a 1200 x 1200 image through deeplabv2 resnet18_quarter, whose largest layer
output is 16 bytes per pixel (torch 2.14.1, one thread, 2026-12-02)."""


def parse_bytes(text: str) -> int:
    """"2G", "512M", "1.5GB", "1000000" -> bytes; ConfigError naming --memory-budget otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise ConfigError(f"--memory-budget: expected a size such as 4G or 512M, got {text!r}")
    value = float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2) or "b")
    if value < 1:
        raise ConfigError(f"--memory-budget: must be positive, got {text!r}")
    return int(value)


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux; else physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget() -> int:
    return int(available_memory() * DEFAULT_FRACTION)


def model_bytes_per_pixel(model: torch.nn.Module | None, device: torch.device | None = None, side: int = 64) -> float:
    """Bytes per input pixel of the largest layer output of `model` on a side x side probe, times LIVE_FACTOR."""
    if model is None:
        return float(UNHOOKED_MODEL_BYTES)
    largest = [0]

    def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        parameter = next(model.parameters(), None)
        probe = torch.zeros(1, 3, side, side, device=device or (parameter.device if parameter is not None else "cpu"),
                            dtype=parameter.dtype if parameter is not None else torch.float32)
        with torch.inference_mode():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return LIVE_FACTOR * largest[0] / (side * side)


def bytes_per_pixel(model: torch.nn.Module | None, num_labels: int, device: torch.device | None = None) -> float:
    """The whole per-pixel cost of segmenting: input copies, model activations, full-size logits and argmax."""
    return INPUT_BYTES + model_bytes_per_pixel(model, device) + 2 * 4 * num_labels + 8 + 1


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header (nothing decoded); (0, 0) when it cannot be read (the read says
    why). EXIF rotation is not applied: two files of one header size may still differ after it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except Exception:  # noqa: BLE001  (any reason: read_image later names the file and the problem)
        return 0, 0


def plan_batches(pixels: list[int], batch_size: int, budget: int, per_pixel: float) -> tuple[list[list[int]], list[int]]:
    """(batches of indices into `pixels`, in order, each of at most batch_size and within budget; the indices
    of images that alone exceed the budget)."""
    batches: list[list[int]] = []
    too_large: list[int] = []
    current: list[int] = []
    used = 0.0
    for index, count in enumerate(pixels):
        cost = count * per_pixel
        if cost > budget:
            too_large.append(index)
            continue
        if current and (len(current) >= batch_size or used + cost > budget):
            batches.append(current)
            current, used = [], 0.0
        current.append(index)
        used += cost
    if current:
        batches.append(current)
    return batches, too_large
