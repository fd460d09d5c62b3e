"""What every data set offers the stages: string image ids, images, masks and image-level labels.

A `SegmentationSource` is one split of one data set. Stages never look at folder layouts; they ask a
source for `ids`, `load_image(id)`, `load_mask(id)` and `labels(id)`. Errors name the file involved.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fastwsss.data.palette import IGNORE_INDEX
from fastwsss.errors import DataError


def id_problem(image_id: str) -> str | None:
    """Why `image_id` cannot be an image name (a path separator, "..", NUL, a leading dot...), or None.

    Ids become file names in the run directory (cams/<id>.npz, pseudo/<id>.png), so an id is a name and
    never a path: "../../x" would otherwise write outside the run (docs/security.md).
    """
    if not image_id:
        return "is empty"
    if "/" in image_id or "\\" in image_id:
        return "contains a path separator"
    if "\0" in image_id or any(ord(ch) < 32 for ch in image_id):
        return "contains a control character"
    if image_id.startswith("."):
        return "starts with a dot"
    if len(image_id.encode("utf-8", "surrogateescape")) > 200:
        return "is longer than 200 bytes"
    return None


def check_image_id(image_id: str, where: str | Path) -> str:
    """`image_id` unchanged, or a one-line DataError naming `where` (the list file) and the id."""
    problem = id_problem(image_id)
    if problem is not None:
        raise DataError(f"{where}: image id {image_id!r} {problem}; ids are file names, not paths")
    return image_id


def read_id_list(path: Path) -> list[str]:
    """One image id per line, kept as strings ("2007_000032" is not a number); each checked to be a name."""
    if not path.is_file():
        raise DataError(f"{path}: image list not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the image list ({exc})") from None
    ids = [check_image_id(line.split()[0], path) for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: image list is empty")
    return ids


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, EXIF orientation applied; one-line DataError otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float64)
                peak = max(float(array.max()), 1.0)
                image = Image.fromarray((array / peak * 255.0).astype(np.uint8))
            rgb = image.convert("RGB")
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image file PIL can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from exc
    return np.array(rgb, dtype=np.uint8)


def read_label_png(path: Path, num_classes: int) -> np.ndarray:
    """A class-index PNG (P or L mode) as (H, W) uint8; ids outside 0..num_classes and not 255 are an error."""
    if not path.is_file():
        raise DataError(f"{path}: mask file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise DataError(f"{path}: mask must be a P- or L-mode PNG of class ids, got mode {image.mode}")
            mask = np.asarray(image, dtype=np.uint8).copy()
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image file PIL can read") from exc
    except OSError as exc:
        raise DataError(f"{path}: corrupt or truncated mask ({exc})") from exc
    bad = (mask > num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise DataError(
            f"{path}: mask holds class id {int(mask[bad].max())}, but the data set has ids 0..{num_classes} (+255)"
        )
    return mask


class SegmentationSource(ABC):
    """One split of a data set with K foreground classes (ids 1..K in masks, 0 = background, 255 = ignore)."""

    name: str = "base"

    def __init__(self, root: str | Path, split: str, class_names: list[str]) -> None:
        self.root = Path(root)
        self.split = split
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K (background excluded)."""
        return len(self.class_names)

    @property
    @abstractmethod
    def ids(self) -> list[str]:
        """Image ids of this split, as strings."""

    @abstractmethod
    def image_path(self, image_id: str) -> Path: ...

    @abstractmethod
    def mask_path(self, image_id: str) -> Path | None:
        """Path of the ground-truth mask, or None where this split has none."""

    def has_masks(self) -> bool:
        return all(self.mask_path(i) is not None and self.mask_path(i).is_file() for i in self.ids[:1])

    def load_image(self, image_id: str) -> np.ndarray:
        return read_rgb(self.image_path(image_id))

    def load_mask(self, image_id: str) -> np.ndarray:
        path = self.mask_path(image_id)
        if path is None:
            raise DataError(f"{self.root}: split {self.split!r} has no mask for {image_id}")
        return read_label_png(path, self.num_classes)

    def load_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask, checked to have the same size."""
        image = self.load_image(image_id)
        mask = self.load_mask(image_id)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{self.mask_path(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        return image, mask

    def labels(self, image_id: str) -> np.ndarray:
        """Image-level multi-hot labels, float32[K], derived from the mask by default."""
        return labels_from_mask(self.load_mask(image_id), self.num_classes)

    def check_files(self) -> None:
        """Fail early, naming the first missing file, before any long work starts."""
        for image_id in self.ids:
            path = self.image_path(image_id)
            if not path.is_file():
                raise DataError(f"{path}: listed in split {self.split!r} but the image file does not exist")

    def __len__(self) -> int:
        return len(self.ids)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot float32[K] of the foreground classes present in a mask (0 and 255 skipped)."""
    present = np.unique(mask)
    labels = np.zeros(num_classes, dtype=np.float32)
    for value in present:
        if 1 <= value <= num_classes:
            labels[value - 1] = 1.0
    return labels
