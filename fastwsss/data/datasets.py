"""Torch data sets over a `SegmentationSource` for classifier and segmentation training.

Augmentation randomness comes from `np.random.default_rng([seed, epoch, index])`, never from a global or
per-worker generator: a sample depends only on (seed, epoch, index), so results do not change with the
number of workers or their scheduling, and a resumed run reproduces the crops it would have drawn.
Call `set_epoch` before each epoch. A DataLoader without `persistent_workers` copies the data set into
its workers at every new iterator, so the epoch reaches them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from fastwsss.data.base import SegmentationSource
from fastwsss.data.palette import IGNORE_INDEX
from fastwsss.data.transforms import (
    CropBox,
    apply_crop,
    draw_long_side,
    hflip,
    long_side_size,
    normalize,
    random_crop_box,
    resize_long,
    resize_long_mask,
    to_chw_tensor,
    top_left_box,
)


class ClassificationDataset(Dataset):
    """Images as float32 3 x crop x crop tensors with their multi-hot labels (docs/algorithms.md section 2).

    With `augment=True`: random long-side resize in `resize_long`, random h-flip, ImageNet normalisation,
    random crop (pad 0). With `augment=False`: long side resized to `crop`, normalised, top-left placed on
    a zero canvas, so batches still stack and nothing is random.

    Rescaling relative to each image's own size replaces `resize_long` when given: `scale_set`, a factor
    drawn from the set (DeepLab's 0.5..1.5), else `scale_range`, a long side drawn uniformly from the
    integers round(lo * L) .. round(hi * L) for the image's long side L (IRNet's random_scale draws the
    factor continuously; the integer long side is the same up to one pixel).
    """

    def __init__(
        self,
        source: SegmentationSource,
        resize_long: tuple[int, int],
        crop: int,
        seed: int = 0,
        augment: bool = True,
        scale_range: tuple[float, ...] = (),
        scale_set: tuple[float, ...] = (),
    ) -> None:
        lo, hi = resize_long
        if not 0 < lo <= hi:
            raise ValueError(f"resize_long must satisfy 0 < min <= max, got {resize_long}")
        if crop < 1:
            raise ValueError(f"crop must be >= 1, got {crop}")
        self.source = source
        self.resize_long = (int(lo), int(hi))
        self.crop = int(crop)
        self.seed = int(seed)
        self.augment = augment
        if scale_range and not (len(scale_range) == 2 and 0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        if any(f <= 0 for f in scale_set):
            raise ValueError(f"scale factors must be positive, got {scale_set}")
        self.scale_range = tuple(float(x) for x in scale_range)
        self.scale_set = tuple(float(x) for x in scale_set)
        self.epoch = 0
        self._labels: dict[str, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of `epoch` (a non-negative integer)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source.ids)

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator of sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def label(self, image_id: str) -> np.ndarray:
        """Multi-hot labels of `image_id`, read from the source once and then cached."""
        cached = self._labels.get(image_id)
        if cached is None:
            cached = np.asarray(self.source.labels(image_id), dtype=np.float32)
            self._labels[image_id] = cached
        return cached

    def _geometry(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, bool, CropBox]:
        """Long side, flip and crop box of one sample; drawn in a fixed order so the stream is stable."""
        if not self.augment:
            h, w = long_side_size(height, width, self.crop)
            return self.crop, False, top_left_box(h, w, self.crop)
        long_side = self._draw_long_side(height, width, rng)
        flip = bool(rng.random() < 0.5)
        h, w = long_side_size(height, width, long_side)
        return long_side, flip, random_crop_box(h, w, self.crop, rng)

    def long_side_range(self, height: int, width: int) -> tuple[int, int]:
        """The range of the drawn long side for an image of this size."""
        if not self.scale_range:
            return self.resize_long
        longest = max(height, width)
        lo = max(1, round(self.scale_range[0] * longest))
        return lo, max(lo, round(self.scale_range[1] * longest))

    def _draw_long_side(self, height: int, width: int, rng: np.random.Generator) -> int:
        if self.scale_set:
            factor = self.scale_set[int(rng.integers(len(self.scale_set)))]
            return max(1, round(factor * max(height, width)))
        return draw_long_side(*self.long_side_range(height, width), rng)

    def _image_tensor(self, image: np.ndarray, long_side: int, flip: bool, box: CropBox) -> torch.Tensor:
        image = resize_long(image, long_side)
        if flip:
            image = hflip(image)
        return to_chw_tensor(apply_crop(normalize(image), box, self.crop, 0.0))

    def __getitem__(self, index: int) -> dict:
        image_id = self.source.ids[index]
        image = self.source.load_image(image_id)
        long_side, flip, box = self._geometry(image.shape[0], image.shape[1], self.rng_for(index))
        return {
            "image": self._image_tensor(image, long_side, flip, box),
            "label": torch.from_numpy(self.label(image_id).copy()),
            "id": image_id,
        }


class SegmentationDataset(ClassificationDataset):
    """As `ClassificationDataset`, plus `mask`: int64 crop x crop, resized nearest, padded with 255."""

    def __getitem__(self, index: int) -> dict:
        image_id = self.source.ids[index]
        image, mask = self.source.load_pair(image_id)
        long_side, flip, box = self._geometry(image.shape[0], image.shape[1], self.rng_for(index))
        mask = resize_long_mask(mask, long_side)
        if flip:
            mask = hflip(mask)
        mask = apply_crop(mask, box, self.crop, IGNORE_INDEX)
        return {
            "image": self._image_tensor(image, long_side, flip, box),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "label": torch.from_numpy(self.label(image_id).copy()),
            "id": image_id,
        }
