"""Self-describing model files: constructor kwargs + weights + plain metadata, loadable with weights_only.

Every model file of a run (classifier, IRN, DeepLab) has the same envelope: a `format` tag, the `kwargs`
that rebuild the module, one or more state dicts and a `meta` dict. Errors name the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

from fastwsss.engine.files import atomic_path
from fastwsss.errors import CheckpointError, ConfigError, RunDirError, one_line

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


CHECKSUM_KEY = "checksum"


def tensor_digest(payload: Any) -> str:
    """SHA-256 of every tensor in `payload` (name, dtype, shape, bytes; dicts in key order), the checksum key skipped.

    Stored in each checkpoint, so a file changed after it was written (a flipped bit on disk, a truncated
    copy that still unzips) is refused with one line instead of loading wrong weights silently.
    """
    digest = hashlib.sha256()

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{prefix}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if not (prefix == "" and key == CHECKSUM_KEY):
                    walk(f"{prefix}.{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)

    walk("", payload)
    return digest.hexdigest()


def save_torch_file(payload: Any, path: str | Path, checksum: bool = True) -> None:
    """torch.save `payload` atomically (with its tensors' checksum when it is a dict and `checksum`).

    torch.save reports a full disk as a RuntimeError; it becomes the one-line RunDirError naming the file.
    """
    if checksum and isinstance(payload, dict):
        payload = {**payload, CHECKSUM_KEY: tensor_digest(payload)}
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:
            raise RunDirError(f"cannot write {path}: {one_line(str(exc))[:200]}") from None


def verify_checksum(payload: Any, path: str | Path) -> None:
    """A CheckpointError naming `path` when its stored checksum does not match its tensors (files without one pass)."""
    if not isinstance(payload, dict) or CHECKSUM_KEY not in payload:
        return
    if payload[CHECKSUM_KEY] != tensor_digest(payload):
        raise CheckpointError(f"{path}: checksum mismatch, the file changed after it was written (corrupt copy?)")


def save_model_file(
    path: str | Path, fmt: str, kwargs: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any] | None, meta_name: str = "extra",
) -> None:
    """Write {format, kwargs, <weights...>, meta} atomically to `path`.

    Tensors are stored contiguous, whatever layout the model ran in (channels-last on the CPU), so a model
    file reads the same everywhere."""
    meta = dict(meta or {})
    check_plain_metadata(meta, meta_name)
    contiguous = {name: {key: value.contiguous() if isinstance(value, torch.Tensor) else value
                         for key, value in tensors.items()} for name, tensors in weights.items()}  # fmt: skip
    payload = {"format": fmt, "kwargs": dict(kwargs), **contiguous, "meta": meta}
    save_torch_file(payload, path)


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
    verify_checksum(payload, path)
    if not isinstance(payload.get("meta", {}), dict):
        raise CheckpointError(f"{path}: checkpoint metadata must be a dict, got {type(payload['meta']).__name__}")
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
