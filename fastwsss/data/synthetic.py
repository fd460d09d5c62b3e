"""The built-in synthetic "confounded scenes" data set: generated on first use, no download.

Ten object classes (distinct shape, colour and texture) sit on context regions of ten scenes (grass,
water, brick ...). Each class has a preferred scene, a co-occurring partner class and a coloured part,
which confound the class with its surroundings the way boats go with water and horses with people;
`debiased` breaks those links. Context pixels are background in SegmentationClass and are marked per
scene in SegmentationContext, so a later metric can measure how much of a class map leaks onto them.

Layout (VOC-like): JPEGImages/<id>.jpg, SegmentationClass/<id>.png (VOC palette), SegmentationContext/
<id>.png (L mode, s + 1 = scene s), ImageSets/Segmentation/{train,val,debiased}.txt, class_names.txt,
scene_names.txt, meta.jsonl (one record per image) and settings.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastwsss.config import SynthConfig
from fastwsss.data.base import SegmentationSource, read_id_list, read_label_png
from fastwsss.data.palette import mask_to_image
from fastwsss.data.synthetic_draw import CLASSES, SCENES
from fastwsss.data.synthetic_render import render_image
from fastwsss.engine.files import atomic_path, read_jsonl, write_json
from fastwsss.errors import ConfigError, DataError

GENERATOR_VERSION = 1
SPLITS: dict[str, tuple[str, int]] = {"train": ("train", 0), "val": ("val", 1), "debiased": ("deb", 2)}
JPEG_QUALITY = 95


def class_names() -> list[str]:
    return [c.name for c in CLASSES]


def scene_names() -> list[str]:
    return [s.name for s in SCENES]


def preferred_scenes() -> list[int]:
    """Index of each class's preferred scene (in scene_names() order)."""
    return [c.scene for c in CLASSES]


def partners() -> list[int]:
    """Index of each class's co-occurring partner class."""
    return [c.partner for c in CLASSES]


def synth_settings(cfg: SynthConfig) -> dict[str, Any]:
    """The settings that determine the data, normalised (1 and 1.0 give the same set and the same cache key)."""
    settings: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        settings[f.name] = float(value) if f.type in ("float", float) else int(value)
    settings["generator_version"] = GENERATOR_VERSION
    return settings


def _check(cfg: SynthConfig) -> None:
    def need(ok: bool, name: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"synth.{name}: {message}")

    need(cfg.size >= 16, "size", f"must be >= 16, got {cfg.size}")
    need(cfg.num_train >= 1 and cfg.num_val >= 1, "num_train/num_val", "must be >= 1")
    need(cfg.num_debiased >= 0, "num_debiased", "must be >= 0")
    need(cfg.max_objects >= 1, "max_objects", f"must be >= 1, got {cfg.max_objects}")
    for name in ("context_prob", "cooccur_prob", "part_context_prob"):
        value = getattr(cfg, name)
        need(0.0 <= value <= 1.0, name, f"must be in [0, 1], got {value}")


def _split_sizes(cfg: SynthConfig) -> dict[str, int]:
    return {"train": cfg.num_train, "val": cfg.num_val, "debiased": cfg.num_debiased}


def _matches(out: Path, settings: dict[str, Any]) -> bool:
    """True when `out` is a finished set made with `settings` (settings.json is written last)."""
    try:
        return json.loads((out / "settings.json").read_text()) == settings
    except (OSError, ValueError):
        return False


def _show_progress(progress: bool) -> bool:
    return progress and os.environ.get("FASTWSSS_NO_PROGRESS", "") not in ("1", "true", "yes")


