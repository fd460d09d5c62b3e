"""MS COCO 2014 as a `SegmentationSource`, in the folder layout that WSSS code (MCTformer, AMN, ...) uses.

Layout::

    ROOT/
        JPEGImages/train2014/<id>.jpg          ids like COCO_train2014_000000000009
        JPEGImages/val2014/<id>.jpg
        SegmentationClass/train2014/<id>.png   class index 0..80 (0 = background, 255 = ignore)
        SegmentationClass/val2014/<id>.png
        ImageSets/train.txt, ImageSets/val.txt one id per line

Split "train" reads the train2014 folders and "val" the val2014 ones. A missing list is built from the
image folder (sorted). The masks are made once from the official instances JSON with
`convert_instances_to_masks` (needs pycocotools).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fastwsss.data.base import check_image_id, read_id_list
from fastwsss.data.palette import IGNORE_INDEX, save_mask_png
from fastwsss.data.voc import ClsLabelsSource
from fastwsss.engine.files import atomic_path
from fastwsss.errors import ConfigError, DataError, one_line

COCO_CLASSES: list[str] = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip

# The official (non-contiguous) category ids of COCO_CLASSES, in the same order.
COCO_CATEGORY_IDS: list[int] = [
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91),
]  # fmt: skip

SPLIT_FOLDERS = {"train": "train2014", "val": "val2014"}


class COCOSource(ClsLabelsSource):
    """One split of COCO 2014 with 80 foreground classes (mask ids 1..80)."""

    name = "coco"

    def __init__(self, root: str | Path, split: str, cls_labels: str | Path | None = None) -> None:
        super().__init__(root, split, COCO_CLASSES)
        if not (self.root / "JPEGImages").is_dir():
            raise DataError(f"{self.root}: no JPEGImages folder; expected the COCO layout ROOT/JPEGImages/train2014")
        self.folder = SPLIT_FOLDERS.get(split, split)
        self._ids = self._read_or_build_list()
        self.use_cls_labels(cls_labels)

    def _read_or_build_list(self) -> list[str]:
        list_path = self.root / "ImageSets" / f"{self.split}.txt"
        if list_path.is_file():
            return read_id_list(list_path)
        image_dir = self.root / "JPEGImages" / self.folder
        if not image_dir.is_dir():
            raise DataError(f"split {self.split!r}: neither the list {list_path} nor the folder {image_dir} exists")
        ids = sorted(p.stem for p in image_dir.glob("*.jpg"))
        if not ids:
            raise DataError(f"{image_dir}: no .jpg images to build the {self.split!r} list from")
        return ids

    @property
    def ids(self) -> list[str]:
        return self._ids

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / self.folder / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        path = self.root / "SegmentationClass" / self.folder / f"{image_id}.png"
        return path if path.is_file() else None

    def cls_label_keys(self, image_id: str) -> list[object]:
        """The id string, or the int of its trailing number."""
        tail = image_id.rsplit("_", 1)[-1]
        return [image_id, int(tail)] if tail.isdigit() else [image_id]


def _default_list_path(out_dir: Path) -> Path:
    """ROOT/ImageSets/<split>.txt when out_dir is ROOT/SegmentationClass/<split>2014, else <out_dir>.txt."""
    if out_dir.parent.name == "SegmentationClass":
        split = out_dir.name.rstrip("0123456789") or out_dir.name
        return out_dir.parent.parent / "ImageSets" / f"{split}.txt"
    return out_dir.parent / f"{out_dir.name}.txt"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _check_list_is_ours(path: Path, stems: set[str]) -> None:
    """Refuse to replace `path` unless it is an id list of this conversion (from an earlier, interrupted run).

    The default list lies beside the mask folder (<out>.txt), where a user may keep a file of that name.
    """
    if not path.exists():
        return
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        lines = [""]
    if not path.is_file() or not set(lines) <= stems:
        raise DataError(f"{path}: exists and is not an id list of these masks; move it away (it would be replaced)")


def _load_coco(instances_json: Path) -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise ConfigError("pycocotools is not installed: pip install 'fastwsss[coco]'") from None
    if not instances_json.is_file():
        raise DataError(f"{instances_json}: instances JSON not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(instances_json))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError,
            AssertionError) as exc:  # pycocotools checks the file's layout with assert
        raise DataError(f"{instances_json}: not a COCO instances file ({type(exc).__name__}: {exc})") from None


def _annotations(coco: Any, image_id: int) -> list[dict]:
    return coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))


def _draw_mask(coco: Any, image_info: dict, class_of: dict[int, int], source: Path) -> np.ndarray:
    """The class-index mask of one image.

    Instances are drawn largest area first so a small object lying on a larger one stays visible; crowd
    regions are drawn as 255 (ignore) by the same rule.
    """
    mask = np.zeros((image_info["height"], image_info["width"]), dtype=np.uint8)
    anns = sorted(_annotations(coco, image_info["id"]), key=lambda a: float(a.get("area", 0.0)), reverse=True)
    for ann in anns:
        with warnings.catch_warnings():
            # pycocotools' compiled decoder trips numpy 2's copy-keyword deprecation; the result is correct.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
            region = coco.annToMask(ann).astype(bool)
        if ann.get("iscrowd", 0):
            mask[region] = IGNORE_INDEX
        elif ann.get("category_id") in class_of:
            mask[region] = class_of[ann["category_id"]]
        else:
            raise DataError(
                f"{source}: annotation {ann.get('id')} has category {ann.get('category_id')!r}, not in categories"
            )
    return mask


def convert_instances_to_masks(
    instances_json: Path,
    out_dir: Path,
    ids: list[str] | None = None,
    progress: bool = True,
    list_path: Path | None = None,
) -> int:
    """Write one class-index PNG per image of a COCO instances JSON; return how many were written.

    Category ids map to mask ids in sorted category-id order: the official 80 map to 1..80 (COCO_CLASSES
    order). A file holding only some official categories keeps their official indices, so its masks still
    match COCO_CLASSES; a file with other category ids numbers them 1..N.
    Files already present are skipped, so an interrupted run resumes. `ids` (file-name stems) limits the
    images. The id list (default: see `_default_list_path`) holds the selected images with at least one
    non-crowd object, as in the WSSS COCO lists; images without one still get an all-background mask.
    """
    instances_json, out_dir = Path(instances_json), Path(out_dir)
    coco = _load_coco(instances_json)
    category_ids = sorted(coco.getCatIds())
    if set(category_ids) <= set(COCO_CATEGORY_IDS):
        category_ids = COCO_CATEGORY_IDS
    class_of = {cat_id: index + 1 for index, cat_id in enumerate(category_ids)}
    if len(class_of) > IGNORE_INDEX - 1:
        raise DataError(f"{instances_json}: {len(class_of)} categories do not fit in an 8-bit mask")
    try:
        infos = sorted(coco.loadImgs(coco.getImgIds()), key=lambda info: str(info["file_name"]))
        by_stem = {check_image_id(Path(_text(info["file_name"])).stem, instances_json): info for info in infos}
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{instances_json}: an image entry lacks a usable file_name ({type(exc).__name__}: {exc})") from None
    destination = list_path if list_path is not None else _default_list_path(out_dir)
    _check_list_is_ours(destination, set(by_stem))
    if ids is not None:
        missing = [i for i in ids if i not in by_stem]
        if missing:
            raise DataError(f"{instances_json}: image id {missing[0]} is not in this file")
        by_stem = {i: by_stem[i] for i in sorted(set(ids))}
    show = progress and not os.environ.get("FASTWSSS_NO_PROGRESS")
    written, listed = 0, []
    for count, (stem, info) in enumerate(by_stem.items(), start=1):
        target = out_dir / f"{stem}.png"
        if not target.is_file():
            try:
                mask = _draw_mask(coco, info, class_of, instances_json)
            except KeyError as exc:
                raise DataError(
                    f"{instances_json}: image {stem} or one of its annotations lacks the field {exc}"
                ) from exc
            except (TypeError, ValueError, IndexError, AttributeError) as exc:
                raise DataError(f"{instances_json}: image {stem} has a malformed annotation ({type(exc).__name__}: "
                                f"{one_line(str(exc))[:200]})") from None
            save_mask_png(mask, target)
            written += 1
        if any(not ann.get("iscrowd", 0) for ann in _annotations(coco, info["id"])):
            listed.append(stem)
        if show and (count % 500 == 0 or count == len(by_stem)):
            print(f"\rconverted {count}/{len(by_stem)} masks", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    with atomic_path(destination) as tmp:
        tmp.write_text("".join(f"{stem}\n" for stem in listed))
    return written
