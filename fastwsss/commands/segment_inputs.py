"""Which images `fastwsss segment` reads and where each one's outputs go, all of them under --out.

Output names come from the inputs' names relative to the folder or glob they were found by, with any ".."
resolved, so no output lies outside --out (checked again on the resolved paths, links included); an output
that already exists is never replaced unless --overwrite is given (fastwsss.commands.segment).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from fastwsss.engine.progress import console
from fastwsss.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


@dataclass
class Item:
    """One input image and the output name it gets (relative to --out, no suffix)."""

    path: Path
    rel: Path
    outputs: dict[str, Path] = field(default_factory=dict)


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _say(message: str) -> None:
    console.print(escape(message), soft_wrap=True, highlight=False)


def _not_regular(path: Path) -> str:
    """What `path` is when it is not a regular file (never opened: reading a FIFO would block forever)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "gone"
    if stat.S_ISLNK(mode):
        return "a link that leads nowhere (broken, or a loop)"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a socket or device"


def _regular_files(paths: Iterable[Path]) -> list[Path]:
    """The regular files of `paths`; an image name that is no regular file is skipped with one line."""
    keep = []
    for path in paths:
        if path.is_file():
            keep.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir():
            _say(f"skipped: {path} is {_not_regular(path)}, not an image file")
    return sorted(keep)


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return _regular_files(
        p for p in found
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def collect_inputs(inputs: list[str], recursive: bool) -> tuple[list[Item], list[Path]]:
    """(images with their relative output names, the folder inputs); one-line DataError for a missing input."""
    folders = [Path(raw) for raw in inputs if not _is_glob(raw) and Path(raw).is_dir()]
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            prefix = Path(path.resolve().name) if len(folders) > 1 else Path()
            items += [Item(f, prefix / f.relative_to(path)) for f in _folder_images(path, recursive)]
            if not recursive and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
                _say(f"{path}: sub-folders skipped (add --recursive to include them)")
        elif path.is_file():
            items.append(Item(path, Path(path.name)))
        elif _is_glob(raw):
            fixed = _parts_before_magic(path)
            base = Path(*fixed) if fixed else Path()
            pattern = str(Path(*path.parts[len(fixed) :]))
            matches = _regular_files(base.glob(pattern)) if base.is_dir() else []
            if not matches:
                raise DataError(f"{raw}: the pattern matches no file")
            items += [Item(p, _name_under(p, base)) for p in matches]
        elif path.exists() or path.is_symlink():
            raise DataError(f"{raw}: is {_not_regular(path)}, not an image file")
        else:
            raise DataError(f"{raw}: no such file or folder")
    unique: dict[Path, Item] = {}
    for item in items:
        unique.setdefault(item.path.resolve(), item)
    return list(unique.values()), folders


def _name_under(path: Path, base: Path) -> Path:
    """`path` relative to `base` with ".." resolved: a glob such as "a/*/../../b/*.jpg" must not carry its
    ".." into the output name (where it would climb out of --out); a match outside `base` keeps its name."""
    resolved, anchor = path.resolve(), base.resolve()
    return resolved.relative_to(anchor) if anchor in resolved.parents else Path(path.name)


def _parts_before_magic(path: Path) -> list[str]:
    parts = []
    for part in path.parts:
        if _is_glob(part):
            break
        parts.append(part)
    return parts


def plan_outputs(items: list[Item], out: Path, overlay: bool, cam: bool) -> None:
    """Give every item unique output paths (case-insensitively, for macOS and Windows file systems)."""
    stems: dict[str, int] = {}
    for item in items:
        key = str(item.rel.with_suffix("")).lower()
        stems[key] = stems.get(key, 0) + 1
    tails = {"mask": ".png", **({"overlay": "_overlay.jpg"} if overlay else {}), **({"cam": "_cam.png"} if cam else {})}
    taken: set[str] = set()
    for item in items:
        base = item.rel.with_suffix("")
        if stems[str(base).lower()] > 1:  # a.jpg and a.png: a_jpg, a_png
            base = base.with_name(f"{base.name}_{item.rel.suffix.lstrip('.').lower()}")
        candidate, n = base, 1
        while any(str(candidate).lower() + tail.lower() in taken for tail in tails.values()):
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        for key, tail in tails.items():  # one base for all of an image's files
            taken.add(str(candidate).lower() + tail.lower())
            item.outputs[key] = out / (str(candidate) + tail)


def check_out(out: Path, items: list[Item], folders: list[Path]) -> None:
    """Refuse an --out that would put any file into an input folder (or onto an input file)."""
    target = out.resolve()
    for folder in folders:
        where = folder.resolve()
        if target == where or where in target.parents:
            raise ConfigError(f"--out {out}: is inside the input folder {folder}; choose a folder outside it")
    for item in items:
        for path in item.outputs.values():
            if target not in path.resolve().parents:
                raise ConfigError(f"--out {out}: {path} would lie outside it (a '..' or a link in the name)")
    holders = {item.path.resolve().parent for item in items}
    inputs = {item.path.resolve() for item in items}
    for item in items:
        for path in item.outputs.values():
            if path.resolve().parent in holders or path.resolve() in inputs:
                raise ConfigError(
                    f"--out {out}: would write {path.name} into {path.resolve().parent}, which holds input images"
                )


def keep_existing(items: list[Item]) -> tuple[list[Item], list[str]]:
    """(the items none of whose outputs exist yet, one line per item skipped because one does).

    `segment` never replaces a file it did not write in this run (a user's holiday.png, a run's own
    pseudo/*.png when --out is the run directory) unless --overwrite is given.
    """
    fresh, skipped = [], []
    for item in items:
        existing = [p for p in item.outputs.values() if p.exists() or p.is_symlink()]
        if existing:
            skipped.append(f"{item.path}: not segmented, {existing[0]} exists (--overwrite replaces it)")
        else:
            fresh.append(item)
    return fresh, skipped
