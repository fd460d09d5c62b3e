"""Launch helpers shared by the Triton ops: block sizes, the GPU's shape and the device to launch on."""

from __future__ import annotations

import contextlib
import functools

import torch


def next_pow2(value: int) -> int:
    """The smallest power of two >= value (1 for value <= 1): Triton block sizes must be powers of two."""
    return 1 << max(0, int(value) - 1).bit_length()


def pow2_block(size: int, low: int, high: int) -> int:
    """`next_pow2(size)` clamped to [low, high] (tl.dot needs every tile side >= 16)."""
    return max(low, min(high, next_pow2(size)))


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on the tensor's GPU (Triton launches on the current device); nothing for a CPU tensor."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _index(device: torch.device | int | None) -> int:
    if isinstance(device, int):
        return device
    if device is None or device.index is None:
        return torch.cuda.current_device()
    return device.index


@functools.lru_cache(maxsize=16)
def _properties(index: int) -> torch.cuda._CudaDeviceProperties:
    return torch.cuda.get_device_properties(index)


def sm_count(device: torch.device | int | None = None) -> int:
    """Streaming multiprocessors of a CUDA device (grids are sized to a few programs per SM)."""
    return _properties(_index(device)).multi_processor_count


def l2_bytes(device: torch.device | int | None = None) -> int:
    """L2 cache size of a CUDA device in bytes (0 where torch does not report it)."""
    return int(getattr(_properties(_index(device)), "L2_cache_size", 0))
