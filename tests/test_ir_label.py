import numpy as np
import pytest
import torch

from fastwsss.stages.ir_label import ir_label_from_cams
from fastwsss.stages.pseudo import walk_to_mask


def test_ir_label_thresholds_on_a_hand_built_cam():
    # Two present classes: keys 2 and 6 -> class ids 3 and 7.
    keys = np.array([2, 6])
    high_res = np.array(
        [
            [[0.90, 0.20, 0.01, 0.40]],  # class id 3
            [[0.10, 0.25, 0.02, 0.60]],  # class id 7
        ],
        dtype=np.float32,
    )
    label = ir_label_from_cams(high_res, keys, fg_threshold=0.30, bg_threshold=0.05)
    # px0: 0.90 > 0.30 -> 3; px1: max 0.25 < 0.30 but > 0.05 -> unsure; px2: max 0.02 < 0.05 -> background;
    # px3: 0.60 wins -> 7.
    np.testing.assert_array_equal(label, [[3, 255, 0, 7]])


def test_ir_label_tie_goes_to_background_and_bad_thresholds_are_refused():
    keys = np.array([0])
    high_res = np.array([[[0.30, 0.05]]], dtype=np.float32)
    np.testing.assert_array_equal(ir_label_from_cams(high_res, keys, 0.30, 0.05), [[255, 0]])
    with pytest.raises(ValueError, match="bg_threshold"):
        ir_label_from_cams(high_res, keys, 0.05, 0.30)


def test_ir_label_without_classes_is_background_or_unsure_only():
    label = ir_label_from_cams(np.zeros((0, 3, 4), np.float32), np.zeros(0, np.int64), 0.3, 0.05)
    assert label.shape == (3, 4) and set(np.unique(label)) == {0}


def test_walk_to_mask_global_max_background_plane_and_crop():
    keys = np.array([1, 4])
    rw = torch.zeros(2, 2, 3)
    rw[0, 0, 0] = 10.0  # the global max: normalises both classes
    rw[1, 1, 2] = 2.0  # 2 / 10 = 0.2 < 0.25: loses to the background plane
    rw[1, 0, 2] = 5.0  # 0.5: class id 5
    mask = walk_to_mask(rw, keys, (6, 10), bg_threshold=0.25)
    assert mask.shape == (6, 10) and mask.dtype == np.uint8
    assert mask[0, 0] == 2 and mask[0, 9] == 5
    assert mask[5, 9] == 0
    assert set(np.unique(mask)) <= {0, 2, 5}
    empty = walk_to_mask(torch.zeros(0, 2, 3), np.zeros(0, np.int64), (6, 10), 0.25)
    assert empty.shape == (6, 10) and not empty.any()


def test_crf_snaps_an_overshooting_seed_to_the_colour_edge():
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 not installed (pip install 'fastwsss[crf]')")
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = (200, 30, 30)
    image[:, 20:] = (30, 30, 200)
    keys = np.array([3])
    high_res = np.zeros((1, 40, 40), np.float32)
    high_res[0, :, :26] = 0.9  # the CAM spills 6 pixels past the object's edge
    plain = ir_label_from_cams(high_res, keys, 0.30, 0.05)
    refined = ir_label_from_cams(high_res, keys, 0.30, 0.05, image=image)
    truth = np.zeros((40, 40), bool)
    truth[:, :20] = True
    assert ((plain == 4) != truth).sum() == 40 * 6
    assert ((refined == 4) != truth).sum() < 40 * 2
