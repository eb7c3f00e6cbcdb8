"""Crop sampling and augmentation for training on a handful of labels (learners.augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.augment import IGNORE_INDEX, CropSampler, augment_batch, jitter_intensity
from learners.training import TrainConfig, iter_training
from learners.generators import drain
from learners.unet import UNet, UNetConfig


def test_augmentation_keeps_images_and_labels_aligned():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 3, (4, 16, 16))).long()
    image = (labels.float() * 0.3 + 0.1)[:, None]  # grey level a function of the class
    gen = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(20):
        x, y = augment_batch([image, labels], gen, jitter=0.3)
        changed += int(not torch.equal(y, labels))
        for b in range(4):  # jitter is monotonic per image: every class keeps one grey level, in order
            levels = [x[b, 0][y[b] == k] for k in range(3)]
            assert all(lv.numel() and torch.allclose(lv, lv[0].expand_as(lv), atol=1e-5) for lv in levels)
            assert levels[0][0] < levels[1][0] < levels[2][0]
    assert changed >= 10  # flips and rotations did happen


def test_jitter_changes_intensities_within_range():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 8, 8)
    out = jitter_intensity(x, 0.3, gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    assert torch.equal(jitter_intensity(x, 0.0, gen), x)


def test_class_balanced_sampling_draws_the_rare_class_more_often():
    rng = np.random.default_rng(0)
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 32:] = 1
    labels[30:33, 10:13] = 2  # 9 of 4096 pixels
    image = rng.random((64, 64)).astype(np.float32)
    shares = {}
    for balanced in (False, True):
        sampler = CropSampler([image], [labels], 16, 3, balanced=balanced)
        _, ys = sampler.sample(300, np.random.default_rng(1))
        shares[balanced] = float((ys == 2).mean())
    assert shares[True] > 3 * shares[False]
    assert shares[True] > 5 * (labels == 2).mean()


def test_crop_sampler_pads_small_pieces_and_centres_on_labels():
    labels = np.full((10, 12), IGNORE_INDEX, np.uint8)
    labels[5, 6] = 1
    sampler = CropSampler([np.ones((10, 12), np.float32)], [labels], 16, 2)
    xs, ys = sampler.sample(5, np.random.default_rng(0))
    assert xs.shape == ys.shape == (5, 16, 16)
    assert ((ys == 1).sum(axis=(1, 2)) == 1).all()  # the one labeled pixel is in every crop
    assert (ys[:, 10:, :] == IGNORE_INDEX).all() and (xs[:, 10:, :] == 1).all()  # padding: edge image, unlabeled
    with pytest.raises(ValueError, match="no labeled pixels"):
        CropSampler([np.ones((8, 8))], [np.full((8, 8), IGNORE_INDEX, np.uint8)], 8, 2)


def test_centre_weights_draw_crop_centres_in_proportion():
    """crop 1: the crop is its centre pixel, whose image value names it; the left column weighs 9, the
    rest 1, so it holds 9 * 8 / (9 * 8 + 7 * 8) = 56% of the centres (12.5% without weights)."""
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    labels = np.zeros((8, 8), np.uint8)
    weights = np.ones((8, 8))
    weights[:, 0] = 9
    left = {}
    for w in (None, [weights]):
        xs, _ = CropSampler([image], [labels], 1, 1, centre_weights=w).sample(4000, np.random.default_rng(0))
        left[w is not None] = float(np.mean(xs[:, 0, 0] % 8 == 0))
    assert abs(left[True] - 72 / 128) < 0.03 and abs(left[False] - 1 / 8) < 0.02
    zero = np.zeros((8, 8))
    zero[2, 3] = 1.0  # one centre carries all the weight
    xs, _ = CropSampler([image], [labels], 1, 1, centre_weights=[zero]).sample(50, np.random.default_rng(1))
    assert (xs == 19).all()
    for bad in ([np.ones((4, 4))], [-weights], [weights, weights]):
        with pytest.raises(ValueError, match="centre-weight|centre weights"):
            CropSampler([image], [labels], 1, 1, centre_weights=bad)
    with pytest.raises(ValueError, match="TrainConfig.crop"):
        drain(iter_training(UNet(UNetConfig(base=4, depth=2, n_classes=2)), image[None], labels[None], None, None,
                            TrainConfig(epochs=1), centre_weights=[weights]))


def test_crop_training_runs_fixed_steps_on_pieces_of_any_size():
    rng = np.random.default_rng(0)
    pieces = [rng.random((40, 50)).astype(np.float32), rng.random((20, 20)).astype(np.float32)]
    labels = [(p > 0.5).astype(np.uint8) for p in pieces]
    labels[1][:10] = IGNORE_INDEX
    model = UNet(UNetConfig(base=4, depth=2, n_classes=2))
    cfg = TrainConfig(epochs=2, steps_per_epoch=7, batch_size=4, crop=16, balanced=True, jitter=0.1, early_stop=False)
    events = []
    result = drain(iter_training(model, pieces, labels, None, None, cfg), events.append)
    assert sum(1 for e in events if hasattr(e, "step")) == 14 and len(result.history) == 2 and not result.stopped_early


def test_keep_preserves_the_starting_predictions_on_unlabeled_pixels():
    """Labels of one class in a corner: without `keep` the model paints that class everywhere;
    with it, unlabeled pixels keep far more of what the starting weights predicted."""
    torch.manual_seed(0)
    start = UNet(UNetConfig(base=4, depth=2, n_classes=3))
    image = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    phases = np.digitize(image, [0.33, 0.66]).astype(np.uint8)  # the start model learns grey-level phases
    drain(iter_training(start, [image], [phases], None, None,
                        TrainConfig(epochs=1, steps_per_epoch=60, batch_size=4, crop=32, lr=2e-2, early_stop=False)))
    labels = np.full((48, 48), IGNORE_INDEX, np.uint8)
    labels[:12, :12] = 0
    before = start.eval()(torch.from_numpy(image)[None, None]).argmax(1)
    agreement = {}
    for keep in (0.0, 3.0):
        model = UNet(start.config)
        model.load_state_dict(start.state_dict())
        cfg = TrainConfig(epochs=1, steps_per_epoch=30, batch_size=4, crop=32, lr=1e-2, early_stop=False,
                          class_weighted=False, keep=keep, augment=False)
        drain(iter_training(model, [image], [labels], None, None, cfg))
        after = model.eval()(torch.from_numpy(image)[None, None]).argmax(1)
        agreement[keep] = float((after == before)[0, 12:, 12:].float().mean())
    assert agreement[3.0] > agreement[0.0] + 0.2, agreement
