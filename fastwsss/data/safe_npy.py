"""Read IRNet's pickled `cls_labels.npy` without running code from it (docs/security.md).

IRNet saves a dict {int id: float32 label vector} with `np.save`, which pickles it. `np.load(...,
allow_pickle=True)` would call any function the pickle names, so a crafted file could run code as soon as a
run (or a shared run directory whose config.json names the file) is opened. Here the pickle is read by an
unpickler that resolves only the few numpy names an array needs; any other name is refused before it is
called, and the result must be a dict of int or str keys to numeric vectors.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from fastwsss.errors import DataError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("_reconstruct",),
    ("numpy._core.multiarray", "_reconstruct"): ("_reconstruct",),
    ("numpy.core.multiarray", "scalar"): ("scalar",),
    ("numpy._core.multiarray", "scalar"): ("scalar",),
    ("numpy", "ndarray"): (),
    ("numpy", "dtype"): (),
}
"""(module, name) a numpy array's or scalar's pickle names; numpy 1 files say numpy.core, numpy 2 numpy._core."""

MAX_BYTES = 512 * 1024 * 1024
"""A larger cls_labels file is refused (COCO's, the biggest in use, is a few MB)."""


def _multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1
        return importlib.import_module("numpy.core.multiarray")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that knows numpy arrays, numpy scalars and plain Python values, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays and plain values)")
        if module == "numpy":
            return getattr(np, name)
        return getattr(_multiarray(), name)


def _plain_key(key: Any) -> int | str | None:
    if isinstance(key, (bool, np.bool_)):
        return None
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, str):
        return key
    return None


def load_label_table(path: Path) -> dict[int | str, np.ndarray]:
    """The {id: float32 vector} dict of an IRNet-style cls_labels.npy; one-line DataError naming `path` otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DataError(f"{path}: {size / 2**20:.0f} MB is too large for a cls_labels file")
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            if dtype != np.dtype(object) or shape != ():
                raise DataError(f"{path}: cls_labels must hold one pickled dict, got a {dtype} array of shape {shape}")
            table = _NumpyOnlyUnpickler(io.BytesIO(handle.read())).load()
    except DataError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, TypeError, AttributeError, IndexError,
            MemoryError, RecursionError, KeyError) as exc:  # fmt: skip
        raise DataError(f"{path}: not a readable cls_labels .npy file ({type(exc).__name__}: {exc})") from None
    if isinstance(table, np.ndarray) and table.shape == () and table.dtype == object:
        table = table.item()
    if not isinstance(table, dict):
        raise DataError(f"{path}: cls_labels must hold a dict of id -> label vector, got {type(table).__name__}")
    clean: dict[int | str, np.ndarray] = {}
    for key, value in table.items():
        plain = _plain_key(key)
        if plain is None:
            raise DataError(f"{path}: cls_labels keys must be ints or strings, got {type(key).__name__}")
        try:
            vector = np.asarray(value)
            if not (np.issubdtype(vector.dtype, np.number) or vector.dtype == np.bool_):
                raise TypeError(f"dtype {vector.dtype}")
            clean[plain] = vector.astype(np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: the labels of {plain!r} are not a numeric vector ({exc})") from None
    return clean
