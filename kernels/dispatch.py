"""Which implementation of a kernel op runs: the pure-torch reference, a Triton kernel or CUDA C++.

Each op module registers the backends it implements with `register_backends` and asks
`kernel_backend(tensor, op)` on every call. Default: the reference on CPU tensors; on CUDA tensors the
first available backend in the op's order for the tensor's dtype: the measured order of the preference
table (kernels/preference.json, written from a GPU benchmark by `python -m bench.preference`; see
docs/gpu.md) where it has one, else cuda > triton > reference. Triton never runs on CUDA tensors under
TRITON_INTERPRET=1 (the interpreter would copy them to the host and back, thousands of times slower).

`FASTWSSS_KERNELS` forces backends: `triton` (every op), or per op `cam_norm=cuda,random_walk=triton`
(the others automatic), or both (`reference,random_walk=triton`). A forced backend that cannot run here is
an error, never a silent fallback, so benchmarks and tests measure what they claim to.
`FASTWSSS_KERNEL_TABLE=PATH` reads another preference table (the one a GPU run just wrote, say).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from fastwsss.errors import ConfigError

ENV_VAR = "FASTWSSS_KERNELS"
TABLE_ENV_VAR = "FASTWSSS_KERNEL_TABLE"
BACKENDS = ("reference", "triton", "cuda")
PREFERENCE = ("cuda", "triton", "reference")
OPS = ("cam_norm", "confounder_attention", "random_walk")
TABLE_PATH = Path(__file__).with_name("preference.json")

_REGISTRY: dict[str, tuple[str, ...]] = {}


def register_backends(op: str, backends: Iterable[str]) -> None:
    """Declare the backends `op` implements; the reference is mandatory (it is the specification)."""
    backends = tuple(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if op not in OPS or unknown or "reference" not in backends:
        raise ValueError(f"op {op!r} (among {OPS}): backends must include 'reference' and be among {BACKENDS}, "
                         f"got {backends}")  # fmt: skip
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


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _unavailable_reason(backend: str, tensor: torch.Tensor) -> str | None:
    """None when `backend` can run on `tensor` here, else why not."""
    if backend == "triton":
        if not _triton_installed():
            return "triton is not installed"
        if tensor.is_cuda and _interpreted():
            return "TRITON_INTERPRET=1 would run the Triton interpreter on CUDA tensors (set TRITON_INTERPRET=0)"
        if not tensor.is_cuda and not _interpreted():
            return f"the tensor is on {tensor.device.type} and TRITON_INTERPRET=1 is not set"
    elif backend == "cuda":
        if not tensor.is_cuda:
            return f"the tensor is on {tensor.device.type}, not a CUDA device"
        if not _cuda_extension_loaded():
            return "the compiled extension fastwsss._C is not built (install with FASTWSSS_BUILD_CUDA=1)"
    return None


def triton_runs_on(tensor: torch.Tensor) -> bool:
    """Whether a Triton kernel may be launched on `tensor` here (compiled on CUDA, the interpreter on the CPU)."""
    return _unavailable_reason("triton", tensor) is None


def _parse_forced(value: str) -> tuple[str | None, dict[str, str]]:
    """FASTWSSS_KERNELS -> (the backend of every op or None, {op: backend})."""
    every: str | None = None
    per_op: dict[str, str] = {}
    for item in (part.strip().lower() for part in value.split(",")):
        if not item:
            continue
        op, sep, backend = item.rpartition("=") if "=" in item else ("", "", item)
        if backend not in BACKENDS or (sep and op not in OPS):
            raise ConfigError(
                f"{ENV_VAR}: cannot read {item!r}; valid values: one of {', '.join(BACKENDS)} for every op, "
                f"or OP=BACKEND with OP among {', '.join(OPS)}"
            )
        if sep:
            per_op[op] = backend
        else:
            every = backend
    return every, per_op


def forced_backend(op: str | None = None) -> str | None:
    """The backend FASTWSSS_KERNELS forces for `op` (for every op when `op` is None), or None."""
    every, per_op = _parse_forced(os.environ.get(ENV_VAR, ""))
    return per_op.get(op, every) if op is not None else every


@functools.lru_cache(maxsize=8)
def _load_table(path: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """{op: {dtype name: backends fastest first}} of a preference table; an unreadable file is a ConfigError."""
    try:
        data = json.loads(Path(path).read_text())
        table = {op: {dtype: tuple(order) for dtype, order in by_dtype.items()} for op, by_dtype in data["ops"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a kernel preference table ({type(exc).__name__}: {exc})") from None
    for op, by_dtype in table.items():
        for dtype, order in by_dtype.items():
            if op not in OPS or any(b not in BACKENDS for b in order):
                raise ConfigError(f"{path}: bad entry {op}/{dtype}: {order} (ops {OPS}, backends {BACKENDS})")
    return table


def preference(op: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The order in which backends are tried for `op` on CUDA tensors of `dtype`: measured, else the default."""
    path = os.environ.get(TABLE_ENV_VAR) or str(TABLE_PATH)
    measured = _load_table(path).get(op, {}).get(str(dtype).removeprefix("torch."))
    if not measured:
        return PREFERENCE
    return tuple(measured) + tuple(b for b in PREFERENCE if b not in measured)


def kernel_backend(tensor: torch.Tensor, op: str) -> str:
    """The backend ("reference", "triton" or "cuda") that `op` should use for `tensor`."""
    implemented = registered_backends(op)
    forced = forced_backend(op)
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
    for backend in preference(op, tensor.dtype):
        if backend in implemented and _unavailable_reason(backend, tensor) is None:
            return backend
    return "reference"
