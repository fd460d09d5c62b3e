"""PASCAL VOC 2012 (with the SBD-augmented `train_aug` split) as a `SegmentationSource`.

Layout (docs/algorithms.md section 10)::

    VOCdevkit/VOC2012/
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png        official masks (train, val)
        SegmentationClassAug/<id>.png     optional: SBD-converted masks covering train_aug
        ImageSets/Segmentation/{train,val,trainval,train_aug}.txt

Image-level labels come from the masks, or from an IRNet-style `cls_labels.npy` when one is given
(needed for train_aug ids whose masks are not at hand).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastwsss.data.base import SegmentationSource, labels_from_mask, read_id_list
from fastwsss.data.safe_npy import load_label_table
from fastwsss.errors import DataError

VOC_CLASSES: list[str] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def read_cls_labels(path: str | Path) -> dict:
    """The dict stored in an IRNet-style `cls_labels.npy` (id key -> multi-hot vector).

    The file is a pickled dict; it is read by a restricted unpickler that admits only numpy arrays and plain
    values (fastwsss.data.safe_npy), so a crafted file cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: cls_labels file not found")
    return load_label_table(path)


def lookup_cls_labels(table: dict, path: Path, keys: Sequence[object], image_id: str, num_classes: int) -> np.ndarray:
    """The float32[num_classes] vector stored under the first of `keys` present in `table`."""
    for key in keys:
        if key in table:
            vector = np.asarray(table[key], dtype=np.float32).reshape(-1)
            if vector.shape[0] != num_classes:
                raise DataError(
                    f"{path}: label vector of {image_id} has {vector.shape[0]} values but the data set has "
                    f"{num_classes} classes (class-count mismatch)"
                )
            return vector
    raise DataError(f"{path}: no labels for image id {image_id} (looked up keys {list(keys)!r})")


def _resolve_voc_root(root: Path) -> Path:
    """Accept either `.../VOCdevkit/VOC2012` or `.../VOCdevkit`."""
    for candidate in (root, root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"{root}: no JPEGImages folder here or in {root / 'VOC2012'}; give VOCdevkit/VOC2012 as the root")


class ClsLabelsSource(SegmentationSource):
    """Image-level labels from an IRNet-style `cls_labels.npy` when given, else from the masks; cached per id.

    Subclasses say which npy keys an image id may have (`cls_label_keys`) and call `use_cls_labels`.
    """

    def use_cls_labels(self, cls_labels: str | Path | None) -> None:
        self._cls: tuple[Path, dict] | None = None
        if cls_labels is not None:
            self._cls = (Path(cls_labels), read_cls_labels(cls_labels))
        self._label_cache: dict[str, np.ndarray] = {}

    def cls_label_keys(self, image_id: str) -> list[object]:
        return [image_id]

    def labels(self, image_id: str) -> np.ndarray:
        cached = self._label_cache.get(image_id)
        if cached is not None:
            return cached
        if self._cls is not None:
            keys = self.cls_label_keys(image_id)
            vector = lookup_cls_labels(self._cls[1], self._cls[0], keys, image_id, self.num_classes)
        else:
            vector = labels_from_mask(self.load_mask(image_id), self.num_classes)
        self._label_cache[image_id] = vector
        return vector


class VOCSource(ClsLabelsSource):
    """One split of PASCAL VOC 2012; ids are kept as strings such as "2007_000032"."""

    name = "voc"

    def __init__(self, root: str | Path, split: str, cls_labels: str | Path | None = None) -> None:
        given = Path(root)
        voc_root = _resolve_voc_root(given)
        super().__init__(voc_root, split, VOC_CLASSES)
        self._ids = read_id_list(self._find_list(given, voc_root, split))
        self._aug_dir = voc_root / "SegmentationClassAug"
        self._has_aug = self._aug_dir.is_dir()
        self.use_cls_labels(cls_labels)

    @staticmethod
    def _find_list(given: Path, voc_root: Path, split: str) -> Path:
        candidates = [voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"]
        if split == "train_aug":
            candidates += [voc_root / "train_aug.txt", given / "train_aug.txt"]
        unique = list(dict.fromkeys(candidates))
        for path in unique:
            if path.is_file():
                return path
        raise DataError(f"image list for split {split!r} not found; expected {' or '.join(str(p) for p in unique)}")

    @property
    def ids(self) -> list[str]:
        return self._ids

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        """SegmentationClassAug wins over SegmentationClass when it holds the id.

        The Aug folder is the only one covering all of train_aug, and on the official train/val ids its
        masks equal SegmentationClass, so preferring it never changes a mask that both folders hold.
        """
        if self._has_aug:
            aug = self._aug_dir / f"{image_id}.png"
            if aug.is_file():
                return aug
        official = self.root / "SegmentationClass" / f"{image_id}.png"
        return official if official.is_file() else None

    def cls_label_keys(self, image_id: str) -> list[object]:
        """IRNet's key is int(id without "_"); the id string is accepted too."""
        digits = image_id.replace("_", "")
        return [int(digits), image_id] if digits.isdigit() else [image_id]
