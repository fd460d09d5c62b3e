"""Which implementation of a kernel op runs: the pure-torch reference, a Triton kernel or CUDA C++.

Each op module registers the backends it implements with `register_backends` and asks
`kernel_backend(tensor, op)` on every call. Default: the reference on CPU tensors; on CUDA tensors the
first available of cuda > triton > reference that the op implements (hand-written CUDA only exists
where it beats Triton). `FASTWSSS_KERNELS=reference|triton|cuda` forces one backend for every op; a
forced backend that cannot run here is an error, never a silent fallback, so benchmarks and tests
measure what they claim to.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Iterable

import torch

from fastwsss.errors import ConfigError

ENV_VAR = "FASTWSSS_KERNELS"
BACKENDS = ("reference", "triton", "cuda")
PREFERENCE = ("cuda", "triton", "reference")

_REGISTRY: dict[str, tuple[str, ...]] = {}


def register_backends(op: str, backends: Iterable[str]) -> None:
    """Declare the backends `op` implements; the reference is mandatory (it is the specification)."""
    backends = tuple(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or "reference" not in backends:
        raise ValueError(f"op {op!r}: backends must include 'reference' and be among {BACKENDS}, got {backends}")
    _REGISTRY[op] = backends


def registered_backends(op: str) -> tuple[str, ...]:
    try:
        return _REGISTRY[op]
    except KeyError:
        raise KeyError(f"unknown kernel op {op!r}; registered ops: {', '.join(sorted(_REGISTRY)) or 'none'}") from None


@functools.lru_cache(maxsize=1)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=1)
def _cuda_extension_loaded() -> bool:
    try:
        importlib.import_module("fastwsss._C")
    except ImportError:
        return False
    return True


def _unavailable_reason(backend: str, tensor: torch.Tensor) -> str | None:
    """None when `backend` can run on `tensor` here, else why not."""
    if backend == "triton":
        if not _triton_installed():
            return "triton is not installed"
        if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return f"the tensor is on {tensor.device.type} and TRITON_INTERPRET=1 is not set"
    elif backend == "cuda":
        if not tensor.is_cuda:
            return f"the tensor is on {tensor.device.type}, not a CUDA device"
        if not _cuda_extension_loaded():
            return "the compiled extension fastwsss._C is not built (install with FASTWSSS_BUILD_CUDA=1)"
    return None


def forced_backend() -> str | None:
    """The backend forced by FASTWSSS_KERNELS, or None when unset or empty."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ConfigError(f"{ENV_VAR}: unknown value {value!r}; valid values: {', '.join(BACKENDS)}")
    return value


def kernel_backend(tensor: torch.Tensor, op: str) -> str:
    """The backend ("reference", "triton" or "cuda") that `op` should use for `tensor`."""
    implemented = registered_backends(op)
    forced = forced_backend()
    if forced is not None:
        if forced not in implemented:
            raise RuntimeError(
                f"{ENV_VAR}={forced}: op {op!r} has no {forced} implementation (it has {', '.join(implemented)})"
            )
        reason = _unavailable_reason(forced, tensor)
        if reason is not None:
            raise RuntimeError(f"{ENV_VAR}={forced}: cannot run op {op!r} with {forced}: {reason}")
        return forced
    if not tensor.is_cuda:
        return "reference"
    for backend in PREFERENCE:
        if backend in implemented and _unavailable_reason(backend, tensor) is None:
            return backend
    return "reference"
