import numpy as np
import pytest

from learners.errors import InputError
from learners.uncertainty import bald, predictive_entropy
from sampling.base import Sampler, Selection
from sampling.regions import RegionPool
from sampling.taudis import TaudisSampler
from sampling.uncertainty import BaldSampler, EntropySampler, RandomSampler

CELL, SIDE = 8, 32  # 4 x 4 regions of 8 x 8 pixels per slice


def _paint(pool: RegionPool, per_region: np.ndarray) -> np.ndarray:
    """(T, Z, C, H, W) MC probabilities, constant over each region: per_region is (n, T, C)."""
    t, c = per_region.shape[1:]
    out = np.zeros((t, pool.shape[0], c) + pool.shape[1:])
    for r in pool.regions():
        z, ys, xs = r.slices
        out[:, z, :, ys, xs] = per_region[r.id][:, :, None, None]
    return out


def _maps(pool, per_region):
    mc = _paint(pool, per_region)
    return {"pool": pool, "entropy": predictive_entropy(mc), "bald": bald(mc)}


@pytest.fixture
def pool():
    return RegionPool((2, SIDE, SIDE), CELL)  # 32 regions


def test_entropy_ranks_by_summed_entropy(pool):
    # all samples agree (BALD 0); region r predicts (1 - e, e/2, e/2) with e growing in a shuffled order
    rng = np.random.default_rng(1)
    e = rng.permutation(len(pool)) / len(pool) * 0.6
    probs = np.stack([1 - e, e / 2, e / 2], 1)[:, None].repeat(5, 1)
    needs = _maps(pool, probs)
    sel = EntropySampler().select(pool.ids, 5, np.random.default_rng(0), **needs)
    assert sel.ids.tolist() == np.argsort(-e)[:5].tolist()
    assert np.all(np.diff(sel.scores) < 0)
    ent = -(probs[:, 0] * np.log(np.clip(probs[:, 0], 1e-300, None))).sum(1)
    assert sel.scores == pytest.approx(ent[sel.ids] * CELL * CELL, rel=1e-5)


def test_bald_ranks_by_disagreement_where_entropy_cannot(pool):
    # mean prediction (0.5, 0.5) everywhere (equal entropy); samples disagree by +-d, d known per region
    d = np.random.default_rng(2).permutation(len(pool)) / len(pool) * 0.5
    sign = np.array([1, -1, 1, -1])
    p0 = 0.5 + d[:, None] * sign[None]
    probs = np.stack([p0, 1 - p0], 2)  # (n, T=4, C=2)
    needs = _maps(pool, probs)
    sel = BaldSampler().select(pool.ids, 6, np.random.default_rng(0), **needs)
    assert sel.ids.tolist() == np.argsort(-d)[:6].tolist()
    ent = EntropySampler().select(pool.ids, 6, np.random.default_rng(0), **needs)
    assert np.allclose(ent.scores, np.log(2) * CELL * CELL, rtol=1e-5)  # H cannot tell them apart


def test_candidates_restrict_the_choice(pool):
    e = np.arange(len(pool)) / len(pool) * 0.6
    needs = _maps(pool, np.stack([1 - e, e / 2, e / 2], 1)[:, None])
    pool.mark_labeled(np.arange(len(pool) - 3, len(pool)))  # the three most uncertain are labeled
    sel = EntropySampler().select(pool.candidates(), 2, np.random.default_rng(0), **needs)
    assert sel.ids.tolist() == [len(pool) - 4, len(pool) - 5]


def _all_samplers(pool):
    e = np.random.default_rng(3).random(len(pool)) * 0.6
    needs = _maps(pool, np.stack([1 - e, e / 2, e / 2], 1)[:, None].repeat(2, 1))
    needs["embeddings"] = np.random.default_rng(4).normal(size=(len(pool), 6))
    samplers = [RandomSampler(), EntropySampler(), BaldSampler(), TaudisSampler()]
    return samplers, needs


def test_every_sampler_returns_k_unique_candidates_deterministically(pool):
    samplers, needs = _all_samplers(pool)
    cands = pool.ids[::2]
    for sampler in samplers:
        a = sampler.select(cands, 7, np.random.default_rng(11), **needs)
        b = sampler.select(cands, 7, np.random.default_rng(11), **needs)
        assert isinstance(a, Selection) and isinstance(sampler, Sampler)
        assert len(a) == 7 and np.unique(a.ids).size == 7 and np.isin(a.ids, cands).all(), sampler.name
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores), sampler.name
        assert sampler.select(cands, len(cands), np.random.default_rng(0), **needs).ids.size == len(cands)


def test_random_sampler_varies_with_the_seed(pool):
    draws = {tuple(RandomSampler().select(pool.ids, 5, np.random.default_rng(s)).ids) for s in range(5)}
    assert len(draws) > 1


def test_every_sampler_refuses_k_beyond_the_pool(pool):
    samplers, needs = _all_samplers(pool)
    for sampler in samplers:
        with pytest.raises(InputError, match=r"k=5 regions but only 4 candidates"):
            sampler.select(pool.ids[:4], 5, np.random.default_rng(0), **needs)
        with pytest.raises(InputError, match="positive"):
            sampler.select(pool.ids, 0, np.random.default_rng(0), **needs)
        with pytest.raises(InputError, match="duplicate"):
            sampler.select(np.array([1, 1, 2]), 1, np.random.default_rng(0), **needs)


def test_missing_inputs_are_named(pool):
    with pytest.raises(InputError, match="entropy="):
        EntropySampler().select(pool.ids, 2, np.random.default_rng(0), pool=pool)
    with pytest.raises(InputError, match="pool="):
        BaldSampler().select(pool.ids, 2, np.random.default_rng(0), bald=np.zeros(pool.shape))
    with pytest.raises(InputError, match="embeddings="):
        TaudisSampler().select(pool.ids, 2, np.random.default_rng(0), pool=pool, bald=np.zeros(pool.shape))
