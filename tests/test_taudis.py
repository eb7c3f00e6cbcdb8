import networkx as nx
import numpy as np
import pytest

from learners.errors import InputError
from sampling.regions import RegionPool
from sampling.taudis import (
    TaudisSampler,
    cosine_similarity,
    coverage,
    greedy_max_cover,
    majority_vote,
    similarity_graph,
)
from sampling.uncertainty import EntropySampler


def taudis(**options) -> TaudisSampler:
    """TAUDIS ranking by the entropy maps these tests build (the sampler's default reads BALD)."""
    return TaudisSampler(measure="entropy", **options)


def _hand_graph():
    g = nx.Graph()
    g.add_nodes_from(range(8))
    g.add_edges_from([(0, 1), (0, 2), (0, 3), (4, 5), (5, 6)])  # a star, a path, an isolated node 7
    return g


def test_greedy_cover_on_a_hand_made_graph():
    g = _hand_graph()
    assert greedy_max_cover(g, 1) == [0] and coverage(g, [0]) == 4
    assert greedy_max_cover(g, 2) == [0, 5] and coverage(g, [0, 5]) == 7
    assert greedy_max_cover(g, 3) == [0, 5, 7] and coverage(g, [0, 5, 7]) == 8
    assert greedy_max_cover(g, 6) == [0, 5, 7]  # all covered: no pick adds anything


def test_greedy_cover_breaks_ties_by_priority():
    g = nx.Graph([(0, 1), (2, 3)])
    assert greedy_max_cover(g, 1, {0: 0.1, 1: 0.2, 2: 0.9, 3: 0.5}) == [2]
    assert greedy_max_cover(g, 2, {0: 0.1, 1: 0.2, 2: 0.9, 3: 0.5}) == [2, 1]


def _naive_greedy(g, k, pri):
    covered, chosen = set(), []
    for _ in range(k):
        best = max(g, key=lambda v: (len(({v} | set(g[v])) - covered), pri[v], -v))
        if not ({best} | set(g[best])) - covered:
            break
        chosen.append(best)
        covered |= {best} | set(g[best])
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_equals_plain_greedy(seed):
    g = nx.gnp_random_graph(40, 0.1, seed=seed)
    pri = dict(enumerate(np.random.default_rng(seed).random(40)))
    assert greedy_max_cover(g, 10, pri) == _naive_greedy(g, 10, pri)


def test_similarity_graph_threshold():
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    g = similarity_graph(np.arange(6), emb, 0.7)
    assert set(map(frozenset, g.edges)) == {frozenset(e) for e in [(0, 1), (0, 2), (1, 2), (2, 3), (4, 5)]}
    assert cosine_similarity(emb[:1], emb[1:2])[0, 0] == pytest.approx(1.0)
    assert similarity_graph(np.arange(6), emb, 1.0).number_of_edges() == 2  # identical directions only


