import numpy as np
import pytest

from learners.metrics import confusion_matrix, iou_per_class, iou_per_gflop, mean_iou


def test_iou_hand_computed():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    np.testing.assert_allclose(iou_per_class(pred, target, 3), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(pred, target, 3) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert confusion_matrix(pred, target, 3).sum() == 6


def test_absent_class_is_nan_and_ignored_in_mean():
    target = np.zeros((4, 4), int)
    ious = iou_per_class(target, target, 3)
    assert ious[0] == 1.0 and np.isnan(ious[1:]).all()
    assert mean_iou(target, target, 3) == 1.0


def test_valid_mask_excludes_pixels():
    target = np.array([0, 1, 1, 0])
    pred = np.array([0, 0, 1, 0])
    assert mean_iou(pred, target, 2, valid=np.array([1, 0, 1, 1])) == 1.0


def test_iou_per_gflop():
    assert iou_per_gflop(0.8, 2.0) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        iou_per_gflop(0.8, 0)
