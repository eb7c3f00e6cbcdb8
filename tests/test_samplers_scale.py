"""Proposals that scale: partial ranking, per-region scores, embedding only what TAUDIS looks at."""

import numpy as np
import pytest
import torch

from learners.unet import UNetConfig, build_unet
from sampling.base import ranked
from sampling.regions import RegionEmbedder, RegionPool
from sampling.taudis import TaudisSampler
from sampling.uncertainty import BaldSampler, EntropySampler


@pytest.mark.parametrize("n,k", [(1000, 5), (1000, 400), (50, 50), (10_000, 1)])
def test_partial_ranking_equals_the_full_sort_with_ties(n, k):
    rng = np.random.default_rng(n + k)
    scores = rng.integers(0, 20, n).astype(float)  # many exact ties
    scores[rng.integers(0, n, 3)] = np.nan
    tie = rng.random(n)
    assert ranked(scores, k, tie).tolist() == np.lexsort((tie, -scores))[:k].tolist()


def test_per_region_scores_give_the_same_proposals_as_pixel_maps():
    pool = RegionPool((3, 64, 48), 16)
    rng = np.random.default_rng(0)
    ent, bald = rng.random(pool.shape, dtype=np.float32), rng.random(pool.shape, dtype=np.float32)
    cands = pool.ids[5:]
    for sampler, name, m in ((EntropySampler(), "entropy", ent), (BaldSampler(), "bald", bald)):
        a = sampler.select(cands, 7, np.random.default_rng(1), pool=pool, **{name: m})
        b = sampler.select(cands, 7, np.random.default_rng(1), pool=pool, **{name: pool.reduce(m)})
        assert a.ids.tolist() == b.ids.tolist()


def _model():
    torch.manual_seed(0)
    return build_unet(UNetConfig(base=8, depth=2, n_classes=3)).eval()


def test_region_embedder_equals_whole_slice_embeddings():
    model = _model()
    image = np.random.default_rng(0).random((2, 96, 80), dtype=np.float32)
    pool = RegionPool(image.shape, 16)
    with torch.no_grad():
        feats = np.stack([model.features(torch.from_numpy(s)[None, None])[0].numpy() for s in image])
    whole = pool.embed(feats)
    ids = np.array([0, 7, 29, len(pool) - 1])
    emb = RegionEmbedder(model.features, image, pool, halo=32)
    np.testing.assert_allclose(emb(ids), whole[ids], atol=1e-5)
    assert emb.calls == 4


def test_taudis_with_an_embedder_embeds_only_the_oversampled_set_and_picks_as_with_arrays():
    model = _model()
    image = np.random.default_rng(1).random((4, 128, 128), dtype=np.float32)
    pool = RegionPool(image.shape, 16)
    ent = pool.reduce(np.random.default_rng(2).random(image.shape, dtype=np.float32))
    with torch.no_grad():
        feats = np.stack([model.features(torch.from_numpy(s)[None, None])[0].numpy() for s in image])
    whole = pool.embed(feats)
    embedder = RegionEmbedder(model.features, image, pool, halo=32)
    for sigma in (0.9, 0.99999):
        t = TaudisSampler(alpha=2.5, sigma=sigma, measure="entropy")
        a = t.select(pool.ids, 8, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=whole)
        embedder.calls = 0
        b = t.select(pool.ids, 8, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=embedder)
        assert a.ids.tolist() == b.ids.tolist()
        if sigma > 0.999:  # the cover fills the budget: only the ceil(2.5 * 8) oversampled regions were embedded
            assert embedder.calls == 20