def _remove_stale_temps(out: Path) -> None:
    """Delete temporary folders left by killed generations of `out` (their process no longer exists)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            continue


def _mask_image(mask: np.ndarray) -> Image.Image:
    """The same P-mode image as `mask_to_image`, with the palette built once instead of per call."""
    if not _PALETTE:
        _PALETTE.extend(mask_to_image(np.zeros((1, 1), dtype=np.uint8)).getpalette() or [])
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    image.putpalette(_PALETTE)
    return image


_PALETTE: list[int] = []


def _write_all(tmp: Path, cfg: SynthConfig, settings: dict[str, Any], progress: bool) -> None:
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationContext", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    (tmp / "class_names.txt").write_text("\n".join(class_names()) + "\n")
    (tmp / "scene_names.txt").write_text("\n".join(scene_names()) + "\n")
    sizes = _split_sizes(cfg)
    total = sum(sizes.values())
    bar = None
    if _show_progress(progress):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("synthetic data"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        bar.start()
    try:
        task = bar.add_task("generate", total=total) if bar else None
        with open(tmp / "meta.jsonl", "w", encoding="utf-8") as meta:
            for split, (prefix, code) in SPLITS.items():
                ids = [f"{prefix}_{i:05d}" for i in range(sizes[split])]
                for index, image_id in enumerate(ids):
                    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, code, index]))
                    drawn = render_image(rng, cfg, debiased=split == "debiased")
                    Image.fromarray(drawn.image).save(
                        tmp / "JPEGImages" / f"{image_id}.jpg", quality=JPEG_QUALITY, subsampling=0
                    )
                    _mask_image(drawn.mask).save(tmp / "SegmentationClass" / f"{image_id}.png")
                    Image.fromarray(drawn.context).save(tmp / "SegmentationContext" / f"{image_id}.png")
                    record = {
                        "id": image_id,
                        "split": split,
                        "num_objects": len(drawn.objects),
                        "objects": drawn.objects,
                    }
                    meta.write(json.dumps(record) + "\n")
                    if bar is not None:
                        bar.advance(task)
                (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    finally:
        if bar is not None:
            bar.stop()
    write_json(tmp / "settings.json", settings)


def generate_synthetic(out: str | Path, cfg: SynthConfig, progress: bool = True) -> Path:
    """Write the synthetic set for `cfg` at `out` and return `out`.

    Same settings give byte-identical files. The set is built in a temporary sibling folder and renamed
    onto `out`, so an interrupted run leaves nothing half-written. An `out` that already holds the set
    made with these settings is returned as is; any other non-empty `out` is refused with a DataError.
    """
    _check(cfg)
    out = Path(out)
    settings = synth_settings(cfg)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder")
        if _matches(out, settings):
            return out
        if any(out.iterdir()):
            raise DataError(
                f"{out}: folder is not empty and is not a synthetic data set with these settings; "
                "remove it or choose another folder"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out.parent}: cannot create folder ({exc.strerror or exc})") from exc
    _remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        try:
            _write_all(tmp, cfg, settings, progress)
        except OSError as exc:
            raise DataError(f"{out}: cannot write synthetic data ({exc.strerror or exc})") from exc
        try:
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            os.rename(tmp, out)
        except OSError as exc:
            if _matches(out, settings):  # another process finished the same set first
                return out
            raise DataError(f"{out}: cannot move the generated set into place ({exc.strerror or exc})") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def data_cache_dir() -> Path:
    """Where generated data lives: $FASTWSSS_DATA_DIR, else ~/.cache/fastwsss."""
    env = os.environ.get("FASTWSSS_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastwsss"


def synthetic_dir(cfg: SynthConfig) -> Path:
    """The cache folder of the set for `cfg`: synthetic-<first 12 hex digits of sha256(settings)>."""
    blob = json.dumps(synth_settings(cfg), sort_keys=True).encode()
    return data_cache_dir() / f"synthetic-{hashlib.sha256(blob).hexdigest()[:12]}"


def ensure_synthetic(cfg: SynthConfig, progress: bool = True) -> Path:
    """The cached set for `cfg`, generated first if missing; concurrent callers end up with one copy."""
    return generate_synthetic(synthetic_dir(cfg), cfg, progress=progress)


class SyntheticSource(SegmentationSource):
    """One split (train, val or debiased) of a generated synthetic set."""

    name = "synthetic"

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root)
        names_path = root / "class_names.txt"
        if not names_path.is_file():
            raise DataError(f"{names_path}: class list not found (not a fastwsss synthetic data folder?)")
        names = [line.strip() for line in names_path.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{names_path}: class list is empty")
        super().__init__(root, split, names)
        list_path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if split not in SPLITS:
            raise DataError(f"{list_path}: unknown split {split!r} of the synthetic data; valid: {', '.join(SPLITS)}")
        self._ids = read_id_list(list_path)
        scenes_path = root / "scene_names.txt"
        self.scene_names = scenes_path.read_text().split() if scenes_path.is_file() else []

    @property
    def ids(self) -> list[str]:
        return self._ids

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def context_path(self, image_id: str) -> Path:
        return self.root / "SegmentationContext" / f"{image_id}.png"

    def load_context(self, image_id: str) -> np.ndarray:
        """uint8 H x W: 0 = no context, s + 1 = context region of scene s."""
        path = self.context_path(image_id)
        if not path.is_file():
            raise DataError(f"{path}: context map not found")
        return read_label_png(path, len(self.scene_names) or len(SCENES))


def load_meta(root: str | Path) -> dict[str, dict[str, Any]]:
    """The per-image records of meta.jsonl, by image id."""
    path = Path(root) / "meta.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: synthetic metadata not found")
    return {row["id"]: row for row in read_jsonl(path)}


def write_preview(root: str | Path, path: str | Path, split: str = "train", n: int = 16) -> Path:
    """A PNG contact sheet of the first `n` images of `split`: image (context outlined in white) | mask.

    In the mask panel objects have their VOC palette colour and context pixels a dimmed version of
    their scene's colour, so one can check that context is background and see which scene it is.
    """
    from fastwsss.data.palette import voc_palette

    source = SyntheticSource(root, split)
    ids = source.ids[: max(1, n)]
    scene_colors = np.array([(0, 0, 0)] + [s.color for s in SCENES], dtype=np.float32)
    palette = voc_palette()
    tiles = []
    for image_id in ids:
        image, mask = source.load_pair(image_id)
        context = source.load_context(image_id)
        panel = palette[mask].astype(np.float32)
        ctx = context > 0
        panel[ctx] = 0.25 * 255 + 0.5 * scene_colors[np.minimum(context[ctx], len(SCENES))]
        edge = ctx & ~(np.roll(ctx, 1, 0) & np.roll(ctx, -1, 0) & np.roll(ctx, 1, 1) & np.roll(ctx, -1, 1))
        outlined = image.copy()
        outlined[edge] = 255
        gap = np.full((image.shape[0], 2, 3), 255, dtype=np.uint8)
        tiles.append(np.concatenate([outlined, gap, panel.astype(np.uint8)], axis=1))
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    th, tw = tiles[0].shape[:2]
    pad = 4
    sheet = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 40, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        sheet[y : y + tile.shape[0], x : x + tile.shape[1]] = tile[:th, :tw]
    scale = max(1, 192 // th)
    picture = Image.fromarray(sheet)
    if scale > 1:
        picture = picture.resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.Resampling.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
