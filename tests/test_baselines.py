"""The classical baselines: multi-Otsu and the ilastik-style random forest on multiscale features."""

from __future__ import annotations

import numpy as np
import pytest

from learners.metrics import mean_iou
from napari_paser.data.baselines import (
    IGNORE_INDEX, fit_multiotsu, fit_pixel_forest, pixel_features, predict_multiotsu, predict_pixel_forest,
)
from napari_paser.data.degrade import PRESETS, degrade
from napari_paser.data.synth import synth_volume


@pytest.fixture(scope="module")
def data():
    clean, labels = synth_volume(2, 96, seed=4, correlation_length=5.0)
    return degrade(clean, PRESETS["lowres"], seed=0), labels


def test_pixel_features_are_a_stack_per_pixel(data):
    feats = pixel_features(data[0][0])
    assert feats.shape[:2] == (96, 96) and feats.shape[2] >= 10 and feats.dtype == np.float32


def test_random_forest_learns_from_a_few_hundred_labeled_pixels(data):
    images, labels = data
    rng = np.random.default_rng(0)
    sparse = np.full_like(labels[0], IGNORE_INDEX)
    idx = rng.choice(labels[0].size, 400, replace=False)
    sparse.flat[idx] = labels[0].flat[idx]
    forest = fit_pixel_forest([pixel_features(images[0])], [sparse], n_estimators=20)
    pred = predict_pixel_forest(forest, pixel_features(images[1]))
    assert pred.shape == labels[1].shape and mean_iou(pred, labels[1], 3) > 0.6
    with pytest.raises(ValueError, match="no labeled pixels"):
        fit_pixel_forest([pixel_features(images[0])], [np.full_like(sparse, IGNORE_INDEX)])


def test_multiotsu_fits_on_labeled_pixels_only(data):
    images, labels = data
    th, band = fit_multiotsu(images[0].ravel(), labels[0].ravel(), 3)
    assert mean_iou(predict_multiotsu(images[1], th, band), labels[1], 3) > 0.5
