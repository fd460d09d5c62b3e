"""COCOSource on tiny trees built in tmp_path, and the instances-JSON -> mask converter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastwsss.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, COCOSource, convert_instances_to_masks
from fastwsss.data.palette import save_mask_png
from fastwsss.errors import ConfigError, DataError

try:
    import pycocotools.coco  # noqa: F401

    HAVE_PYCOCOTOOLS = True
except ImportError:
    HAVE_PYCOCOTOOLS = False

needs_pycocotools = pytest.mark.skipif(
    not HAVE_PYCOCOTOOLS, reason="pycocotools is not installed (pip install 'fastwsss[coco]'); converter untested"
)

ID_A = "COCO_train2014_000000000009"
ID_B = "COCO_train2014_000000000025"


def write_image(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(path.name)).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def build_tree(root: Path, masks: dict[str, np.ndarray], folder: str = "train2014") -> Path:
    for image_id, mask in masks.items():
        write_image(root / "JPEGImages" / folder / f"{image_id}.jpg", *mask.shape)
        save_mask_png(mask, root / "SegmentationClass" / folder / f"{image_id}.png")
    return root


def sample_masks() -> dict[str, np.ndarray]:
    a = np.zeros((12, 16), dtype=np.uint8)
    a[2:6, 3:9] = 1  # person
    a[7:10, 10:14] = 80  # toothbrush, the last class
    a[0, :] = 255
    b = np.zeros((10, 8), dtype=np.uint8)
    b[4:8, 2:6] = 17  # dog: category id 18, contiguous 17, zero-based label 16
    return {ID_B: b, ID_A: a}


def test_class_table() -> None:
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS == sorted(set(COCO_CATEGORY_IDS))
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[17] == "horse" and COCO_CLASSES[-1] == "toothbrush"
    assert COCO_CATEGORY_IDS[COCO_CLASSES.index("dog")] == 18
    assert COCO_CATEGORY_IDS[-1] == 90 and 12 not in COCO_CATEGORY_IDS


def test_source_builds_missing_list_sorted_and_reads_labels(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "coco", sample_masks())
    source = COCOSource(root, "train")
    assert source.name == "coco" and source.num_classes == 80
    assert source.ids == [ID_A, ID_B]
    labels = source.labels(ID_A)
    assert labels.shape == (80,) and labels.dtype == np.float32
    assert np.flatnonzero(labels).tolist() == [0, 79]
    assert np.flatnonzero(source.labels(ID_B)).tolist() == [16]
    image, mask = source.load_pair(ID_A)
    assert image.shape == (12, 16, 3) and mask.shape == (12, 16) and (mask == 255).any()
    source.check_files()


def test_source_prefers_an_existing_list(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "coco", sample_masks())
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text(f"{ID_B}\n")
    assert COCOSource(root, "train").ids == [ID_B]


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="JPEGImages"):
        COCOSource(tmp_path, "train")
    root = build_tree(tmp_path / "coco", sample_masks())
    with pytest.raises(DataError, match=r"val2014"):
        COCOSource(root, "val")
    bad = np.zeros((10, 8), dtype=np.uint8)
    bad[0, 0] = 81
    save_mask_png(bad, root / "SegmentationClass" / "train2014" / f"{ID_B}.png")
    with pytest.raises(DataError, match=rf"{ID_B}\.png.*81"):
        COCOSource(root, "train").labels(ID_B)


def test_source_cls_labels_accepts_string_and_int_keys(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "coco", sample_masks())
    vector_a = np.zeros(80, dtype=np.float32)
    vector_a[5] = 1
    vector_b = np.zeros(80, dtype=np.float32)
    vector_b[6] = 1
    npy = tmp_path / "cls_labels.npy"
    np.save(npy, np.array({ID_A: vector_a, 25: vector_b}, dtype=object), allow_pickle=True)
    source = COCOSource(root, "train", cls_labels=npy)
    assert np.flatnonzero(source.labels(ID_A)).tolist() == [5]
    assert np.flatnonzero(source.labels(ID_B)).tolist() == [6]
    np.save(npy, np.array({9: np.zeros(20, dtype=np.float32)}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cls_labels\.npy.*20 values.*80 classes"):
        COCOSource(root, "train", cls_labels=npy).labels(ID_A)
    with pytest.raises(DataError, match=rf"cls_labels\.npy.*{ID_B}"):
        COCOSource(root, "train", cls_labels=npy).labels(ID_B)


def test_converter_without_pycocotools_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ConfigError, match=r"pip install 'fastwsss\[coco\]'"):
        convert_instances_to_masks(tmp_path / "instances.json", tmp_path / "out", progress=False)


def column_major_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(value), 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_instances(path: Path, category_ids: list[int] | None = None) -> Path:
    crowd = np.zeros((16, 16), dtype=np.uint8)
    crowd[0:8, :] = 1
    images = [
        {"id": 9, "file_name": f"{ID_A}.jpg", "height": 20, "width": 30},
        {"id": 25, "file_name": f"{ID_B}.jpg", "height": 16, "width": 16},
        {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "height": 8, "width": 8},
    ]
    annotations = [  # the small dog comes first: drawing order must follow area, not file order
        {"id": 1, "image_id": 9, "category_id": 18, "segmentation": rect(10, 6, 16, 12), "area": 36.0,
         "bbox": [10, 6, 6, 6], "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 1, "segmentation": rect(2, 2, 28, 18), "area": 416.0,
         "bbox": [2, 2, 26, 16], "iscrowd": 0},
        {"id": 3, "image_id": 25, "category_id": 90, "segmentation": rect(4, 10, 12, 14), "area": 32.0,
         "bbox": [4, 10, 8, 4], "iscrowd": 0},
        {"id": 4, "image_id": 25, "category_id": 1, "segmentation": column_major_rle(crowd), "area": 128.0,
         "bbox": [0, 0, 16, 8], "iscrowd": 1},
    ]  # fmt: skip
    categories = [
        {"id": cid, "name": name}
        for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True)
        if category_ids is None or cid in category_ids
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@needs_pycocotools
def test_converter_draws_classes_crowd_and_order(tmp_path: Path) -> None:
    instances = write_instances(tmp_path / "instances_train2014.json")
    out_dir = tmp_path / "coco" / "SegmentationClass" / "train2014"
    assert convert_instances_to_masks(instances, out_dir, progress=False) == 3

    with Image.open(out_dir / f"{ID_A}.png") as png:
        assert png.mode == "P"
        a = np.asarray(png)
    assert a.shape == (20, 30)
    assert a[9, 13] == 17  # dog (category 18 -> contiguous 17, id 12 is unused) drawn over the person
    assert a[15, 5] == 1 and a[0, 0] == 0
    assert set(np.unique(a).tolist()) == {0, 1, 17}
    with Image.open(out_dir / f"{ID_B}.png") as png:
        b = np.asarray(png)
    assert (b[0:8] == 255).all()  # crowd -> ignore
    assert b[12, 8] == 80  # toothbrush, category 90 -> 80
    assert (b[8:] != 255).all()
    with Image.open(out_dir / "COCO_train2014_000000000030.png") as png:
        assert not np.asarray(png).any()

    # The list holds only images with objects and lands where COCOSource looks for it.
    list_path = tmp_path / "coco" / "ImageSets" / "train.txt"
    assert list_path.read_text().split() == [ID_A, ID_B]
    for image_id, (h, w) in ((ID_A, (20, 30)), (ID_B, (16, 16))):
        write_image(tmp_path / "coco" / "JPEGImages" / "train2014" / f"{image_id}.jpg", h, w)
    source = COCOSource(tmp_path / "coco", "train")
    assert np.flatnonzero(source.labels(ID_A)).tolist() == [0, 16]
    assert np.flatnonzero(source.labels(ID_B)).tolist() == [79]

    # Resumable: nothing is redrawn; a deleted mask is written again.
    assert convert_instances_to_masks(instances, out_dir, progress=False) == 0
    (out_dir / f"{ID_B}.png").unlink()
    assert convert_instances_to_masks(instances, out_dir, progress=False) == 1
    assert list_path.read_text().split() == [ID_A, ID_B]


@needs_pycocotools
def test_converter_id_selection_and_errors(tmp_path: Path) -> None:
    instances = write_instances(tmp_path / "instances.json")
    out_dir = tmp_path / "masks"
    list_path = tmp_path / "ids.txt"
    assert convert_instances_to_masks(instances, out_dir, ids=[ID_B], progress=False, list_path=list_path) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{ID_B}.png"]
    assert list_path.read_text().split() == [ID_B]
    with pytest.raises(DataError, match="COCO_train2014_000000000777"):
        convert_instances_to_masks(instances, out_dir, ids=["COCO_train2014_000000000777"], progress=False)
    with pytest.raises(DataError, match="missing.json"):
        convert_instances_to_masks(tmp_path / "missing.json", out_dir, progress=False)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        convert_instances_to_masks(tmp_path / "broken.json", out_dir, progress=False)


@needs_pycocotools
def test_converter_keeps_official_indices_for_a_category_subset(tmp_path: Path) -> None:
    instances = write_instances(tmp_path / "subset.json", category_ids=[1, 18, 90])
    out_dir = tmp_path / "masks"
    convert_instances_to_masks(instances, out_dir, progress=False)
    with Image.open(out_dir / f"{ID_A}.png") as png:
        assert set(np.unique(np.asarray(png)).tolist()) == {0, 1, 17}
    with Image.open(out_dir / f"{ID_B}.png") as png:
        assert np.asarray(png)[12, 8] == 80


@needs_pycocotools
def test_converter_rejects_an_unknown_category(tmp_path: Path) -> None:
    instances = write_instances(tmp_path / "instances.json")
    data = json.loads(instances.read_text())
    data["annotations"][0]["category_id"] = 999
    instances.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances\.json.*999"):
        convert_instances_to_masks(instances, tmp_path / "masks", progress=False)
