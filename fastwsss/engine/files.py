"""Atomic file writes: a reader never sees a half-written file, an interrupted write leaves nothing."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastwsss.errors import RunDirError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes.

    Disk-full and permission errors become a one-line RunDirError naming the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


_TEMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_orphan_temps(folder: str | Path) -> list[Path]:
    """Delete `atomic_path` temporaries under `folder` whose writer process is gone (killed mid-write).

    Temporaries of live processes are kept: eval, report or export may be writing beside a resumed run.
    Returns the files removed.
    """
    removed = []
    for path in Path(folder).rglob(".*.tmp*"):
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, obj: dict[str, Any]) -> None:
    """Append one JSON object as one line; a single write() keeps lines whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, sort_keys=False) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a JSONL file; a torn last line (killed writer) or a line that is no JSON is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):  # a torn line, or one nested too deeply to be a row
            continue
    return rows