def _setup(n_slices=2, side=32, cell=8, seed=0):
    pool = RegionPool((n_slices, side, side), cell)
    rng = np.random.default_rng(seed)
    per_region = rng.random(len(pool))
    ent = np.repeat(np.repeat(per_region.reshape(n_slices, side // cell, side // cell), cell, 1), cell, 2)
    return pool, per_region, ent


def test_never_two_identical_embeddings_while_distinct_ones_remain():
    pool, u, ent = _setup()
    groups = np.arange(len(pool)) % 4  # 4 distinct embeddings, each shared by 8 regions
    emb = np.eye(4)[groups] * 3.0
    for k in range(1, 5):
        sel = taudis().select(pool.ids, k, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=emb)
        assert np.unique(groups[sel.ids]).size == k
    sel = taudis().select(pool.ids, 6, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=emb)
    assert np.unique(groups[sel.ids]).size == 4  # every distinct one before any repeat


def test_centring_separates_regions_that_share_a_large_positive_offset():
    pool, u, ent = _setup()
    order = np.argsort(-u)
    kind = np.zeros(len(pool), int)
    kind[order[2::2]] = 1  # two kinds of region: the two most uncertain alike, then alternating
    emb = 10.0 + np.eye(2)[kind]  # pooled ReLU features: all positive, raw cosines ~ 0.995
    needs = {"pool": pool, "entropy": ent, "embeddings": emb}
    raw = taudis(center=False).select(pool.ids, 4, np.random.default_rng(0), **needs)
    assert raw.ids.tolist() == order[:4].tolist()  # one dense graph: plain uncertainty order
    centred = taudis(center=True).select(pool.ids, 2, np.random.default_rng(0), **needs)
    assert centred.ids.tolist() == [order[0], order[2]]  # the most uncertain of each kind


def test_fill_reaches_distinct_regions_beyond_the_oversampled_set():
    pool, u, ent = _setup()
    order = np.argsort(-u)
    groups = np.zeros(len(pool), int)
    groups[order[20:]] = np.arange(len(pool) - 20) + 1  # the 20 most uncertain regions look alike
    emb = np.eye(groups.max() + 1)[groups]
    sel = taudis(alpha=2.5).select(pool.ids, 4, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=emb)
    assert np.unique(groups[sel.ids]).size == 4
    assert sel.ids[0] == order[0]  # the cover's pick: the most uncertain of the look-alikes
    assert sel.ids[1:].tolist() == order[20:23].tolist()  # then the most uncertain distinct ones


@pytest.mark.parametrize("k", [1, 5, 12])
def test_sigma_one_is_uncertainty_top_k(k):
    pool, u, ent = _setup(seed=k)
    emb = np.random.default_rng(k).normal(size=(len(pool), 5))
    needs = {"pool": pool, "entropy": ent, "embeddings": emb}
    t = taudis(sigma=1.0).select(pool.ids, k, np.random.default_rng(0), **needs)
    h = EntropySampler().select(pool.ids, k, np.random.default_rng(0), **needs)
    assert t.ids.tolist() == h.ids.tolist() == np.argsort(-u)[:k].tolist()
    assert np.allclose(t.scores, h.scores)


@pytest.mark.parametrize("beta,sigma", [(1.0, 0.8), (0.5, 0.8), (1.0, -1.0), (0.3, 0.0)])
def test_exactly_k_unique_ids(beta, sigma):
    pool, u, ent = _setup()
    emb = np.random.default_rng(1).normal(size=(len(pool), 3))
    cands = pool.ids[3:]
    for k in (1, 7, len(cands)):
        sel = taudis(beta=beta, sigma=sigma).select(cands, k, np.random.default_rng(2), pool=pool, entropy=ent, embeddings=emb)
        assert sel.ids.size == k and np.unique(sel.ids).size == k and np.isin(sel.ids, cands).all()


def test_identical_embeddings_everywhere_still_fill_the_budget_by_uncertainty():
    pool, u, ent = _setup()
    emb = np.ones((len(pool), 4))
    sel = taudis().select(pool.ids, 5, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=emb)
    assert sel.ids.tolist() == np.argsort(-u)[:5].tolist()


def test_majority_vote():
    slices = np.array([3, 1, 3, 2, 1, 3])
    weights = np.array([0.1, 0.5, 0.1, 0.9, 0.4, 0.1])
    z, votes = majority_vote(slices, weights, 2)
    assert z.tolist() == [3, 1] and votes.tolist() == [3, 2]
    z, votes = majority_vote(np.array([1, 2]), np.array([0.2, 0.7]), 3, fallback={0: 1.0, 1: 0.0, 2: 0.0, 5: 2.0})
    assert z.tolist() == [2, 1, 5] and votes.tolist() == [1, 1, 0]
    with pytest.raises(InputError, match="only 4 slices"):
        majority_vote(np.array([1, 2]), np.array([0.2, 0.7]), 5, fallback={0: 1.0, 5: 2.0})


def test_select_slices_by_majority_vote():
    pool = RegionPool((4, 16, 16), 8)  # 4 regions per slice
    per_slice = np.array([0.1, 0.9, 0.5, 0.2])
    ent = np.broadcast_to(per_slice[:, None, None], pool.shape).copy()
    emb = np.eye(len(pool))  # all distinct: no edges
    sel = taudis().select_slices(pool.ids, 2, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=emb)
    # 4 regions chosen, all in the most uncertain slice 1; slice 2 has no vote but the next total uncertainty
    assert sel.ids.tolist() == [1, 2] and sel.scores.tolist() == [4.0, 0.0]
    with pytest.raises(InputError, match="slices"):
        taudis().select_slices(pool.ids[:8], 3, np.random.default_rng(0), pool=pool, entropy=ent, embeddings=emb)


def test_parameters_are_checked():
    with pytest.raises(InputError, match="alpha"):
        TaudisSampler(alpha=0.5)
    with pytest.raises(InputError, match="beta"):
        TaudisSampler(beta=0)
    with pytest.raises(InputError, match="sigma"):
        TaudisSampler(sigma=2)
