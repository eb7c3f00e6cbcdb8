"""TAUDIS-style two-step sampling (arXiv 2309.16139) for regions: uncertainty, then diversity.

1. Oversample: keep the ceil(alpha * k) candidates of highest summed uncertainty (an
   argpartition, so a million regions of a whole volume cost milliseconds; only these are
   embedded when `embeddings=` is a callable such as `sampling.regions.RegionEmbedder`).
2. Diversify: join two of them by an edge when the cosine similarity of their embeddings
   (pooled decoder features, `RegionPool.embed`; `center=True` subtracts the candidates' mean
   first: pooled ReLU features are all positive, so raw cosines crowd near 1 and sigma = 0.8
   joins most pairs, while centred ones measure how regions differ from the typical one) is at
   least sigma; each region covers itself
   and its neighbours, and a lazy greedy maximum k-set cover picks round(beta * k) regions,
   equal gains going to the more uncertain region.
3. Fill: budget the cover leaves (beta < 1, or every oversampled region already covered) goes
   by uncertainty over all candidates, regions unlike every pick first (looked for among the
   oversampled set and the next 4 * ceil(alpha * k) regions, so the cost stays bounded), so two regions with
   identical embeddings are never both taken while a distinct one remains.
A majority vote maps the chosen regions back to whole slices for users who label slices.
With sigma = 1 no two distinct embeddings are joined and the result is the uncertainty top-k.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Mapping

import networkx as nx
import numpy as np

from sampling.base import Sampler, SamplingError, Selection, ranked, require
from sampling.uncertainty import region_scores

_SIM_TOL = 1e-9  # cosine similarity of identical vectors may round to just below 1


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    e = np.asarray(embeddings, dtype=np.float64)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norm, out=np.zeros_like(e), where=norm > 0)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) cosine similarities; two all-zero embeddings count as identical (1)."""
    ua, ub = unit_rows(a), unit_rows(b)
    sim = ua @ ub.T
    za, zb = ~ua.any(1), ~ub.any(1)
    sim[np.ix_(za, zb)] = 1.0
    return sim


def similarity_graph(nodes: np.ndarray, embeddings: np.ndarray, sigma: float) -> nx.Graph:
    """Undirected graph on `nodes` with an edge where cosine similarity >= sigma (no self loops)."""
    sim = cosine_similarity(embeddings, embeddings)
    np.fill_diagonal(sim, -np.inf)
    graph = nx.Graph()
    graph.add_nodes_from(int(n) for n in nodes)
    ii, jj = np.nonzero(np.triu(sim >= sigma - _SIM_TOL, 1))
    graph.add_edges_from(zip(np.asarray(nodes)[ii].tolist(), np.asarray(nodes)[jj].tolist()))
    return graph


def coverage(graph: nx.Graph, chosen: list[Hashable]) -> int:
    """Number of nodes covered by `chosen` (each node covers itself and its neighbours)."""
    covered: set = set()
    for node in chosen:
        covered.add(node)
        covered.update(graph[node])
    return len(covered)


def greedy_max_cover(graph: nx.Graph, k: int, priority: Mapping[Hashable, float] | None = None) -> list:
    """Lazy greedy maximum k-cover over closed neighbourhoods, at most k nodes, best first.

    Stops early once every node is covered (no pick would add coverage). Equal gains go to the
    higher `priority`, then to the node listed first in the graph. Gains only shrink as nodes
    get covered (coverage is submodular), so a stale heap entry is an upper bound and a popped
    entry whose recomputed gain is unchanged is the true best (Minoux's lazy greedy).
    """
    priority = priority or {}
    hoods = {v: set(graph[v]) | {v} for v in graph}
    heap = [(-len(h), -priority.get(v, 0.0), rank, v) for rank, (v, h) in enumerate(hoods.items())]
    heapq.heapify(heap)
    covered: set = set()
    chosen: list = []
    while heap and len(chosen) < k:
        neg_gain, neg_pri, rank, v = heapq.heappop(heap)
        gain = len(hoods[v] - covered)
        if gain == 0:
            continue  # fully covered: it can never add coverage again
        if gain == -neg_gain:
            chosen.append(v)
            covered |= hoods[v]
        else:
            heapq.heappush(heap, (-gain, neg_pri, rank, v))
    return chosen


