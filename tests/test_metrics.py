import numpy as np
import pytest

from fastwsss.algorithms.metrics import ConfusionMeter, confusion_matrix, iou_per_class, mean_iou


def test_confusion_matrix_by_hand():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 0]])
    conf = confusion_matrix(pred, gt, 3)
    expected = np.array([[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    np.testing.assert_array_equal(conf, expected)
    # IoU: class 0: 1 / (1 + 1 + 1 - 1) = 1/2; class 1: 2 / (2 + 4 - 2) = 1/2; class 2: 0 / (1 + 0 - 0) = 0
    np.testing.assert_allclose(iou_per_class(conf), [0.5, 0.5, 0.0])
    assert mean_iou(conf) == pytest.approx(1 / 3)


def test_absent_class_is_nan_and_left_out_of_mean():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1])
    conf = confusion_matrix(pred, gt, 4)
    ious = iou_per_class(conf)
    assert ious[0] == 1.0 and ious[1] == 1.0
    assert np.isnan(ious[2]) and np.isnan(ious[3])
    assert mean_iou(conf) == 1.0


def test_ignore_label_and_meter_accumulates():
    meter = ConfusionMeter(2)
    meter.update(np.array([1, 1]), np.array([1, 255]))
    meter.update(np.array([0, 1]), np.array([0, 0]))
    np.testing.assert_array_equal(meter.matrix, [[1, 1], [0, 1]])
    assert meter.miou() == pytest.approx((0.5 + 0.5) / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
