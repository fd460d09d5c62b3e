"""Transforms: crop/pad semantics, shared boxes, normalisation, resize bounds and seeded determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastwsss.data.base import SegmentationSource
from fastwsss.data.datasets import ClassificationDataset, SegmentationDataset
from fastwsss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    hflip,
    normalize,
    random_crop,
    random_resize_long,
    resize_long_mask,
    scale_image,
    to_chw_tensor,
)


def coordinate_image(height: int, width: int) -> np.ndarray:
    """float32 (H, W, 2) whose pixel (y, x) holds (y + 1, x + 1): a crop reveals exactly where it came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([ys + 1, xs + 1], axis=-1).astype(np.float32)


def coordinate_mask(height: int, width: int) -> np.ndarray:
    """uint8 (H, W) holding (y * W + x) % 200, distinct from the pad value 255."""
    ys, xs = np.mgrid[0:height, 0:width]
    return ((ys * width + xs) % 200).astype(np.uint8)


def test_crop_of_larger_image_is_a_window_shared_with_the_mask() -> None:
    image, mask = coordinate_image(50, 70), coordinate_mask(50, 70)
    out_image, out_mask = random_crop([image, mask], 32, np.random.default_rng(3))
    assert out_image.shape == (32, 32, 2) and out_mask.shape == (32, 32)
    assert (out_image > 0).all()  # no padding
    top, left = int(out_image[0, 0, 0]) - 1, int(out_image[0, 0, 1]) - 1
    np.testing.assert_array_equal(out_image, image[top : top + 32, left : left + 32])
    np.testing.assert_array_equal(out_mask, mask[top : top + 32, left : left + 32])


def test_crop_of_smaller_image_pads_image_with_zero_and_mask_with_255() -> None:
    image, mask = coordinate_image(10, 20), coordinate_mask(10, 20)
    offsets = set()
    for seed in range(12):
        out_image, out_mask = random_crop([image, mask], 32, np.random.default_rng(seed))
        assert out_image.shape == (32, 32, 2) and out_mask.shape == (32, 32)
        inside = out_image[..., 0] > 0
        assert inside.sum() == 10 * 20  # the whole image is kept
        ys, xs = np.nonzero(inside)
        top, left = ys.min(), xs.min()
        offsets.add((int(top), int(left)))
        np.testing.assert_array_equal(out_image[top : top + 10, left : left + 20], image)
        np.testing.assert_array_equal(out_mask[top : top + 10, left : left + 20], mask)
        assert (out_image[~inside] == 0).all()
        assert (out_mask[~inside] == 255).all()
    assert len(offsets) > 1  # the offset is random, not always top-left


def test_crop_mixed_axes_and_explicit_pad_values() -> None:
    image = coordinate_image(10, 80)
    (out,) = random_crop([image], 32, np.random.default_rng(0), pad_values=[-7.0])
    inside = out[..., 0] > 0
    assert inside.sum() == 10 * 32  # height padded, width cropped
    assert (out[~inside] == -7.0).all()


def test_crop_rejects_arrays_of_different_size() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        random_crop([np.zeros((8, 8, 3)), np.zeros((8, 9))], 4, np.random.default_rng(0))


