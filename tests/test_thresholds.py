"""Otsu thresholds and per-class seed masks (fastwsss.algorithms.thresholds) and their use in the IR-label and pseudo stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastwsss.algorithms.cam_inference import cam_seed_mask
from fastwsss.algorithms.thresholds import class_thresholds, otsu_threshold, seed_mask
from fastwsss.stages.ir_label import ir_label_from_cams
from fastwsss.stages.pseudo import walk_to_mask


@pytest.mark.parametrize(("low", "high"), [(0.05, 0.8), (0.2, 0.6), (0.0, 0.35)])
def test_otsu_splits_two_groups_between_them(low: float, high: float) -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(low, 0.02, 3000), rng.normal(high, 0.02, 1000)]).clip(0, 1)
    level = otsu_threshold(values)
    assert low + 0.03 < level < high - 0.03
    assert np.mean(values[:3000] > level) < 0.01 and np.mean(values[3000:] > level) > 0.99


def test_otsu_of_a_flat_or_empty_map_is_one_half() -> None:
    assert otsu_threshold(np.full(100, 0.3)) == 0.5
    assert otsu_threshold(np.zeros(0)) == 0.5


def test_class_thresholds_fixed_and_otsu_with_floor() -> None:
    maps = np.zeros((2, 8, 8), dtype=np.float32)
    maps[0, :4] = 0.9  # bright half: Otsu level between 0 and 0.9
    maps[1, :4] = 0.1  # dim half: Otsu level near 0.1, lifted to the floor
    assert class_thresholds(maps, "fixed", 0.3).tolist() == pytest.approx([0.3, 0.3])
    otsu = class_thresholds(maps, "otsu", 0.3)
    assert 0.3 <= otsu[0] < 0.9 and otsu[1] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        class_thresholds(maps, "median", 0.3)


def test_seed_mask_with_one_level_equals_cam_seed_mask_ties_included() -> None:
    rng = np.random.default_rng(1)
    maps = rng.choice(np.array([0.0, 0.15, 0.3, 0.6, 1.0], dtype=np.float32), size=(3, 16, 16))
    keys = np.array([0, 4, 9])
    for level in (0.15, 0.3, 0.6):
        expected = cam_seed_mask(maps, keys, level)
        assert np.array_equal(seed_mask(maps, keys, np.full(3, level, dtype=np.float32)), expected)


def test_seed_mask_uses_each_class_threshold() -> None:
    maps = np.array([[[0.5, 0.5]], [[0.45, 0.2]]], dtype=np.float32)  # class 0 at 0.5, class 1 at 0.45 / 0.2
    keys = np.array([2, 7])
    assert seed_mask(maps, keys, np.array([0.6, 0.3], dtype=np.float32)).tolist() == [[8, 0]]
    assert seed_mask(maps, keys, np.array([0.4, 0.3], dtype=np.float32)).tolist() == [[3, 3]]
    assert seed_mask(np.zeros((0, 2, 3), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)).shape == (2, 3)


def test_ir_labels_with_otsu_keep_the_dim_surround_out_of_the_foreground() -> None:
    cams = np.zeros((1, 32, 32), dtype=np.float32)
    cams[0, 4:28, 4:28] = 0.35  # a dim surround, above IRNet's 0.30
    cams[0, 10:22, 10:22] = 0.95  # the bright object
    keys = np.array([3])
    fixed = ir_label_from_cams(cams, keys, 0.30, 0.05)
    otsu = ir_label_from_cams(cams, keys, 0.30, 0.05, fg_rule="otsu")
    assert (fixed == 4).sum() == 24 * 24
    assert (otsu == 4).sum() == 12 * 12 and (otsu[4:28, 4:28] == 255).sum() == 24 * 24 - 12 * 12
    assert np.array_equal(fixed == 0, otsu == 0)


def test_walk_to_mask_otsu_rule_cuts_each_map_at_its_level() -> None:
    rw = torch.full((1, 8, 8), 0.4)  # a dim scene, above the fixed 0.25, around a bright object
    rw[0, 2:6, 2:6] = 1.0
    keys = np.array([0])
    fixed = walk_to_mask(rw, keys, (32, 32), 0.25)
    otsu = walk_to_mask(rw, keys, (32, 32), 0.25, "otsu")
    assert np.array_equal(fixed, walk_to_mask(rw, keys, (32, 32), 0.25, "fixed"))
    assert (fixed > 0).all()
    assert 16 * 16 * 0.5 < (otsu > 0).sum() < 16 * 16 * 2
