"""The keep-or-replace decision of a retrain (`session.guard`): a drop across the held-out
regions keeps the previous weights, a drop within their noise does not freeze the model."""

from __future__ import annotations

import numpy as np
import pytest

from learners.inference import predict_classes
from learners.metrics import iou_per_class
from learners.unet import preset_config
from napari_paser.data.degrade import PRESETS, degrade
from napari_paser.data.synth import synth_volume
from napari_paser.session.guard import judge, pooled_iou, region_confusions
from napari_paser.weights import starting_model


def confusions(correct: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """(N, 3, 3) confusions of regions with 100 pixels per class: `correct[i]` pixels of each class
    right, `wrong[i]` taken for the next class."""
    out = np.zeros((len(correct), 3, 3), np.int64)
    for i, (c, w) in enumerate(zip(correct, wrong)):
        for k in range(3):
            out[i, k, k], out[i, k, (k + 1) % 3] = c, w
    return out


def test_a_drop_on_every_held_out_region_is_a_real_drop():
    old = confusions(np.full(6, 90), np.full(6, 10))
    new = confusions(np.array([70, 75, 72, 68, 74, 71]), np.array([30, 25, 28, 32, 26, 29]))
    verdict = judge(new, old)
    assert verdict.worse and verdict.p_worse == 1.0 and verdict.n_regions == 6
    assert verdict.new_miou < verdict.old_miou - 0.1


def test_a_drop_on_one_region_of_nine_with_gains_elsewhere_is_noise():
    """The SOC case that froze the model: pooled mIoU a little lower, carried by one region."""
    old = confusions(np.full(9, 85), np.full(9, 15))
    new_correct = np.array([50, 87, 86, 88, 86, 87, 88, 86, 87])
    new = confusions(new_correct, 100 - new_correct)
    verdict = judge(new, old)
    assert verdict.new_miou < verdict.old_miou  # the plain comparison would keep the old weights
    assert not verdict.worse and verdict.p_worse < 0.95


def test_two_regions_one_down_one_up_is_not_a_drop_and_a_tie_never_is():
    old = confusions(np.array([80, 80]), np.array([20, 20]))
    assert not judge(confusions(np.array([60, 95]), np.array([40, 5])), old).worse
    assert not judge(old.copy(), old).worse  # identical scores: min_drop not reached


def test_one_held_out_region_counts_any_drop_beyond_the_margin():
    old = confusions(np.array([80]), np.array([20]))
    assert judge(confusions(np.array([70]), np.array([30])), old).worse
    exact = confusions(np.array([1000]), np.array([0]))
    slightly = judge(confusions(np.array([999]), np.array([1])), exact)  # mIoU 0.998 < 1.0
    assert slightly.p_worse == 1.0 and not slightly.worse  # below MIN_DROP


def test_the_verdict_is_reproducible_and_its_pooled_iou_is_the_learning_curves():
    rng = np.random.default_rng(1)
    old = rng.integers(0, 50, (5, 3, 3))
    new = rng.integers(0, 50, (5, 3, 3))
    assert judge(new, old).p_worse == judge(new, old).p_worse
    clean, labels = synth_volume(3, 32, seed=2, contrast=(0.15, 0.5, 0.85), correlation_length=5.0)
    images = degrade(clean, PRESETS["lowres"], seed=2).astype(np.float32)
    model = starting_model("f0", preset_config("tiny"))
    cms = region_confusions(model, images, labels.astype(np.uint8))
    assert cms.shape == (3, 3, 3) and cms.sum() == labels.size
    pooled = iou_per_class(predict_classes(model, images), labels, 3)
    np.testing.assert_allclose(pooled_iou(cms), pooled)


def test_absent_classes_are_left_out_not_counted_as_zero():
    old = np.zeros((2, 3, 3), np.int64)
    old[:, 0, 0], old[:, 1, 1] = 50, 50  # class 2 in neither truth nor prediction
    iou = pooled_iou(old)
    assert np.isnan(iou[2]) and iou[:2] == pytest.approx([1.0, 1.0])
    assert judge(old.copy(), old).new_miou == pytest.approx(1.0)
