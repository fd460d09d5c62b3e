"""Self-describing model files: constructor kwargs + weights + plain metadata, loadable with weights_only.

Every model file of a run (classifier, IRN, DeepLab) has the same envelope: a `format` tag, the `kwargs`
that rebuild the module, one or more state dicts and a `meta` dict. Errors name the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

from fastwsss.errors import CheckpointError, ConfigError, one_line
from fastwsss.io import atomic_path

T = TypeVar("T")


def check_plain_metadata(value: Any, where: str) -> None:
    """Checkpoint metadata must reload under torch.load(weights_only=True): plain containers and tensors."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain_metadata(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint metadata {where}: keys must be strings, got {key!r}")
            check_plain_metadata(item, f"{where}.{key}")
        return
    raise TypeError(f"checkpoint metadata {where}: unsupported type {type(value).__name__}")


def save_model_file(
    path: str | Path, fmt: str, kwargs: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any] | None, meta_name: str = "extra",
) -> None:
    """Write {format, kwargs, <weights...>, meta} atomically to `path`."""
    meta = dict(meta or {})
    check_plain_metadata(meta, meta_name)
    payload = {"format": fmt, "kwargs": dict(kwargs), **weights, "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_model_file(
    path: str | Path, fmt: str, what: str, required_kwargs: Iterable[str],
    map_location: str | torch.device = "cpu", not_found: str = "checkpoint not found",
) -> dict[str, Any]:
    """The payload of a model file, checked for its format tag and constructor kwargs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {not_found}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path}: not a fastwsss {what} checkpoint")
    kwargs = payload.get("kwargs")
    if not isinstance(kwargs, dict) or not set(required_kwargs) <= set(kwargs):
        raise CheckpointError(f"{path}: checkpoint lacks the model settings")
    return payload


def rebuild(path: str | Path, make: Callable[[], T]) -> T:
    """Run `make` (build the module, load its weights), turning a mismatch into a CheckpointError."""
    try:
        return make()
    except (TypeError, KeyError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not fit the model ({one_line(str(exc))[:300]})") from exc