def test_normalize_matches_imagenet_formula() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    out = normalize(image)
    assert out.dtype == np.float32 and out.shape == (5, 6, 3)
    expected = (image.astype(np.float64) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(IMAGENET_MEAN, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(IMAGENET_STD, [0.229, 0.224, 0.225])


def test_random_resize_long_stays_within_bounds_and_keeps_aspect() -> None:
    image = np.zeros((30, 60, 3), dtype=np.uint8)
    sides = set()
    for seed in range(40):
        out = random_resize_long(image, 40, 44, np.random.default_rng(seed))
        assert out.dtype == np.uint8
        assert 40 <= out.shape[1] <= 44
        assert out.shape[0] == round(out.shape[1] / 2)
        sides.add(out.shape[1])
    assert sides == {40, 41, 42, 43, 44}  # both ends reachable
    with pytest.raises(ValueError):
        random_resize_long(image, 50, 40, np.random.default_rng(0))


def test_resize_long_mask_invents_no_class_ids() -> None:
    mask = np.zeros((20, 40), dtype=np.uint8)
    mask[:, 20:] = 7
    mask[0, 0] = 255
    out = resize_long_mask(mask, 73)
    assert out.shape == (36, 73)  # round(36.5) = 36
    assert set(np.unique(out).tolist()) <= {0, 7, 255}


def test_hflip_and_chw_tensor() -> None:
    image = coordinate_image(3, 4)
    flipped = hflip(image)
    np.testing.assert_array_equal(flipped[:, 0], image[:, -1])
    tensor = to_chw_tensor(image)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 3, 4) and tensor.dtype == torch.float32
    assert tensor[1, 2, 3].item() == image[2, 3, 1]


def test_scale_image_rounds_each_side() -> None:
    image = np.zeros((33, 50, 3), dtype=np.uint8)
    assert scale_image(image, 0.5).shape == (16, 25, 3)  # round(16.5) = 16 (half to even), round(25) = 25
    assert scale_image(image, 1.5).shape == (50, 75, 3)
    assert scale_image(image, 1.0).shape == (33, 50, 3)
    assert scale_image(image, 0.5).dtype == np.uint8


class _ArraySource(SegmentationSource):
    """In-memory source of random images and masks for the data-set tests."""

    name = "arrays"

    def __init__(self, count: int = 3) -> None:
        super().__init__(Path("."), "train", ["a", "b", "c"])
        rng = np.random.default_rng(0)
        self._images = [rng.integers(0, 256, size=(40 + 7 * i, 60, 3), dtype=np.uint8) for i in range(count)]
        # Masks of 10 x 10 blocks: regions large enough to survive resampling.
        blocks = [rng.integers(0, 4, size=(5 + i, 6), dtype=np.uint8) for i in range(count)]
        self._masks = [np.kron(b, np.ones((10, 10), dtype=np.uint8))[: 40 + 7 * i] for i, b in enumerate(blocks)]
        self.label_reads = 0

    @property
    def ids(self) -> list[str]:
        return [f"img_{i}" for i in range(len(self._images))]

    def image_path(self, image_id: str) -> Path:
        return Path(image_id)

    def mask_path(self, image_id: str) -> Path | None:
        return Path(image_id)

    def load_image(self, image_id: str) -> np.ndarray:
        return self._images[int(image_id.split("_")[1])]

    def load_mask(self, image_id: str) -> np.ndarray:
        return self._masks[int(image_id.split("_")[1])]

    def labels(self, image_id: str) -> np.ndarray:
        self.label_reads += 1
        return super().labels(image_id)


def test_classification_dataset_is_deterministic_per_seed_epoch_index() -> None:
    source = _ArraySource()
    dataset = ClassificationDataset(source, resize_long=(30, 90), crop=48, seed=5)
    first = dataset[1]
    assert first["image"].shape == (3, 48, 48) and first["image"].dtype == torch.float32
    assert first["label"].dtype == torch.float32 and first["label"].shape == (3,)
    assert first["id"] == "img_1"
    again = ClassificationDataset(source, resize_long=(30, 90), crop=48, seed=5)[1]
    assert torch.equal(first["image"], again["image"])
    dataset.set_epoch(1)
    assert not torch.equal(first["image"], dataset[1]["image"])
    dataset.set_epoch(0)
    assert torch.equal(first["image"], dataset[1]["image"])
    other_seed = ClassificationDataset(source, resize_long=(30, 90), crop=48, seed=6)[1]
    assert not torch.equal(first["image"], other_seed["image"])


def test_classification_dataset_reads_labels_once() -> None:
    source = _ArraySource()
    dataset = ClassificationDataset(source, resize_long=(30, 90), crop=48)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            dataset[i]
    assert source.label_reads == len(source.ids)


def test_segmentation_dataset_mask_follows_the_image() -> None:
    source = _ArraySource()
    # Encode each pixel's class in the image's red channel, so the image crop must match the mask crop.
    for image, mask in zip(source._images, source._masks, strict=True):
        image[..., 0] = mask * 60
        image[..., 1:] = 0
    dataset = SegmentationDataset(source, resize_long=(60, 90), crop=48, seed=1)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            sample = dataset[i]
            mask = sample["mask"]
            assert mask.shape == (48, 48) and mask.dtype == torch.int64
            red = sample["image"][0] * float(IMAGENET_STD[0]) + float(IMAGENET_MEAN[0])
            padded = mask == 255
            assert torch.allclose(sample["image"][:, padded], torch.zeros(1))
            valid = ~padded
            # Bicubic resampling blurs class borders; away from them the red value equals class * 60 / 255.
            close = (red[valid] * 255 - mask[valid].float() * 60).abs() < 20
            assert close.float().mean() > 0.8


def test_no_augment_is_fixed_top_left() -> None:
    source = _ArraySource()
    dataset = SegmentationDataset(source, resize_long=(20, 80), crop=64, augment=False)
    sample = dataset[0]  # 40 x 60 -> long side 64: 43 x 64, placed top-left
    assert (sample["mask"][:43, :64] != 255).all()
    assert (sample["mask"][43:] == 255).all()
    dataset.set_epoch(3)
    assert torch.equal(dataset[0]["image"], sample["image"])


def test_worker_count_does_not_change_samples() -> None:
    dataset = ClassificationDataset(_ArraySource(4), resize_long=(30, 90), crop=48, seed=3)
    dataset.set_epoch(2)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers)
        return [batch["image"] for batch in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 2
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
