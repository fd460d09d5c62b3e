"""VOCSource on the real voc-mini files, and on broken copies of them made in tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastwsss.data.base import read_label_png
from fastwsss.data.datasets import ClassificationDataset, SegmentationDataset
from fastwsss.data.palette import save_mask_png
from fastwsss.data.voc import VOC_CLASSES, VOCSource
from fastwsss.errors import DataError

FIRST = "2007_000063"


def copy_tree(voc_root: Path, target: Path) -> Path:
    """A writable copy of a VOC2012 folder (the shared originals are read-only; copy contents, not modes)."""
    for source in voc_root.rglob("*"):
        destination = target / source.relative_to(voc_root)
        if source.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
    return target


@pytest.fixture
def voc_copy(voc_mini: Path, tmp_path: Path) -> Path:
    return copy_tree(voc_mini, tmp_path / "VOCdevkit" / "VOC2012")


def write_cls_labels(path: Path, table: dict) -> Path:
    np.save(path, np.array(table, dtype=object), allow_pickle=True)
    return path


def test_class_names() -> None:
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert VOC_CLASSES[8] == "chair" and VOC_CLASSES[11] == "dog"


def test_ids_are_the_list_strings(voc_mini: Path) -> None:
    source = VOCSource(voc_mini, "train")
    assert source.ids == ["2007_000063", "2011_000003", "2011_000006", "2011_000025"]
    assert all(type(i) is str for i in source.ids)
    assert source.name == "voc" and source.num_classes == 20 and len(source) == 4


def test_labels_from_mask_are_chair_and_dog(voc_mini: Path) -> None:
    source = VOCSource(voc_mini, "train")
    labels = source.labels(FIRST)
    assert labels.dtype == np.float32 and labels.shape == (20,)
    assert np.flatnonzero(labels).tolist() == [8, 11]
    assert [VOC_CLASSES[i] for i in np.flatnonzero(labels)] == ["chair", "dog"]


def test_mask_keeps_void_and_pair_shapes_agree(voc_mini: Path) -> None:
    source = VOCSource(voc_mini, "train")
    assert source.has_masks()
    for image_id in source.ids:
        image, mask = source.load_pair(image_id)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
    mask = source.load_mask(FIRST)
    assert (mask == 255).any()
    assert set(np.unique(mask).tolist()) == {0, 9, 12, 255}


def test_both_root_forms_are_accepted(voc_mini: Path, tmp_path: Path) -> None:
    from_voc2012 = VOCSource(voc_mini, "train")
    from_devkit = VOCSource(voc_mini.parent, "train")
    assert from_devkit.root == from_voc2012.root == voc_mini
    with pytest.raises(DataError, match=str(tmp_path)):
        VOCSource(tmp_path, "train")


def test_missing_list_names_the_expected_path(voc_mini: Path) -> None:
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/val\.txt"):
        VOCSource(voc_mini, "val")
    with pytest.raises(DataError, match=r"train_aug\.txt"):
        VOCSource(voc_mini, "train_aug")


def test_train_aug_list_at_root(voc_copy: Path) -> None:
    (voc_copy / "train_aug.txt").write_text(f"{FIRST}\n2011_000003\n")
    assert VOCSource(voc_copy, "train_aug").ids == [FIRST, "2011_000003"]
    nested = voc_copy / "ImageSets" / "Segmentation" / "train_aug.txt"
    nested.write_text("2011_000025\n")
    assert VOCSource(voc_copy, "train_aug").ids == ["2011_000025"]  # the standard place wins


def test_cls_labels_npy_overrides_mask_labels(voc_mini: Path, tmp_path: Path) -> None:
    table = {int(i.replace("_", "")): np.zeros(20, dtype=np.float32) for i in VOCSource(voc_mini, "train").ids}
    table[2007000063][[0, 19]] = 1.0
    npy = write_cls_labels(tmp_path / "cls_labels.npy", table)
    source = VOCSource(voc_mini, "train", cls_labels=npy)
    assert np.flatnonzero(source.labels(FIRST)).tolist() == [0, 19]
    assert source.labels(FIRST).dtype == np.float32


def test_cls_labels_missing_key_names_file_and_id(voc_mini: Path, tmp_path: Path) -> None:
    npy = write_cls_labels(tmp_path / "cls_labels.npy", {2011000003: np.zeros(20, dtype=np.float32)})
    source = VOCSource(voc_mini, "train", cls_labels=npy)
    with pytest.raises(DataError, match=r"cls_labels\.npy.*2007_000063"):
        source.labels(FIRST)


def test_cls_labels_wrong_length_is_a_class_count_mismatch(voc_mini: Path, tmp_path: Path) -> None:
    npy = write_cls_labels(tmp_path / "cls_labels.npy", {2007000063: np.zeros(21, dtype=np.float32)})
    source = VOCSource(voc_mini, "train", cls_labels=npy)
    with pytest.raises(DataError, match=r"cls_labels\.npy.*21 values.*20 classes"):
        source.labels(FIRST)


def test_missing_cls_labels_file(voc_mini: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothere.npy"):
        VOCSource(voc_mini, "train", cls_labels=tmp_path / "nothere.npy")


def test_check_files_names_a_listed_image_that_is_missing(voc_copy: Path) -> None:
    lst = voc_copy / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text(lst.read_text() + "2012_999999\n")
    source = VOCSource(voc_copy, "train")
    with pytest.raises(DataError, match=r"JPEGImages/2012_999999\.jpg"):
        source.check_files()


def test_truncated_jpeg_names_the_file(voc_copy: Path) -> None:
    path = voc_copy / "JPEGImages" / f"{FIRST}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])
    source = VOCSource(voc_copy, "train")
    with pytest.raises(DataError, match=f"{FIRST}.jpg"):
        source.load_image(FIRST)
    dataset = ClassificationDataset(source, resize_long=(64, 96), crop=64)
    with pytest.raises(DataError, match=f"{FIRST}.jpg"):
        dataset[0]


def test_mask_of_wrong_size_fails_load_pair(voc_copy: Path) -> None:
    path = voc_copy / "SegmentationClass" / f"{FIRST}.png"
    save_mask_png(np.zeros((100, 120), dtype=np.uint8), path)
    source = VOCSource(voc_copy, "train")
    with pytest.raises(DataError, match=rf"SegmentationClass/{FIRST}\.png.*120x100"):
        source.load_pair(FIRST)
    with pytest.raises(DataError, match=rf"{FIRST}\.png"):
        SegmentationDataset(source, resize_long=(64, 96), crop=64)[0]


def test_mask_with_unknown_class_id_fails(voc_copy: Path) -> None:
    path = voc_copy / "SegmentationClass" / f"{FIRST}.png"
    mask = read_label_png(path, 20)
    mask[0, 0] = 42
    save_mask_png(mask, path)
    source = VOCSource(voc_copy, "train")
    with pytest.raises(DataError, match=rf"{FIRST}\.png.*42"):
        source.labels(FIRST)


def test_segmentation_class_aug_is_preferred(voc_copy: Path) -> None:
    aug = voc_copy / "SegmentationClassAug"
    aug.mkdir()
    # An Aug mask that differs from the official one (only "aeroplane"), so the test sees which was read.
    with Image.open(voc_copy / "SegmentationClass" / f"{FIRST}.png") as official:
        width, height = official.size
    save_mask_png(np.ones((height, width), dtype=np.uint8), aug / f"{FIRST}.png")
    source = VOCSource(voc_copy, "train")
    assert source.mask_path(FIRST) == aug / f"{FIRST}.png"
    assert np.flatnonzero(source.labels(FIRST)).tolist() == [0]
    # Ids the Aug folder lacks fall back to SegmentationClass; ids in neither have no mask.
    assert source.mask_path("2011_000003") == voc_copy / "SegmentationClass" / "2011_000003.png"
    assert source.mask_path("2099_000001") is None


def test_datasets_on_real_images(voc_mini: Path) -> None:
    source = VOCSource(voc_mini, "train")
    dataset = SegmentationDataset(source, resize_long=(64, 96), crop=80, seed=2)
    sample = dataset[0]
    assert sample["image"].shape == (3, 80, 80)
    assert sample["id"] == FIRST
    assert np.flatnonzero(sample["label"].numpy()).tolist() == [8, 11]
    values = set(np.unique(sample["mask"].numpy()).tolist())
    assert 255 in values and values <= {0, 9, 12, 255}  # the short side (<= 72) is padded with 255
