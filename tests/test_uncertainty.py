import math

import numpy as np
import pytest
import torch

from learners.uncertainty import bald, entropy, mc_dropout, mc_probabilities, predictive_entropy, uncertainty_maps
from learners.unet import UNetConfig, build_unet


def test_entropy_hand_computed():
    p = np.array([[[0.5]], [[0.5]], [[0.0]]], dtype=np.float32)  # (C=3, 1, 1)
    assert entropy(p)[0, 0] == pytest.approx(math.log(2), rel=1e-6)
    q = np.array([0.7, 0.2, 0.1], dtype=np.float64).reshape(3, 1, 1)
    expected = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy(q)[0, 0] == pytest.approx(expected)


def test_bald_hand_computed():
    # two confident samples that disagree: total uncertainty ln 2, all of it epistemic
    mc = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32).reshape(2, 2, 1, 1)
    assert predictive_entropy(mc)[0, 0] == pytest.approx(math.log(2), rel=1e-6)
    assert bald(mc)[0, 0] == pytest.approx(math.log(2), rel=1e-6)
    # identical uncertain samples: aleatoric only, BALD 0
    same = np.full((4, 2, 1, 1), 0.5, dtype=np.float32)
    assert predictive_entropy(same)[0, 0] == pytest.approx(math.log(2), rel=1e-6)
    assert bald(same)[0, 0] == pytest.approx(0.0, abs=1e-7)
    # mixed case: samples (0.9, 0.1) and (0.5, 0.5)
    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)  # noqa: E731
    mc = np.array([[0.9, 0.1], [0.5, 0.5]]).reshape(2, 2, 1, 1)
    assert bald(mc)[0, 0] == pytest.approx(h([0.7, 0.3]) - (h([0.9, 0.1]) + h([0.5, 0.5])) / 2)


def test_bald_never_negative_and_bounded_by_entropy():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(5, 3, 16, 16)) * 3)
    probs = logits.softmax(1)
    b, h = bald(probs), predictive_entropy(probs)
    assert (b >= 0).all() and (b <= h + 1e-6).all()
    assert isinstance(b, torch.Tensor) and b.shape == (16, 16)


def test_mc_dropout_keeps_batchnorm_frozen_and_restores_modes():
    model = build_unet(UNetConfig(base=4, depth=2, dropout=0.5))
    model.train()
    bn = model.inc[1]
    before = bn.running_mean.clone()
    probs = mc_probabilities(model, torch.rand(2, 1, 16, 16), samples=4)
    assert probs.shape == (4, 2, 3, 16, 16)
    assert torch.equal(bn.running_mean, before)  # BatchNorm in eval mode: statistics untouched
    assert not torch.allclose(probs[0], probs[1])  # dropout active: samples differ
    assert model.training and bn.training  # modes restored
    with mc_dropout(model):
        assert not bn.training and model.dropout.training


def test_mc_samples_reproducible_with_seed_and_equal_without_dropout():
    model = build_unet(UNetConfig(base=4, depth=2, dropout=0.3))
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(mc_probabilities(model, x, 3, seed=1), mc_probabilities(model, x, 3, seed=1))
    det = build_unet(UNetConfig(base=4, depth=2, dropout=0.0))
    p = mc_probabilities(det, x, 3)
    assert torch.allclose(p[0], p[2])


def test_tiled_maps_equal_whole_image_maps_without_dropout():
    torch.manual_seed(0)
    model = build_unet(UNetConfig(base=4, depth=2, dropout=0.0))
    image = np.random.default_rng(0).random((96, 80)).astype(np.float32)
    whole = uncertainty_maps(model, image, samples=2)
    tiled = uncertainty_maps(model, image, samples=2, tile=32, halo=32)
    np.testing.assert_allclose(tiled.mean_probs, whole.mean_probs, atol=1e-5)
    np.testing.assert_allclose(tiled.entropy, whole.entropy, atol=1e-5)
    assert whole.prediction.shape == (96, 80) and whole.prediction.dtype == np.uint8