def majority_vote(
    slices: np.ndarray, weights: np.ndarray, n: int, fallback: Mapping[int, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The n slices holding most chosen regions, as (slices, votes).

    Equal vote counts go to the larger summed `weights` (uncertainty of the chosen regions in
    the slice), then to the larger `fallback` score (e.g. the slice's total uncertainty), which
    also ranks slices that got no votes; last, the lower slice index.
    """
    slices = np.asarray(slices, dtype=np.int64)
    fallback = dict(fallback or {})
    pool = sorted(set(slices.tolist()) | set(fallback))
    if n > len(pool):
        raise SamplingError(f"asked for {n} slices but only {len(pool)} slices have candidate regions")
    votes = {z: 0 for z in pool}
    weight = {z: 0.0 for z in pool}
    for z, w in zip(slices.tolist(), np.asarray(weights, dtype=np.float64).tolist()):
        votes[z] += 1
        weight[z] += w
    ranked = sorted(pool, key=lambda z: (-votes[z], -weight[z], -fallback.get(z, 0.0), z))[:n]
    return np.asarray(ranked, dtype=np.int64), np.asarray([votes[z] for z in ranked], dtype=np.float64)


class TaudisSampler(Sampler):
    """Uncertainty oversampling + similarity-graph set cover + uncertainty fill.

    Needs `pool=` (a RegionPool), the per-pixel uncertainty map named by `measure`
    (`entropy=` or `bald=`, (Z, H, W)) and `embeddings=` ((len(pool), F), indexed by region id).
    """

    name = "taudis"

    def __init__(self, alpha: float = 2.5, beta: float = 1.0, sigma: float = 0.8, measure: str = "bald",
                 center: bool = False) -> None:
        if alpha < 1:
            raise SamplingError(f"alpha (oversampling factor) must be >= 1, got {alpha}")
        if not 0 < beta <= 1:
            raise SamplingError(f"beta (share of the budget chosen by set cover) must lie in (0, 1], got {beta}")
        if not -1 <= sigma <= 1:
            raise SamplingError(f"sigma (cosine similarity threshold) must lie in [-1, 1], got {sigma}")
        if measure not in ("entropy", "bald"):
            raise SamplingError(f"measure must be 'entropy' or 'bald', got {measure!r}")
        self.alpha, self.beta, self.sigma, self.measure, self.center = alpha, beta, sigma, measure, center
        self.fill_window = 4  # the fill looks for distinct regions among the next 4 * ceil(alpha k) by uncertainty

    def _embedder(self, candidates: np.ndarray, needs: dict):
        """positions -> (len, F) embeddings of those candidates, centred as configured.

        `embeddings=` is a (len(pool), F) array indexed by region id, or a callable
        ids -> (len(ids), F) (`sampling.regions.RegionEmbedder`): then only the regions TAUDIS
        looks at (the oversampled set, and the fill's next candidates) are ever embedded, and
        `center` subtracts the oversampled set's mean instead of all candidates'.
        """
        source = require(needs, "embeddings", self.name)
        pool = needs["pool"]
        if callable(source):
            return lambda pos: np.asarray(source(candidates[pos]), dtype=np.float64)
        emb = np.asarray(source)
        if emb.ndim != 2 or emb.shape[0] != len(pool):
            raise SamplingError(
                f"embeddings must be (n_regions={len(pool)}, F), indexed by region id "
                f"(RegionPool.embed gives that), got shape {emb.shape}"
            )
        mean = np.asarray(emb[candidates], dtype=np.float64).mean(0) if self.center else 0.0
        return lambda pos: np.asarray(emb[candidates[pos]], dtype=np.float64) - mean

    def _select(self, candidates, k, rng, **needs) -> Selection:
        scores = region_scores(candidates, needs, self.measure, self.name)
        embed = self._embedder(candidates, needs)
        tie = rng.random(candidates.size)  # one tie-break order for the oversampling and the fill
        top = ranked(scores, min(candidates.size, max(k, math.ceil(self.alpha * k))), tie)  # most uncertain first
        emb_top, embed_more = embed(top), embed
        if self.center and callable(needs["embeddings"]):  # centre on the oversampled set's mean
            mean = emb_top.mean(0)
            emb_top, embed_more = emb_top - mean, (lambda pos: embed(pos) - mean)
        graph = similarity_graph(top, emb_top, self.sigma)  # nodes are positions in candidates
        picks = greedy_max_cover(graph, min(k, round(self.beta * k)), {int(p): scores[p] for p in top})
        picks = self._fill(picks, top, emb_top, k, lambda: ranked(scores, candidates.size, tie)[top.size:], embed_more)
        picks = np.asarray(picks, dtype=np.int64)
        return Selection(candidates[picks], scores[picks])

    def _fill(self, picks: list[int], top: np.ndarray, emb_top: np.ndarray, k: int, rest, embed) -> list[int]:
        """Complete `picks` to k by uncertainty: first regions unlike every pick, then any.

        Walks the uncertainty order: the oversampled set first (already embedded), then, only if
        the budget is still open, the remaining candidates, embedded a batch at a time.
        """
        picks = list(picks)
        known = {int(p): e for p, e in zip(top.tolist(), emb_top)}
        chosen = [known[p] for p in picks]
        taken = set(picks)

        def walk(positions: np.ndarray, vectors: np.ndarray) -> bool:
            for p, e in zip(positions.tolist(), vectors):
                if len(picks) == k:
                    return True
                if p in taken or (chosen and (cosine_similarity(e[None], np.asarray(chosen)) >= self.sigma - _SIM_TOL).any()):
                    continue
                picks.append(p)
                chosen.append(e)
                taken.add(p)
            return len(picks) == k

        if walk(top, emb_top):
            return picks
        order = rest()
        window = order[: self.fill_window * top.size]  # bounded: embeddings may be computed on demand
        batch = max(4 * k, 256)
        for i in range(0, window.size, batch):
            if walk(window[i:i + batch], embed(window[i:i + batch])):
                return picks
        everything = np.concatenate([top, order])
        return picks + [int(p) for p in everything if int(p) not in taken][: k - len(picks)]

    def select_slices(
        self, candidates: np.ndarray, n_slices: int, rng: np.random.Generator, regions_per_slice: float = 2.0, **needs
    ) -> Selection:
        """Whole slices by majority vote over the regions TAUDIS would choose.

        Chooses ceil(regions_per_slice * n_slices) regions (TAUDIS selects beta = 1-2 times the
        image budget in instances), then keeps the n_slices slices holding most of them.
        Returns a Selection whose ids are slice indices and whose scores are the votes.
        """
        pool = require(needs, "pool", self.name)
        ids = np.asarray(candidates, dtype=np.int64)
        if not isinstance(n_slices, (int, np.integer)) or n_slices < 1:
            raise SamplingError(f"n_slices must be a positive integer, got {n_slices!r}")
        k = min(ids.size, max(n_slices, math.ceil(regions_per_slice * n_slices)))
        chosen = self.select(ids, k, rng, **needs)
        zs = pool.z_of(ids)
        totals = np.bincount(zs, weights=region_scores(ids, needs, self.measure, self.name))
        fallback = {int(z): float(totals[z]) for z in np.unique(zs)}
        slices, votes = majority_vote(pool.z_of(chosen.ids), chosen.scores, n_slices, fallback)
        return Selection(slices, votes)
