import json

import numpy as np
import pytest
import torch

from learners.errors import InputError
from learners.unet import UNetConfig, build_unet
from sampling.regions import Region, RegionPool


def test_ids_are_stable_and_partial_border_regions_kept():
    pool = RegionPool((3, 130, 100), 64)  # 3 x 2 cells per slice, last row and column partial
    assert len(pool) == 3 * 6 and pool.cells_per_slice == 6
    assert pool.region_id(2, 5) == 17
    assert pool.region(17) == Region(17, 2, 128, 64, 2, 36, partial=True)
    assert pool.region(6) == Region(6, 1, 0, 0, 64, 64, partial=False)
    assert pool.partial.sum() == 3 * 4  # cells in the last row or the last column
    # every pixel belongs to exactly one region, none dropped
    assert pool.area.sum() == 3 * 130 * 100
    again = RegionPool((3, 130, 100), (64, 64))
    assert [r for r in again.regions()] == pool.regions()


def test_single_slice_and_rectangular_regions():
    pool = RegionPool((50, 40), (25, 20))
    assert len(pool) == 4 and not pool.partial.any()
    assert pool.region(3) == Region(3, 0, 25, 20, 25, 20)
    assert (pool.id_map(0)[25:, 20:] == 3).all()


def test_labeled_bookkeeping_and_round_trip():
    pool = RegionPool((2, 64, 64), 32)
    pool.mark_labeled(np.array([0, 5]))
    assert pool.labeled_ids.tolist() == [0, 5]
    assert pool.candidates().tolist() == [1, 2, 3, 4, 6, 7]
    assert pool.is_labeled(np.array([5, 6])).tolist() == [True, False]
    data = json.loads(json.dumps(pool.to_dict()))
    again = RegionPool.from_dict(data)
    assert again.labeled_ids.tolist() == [0, 5] and again.shape == pool.shape
    pool.mark_unlabeled([5])
    assert pool.labeled_ids.tolist() == [0]


def test_reductions_match_loops():
    rng = np.random.default_rng(0)
    pool = RegionPool((2, 70, 50), 32)
    pixel = rng.random((2, 70, 50))
    sums, means = pool.reduce(pixel), pool.reduce(pixel, "mean")
    for r in pool.regions():
        assert sums[r.id] == pytest.approx(pixel[r.slices].sum())
        assert means[r.id] == pytest.approx(pixel[r.slices].mean())
    assert np.allclose(sums, pool.grid.reduce(pixel).ravel())  # the same cells as the routing grid
    assert np.allclose(RegionPool((1, 64, 64), 32).reduce(np.ones((64, 64))), 32 * 32)  # whole cells, one 2D slice


def test_class_fractions_and_embeddings():
    pool = RegionPool((2, 4, 4), 2)
    classes = np.zeros((2, 4, 4), np.uint8)
    classes[1, :2, :2] = [[1, 2], [2, 2]]
    frac = pool.class_fractions(classes, 3)
    assert frac.shape == (8, 3)
    assert frac[4].tolist() == [0.0, 0.25, 0.75]
    assert frac[0].tolist() == [1.0, 0.0, 0.0]
    feats = np.zeros((2, 3, 4, 4))
    feats[1, 2, :2, :2] = 4.0
    feats[0, 0] = np.arange(16).reshape(4, 4)
    emb = pool.embed(feats)
    assert emb.shape == (8, 3)
    assert emb[4].tolist() == [0.0, 0.0, 4.0]
    assert emb[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))


def test_bad_inputs_are_input_errors():
    pool = RegionPool((2, 64, 64), 32)
    with pytest.raises(InputError, match="pool's shape"):
        pool.reduce(np.zeros((2, 60, 64)))
    with pytest.raises(InputError, match="region ids"):
        pool.mark_labeled([8])
    with pytest.raises(InputError, match="positive"):
        RegionPool((2, 64, 64), 0)
    with pytest.raises(InputError, match="class map"):
        pool.class_fractions(np.full((2, 64, 64), 3), 3)


def test_unet_features_feed_the_head_and_pool_into_embeddings():
    torch.manual_seed(0)
    model = build_unet(UNetConfig(base=4, depth=2)).eval()
    x = torch.rand(2, 1, 24, 40)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (2, 4, 24, 40)
        assert torch.allclose(model.head(feats), model(x))
    emb = RegionPool((2, 24, 40), 16).embed(feats.numpy())
    assert emb.shape == (2 * 2 * 3, 4)
    assert np.allclose(emb[0], feats[0, :, :16, :16].mean((1, 2)).numpy(), atol=1e-6)
