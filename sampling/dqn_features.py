"""What the RALIS agent observes: state and action features of regions, the candidate pools, the
teacher's scores and the state set.

Features (RALIS section 3.1, appendix A), made independent of the class count C so that one
shipped agent serves any data: a region is described by a summary of its predicted class
shares (`class_summary`: how mixed, the largest share, rarity against the predicted and the
labeled class shares), its entropy map min-, mean- and max-pooled to a g x g grid and its
BALD map mean-pooled (both divided by log C, so in [0, 1]). The state is the features of a
small fixed state set, min/mean/max-pooled over its regions. A candidate (sub-action) adds two normalised histograms
of KL divergences between its predicted class distribution and that of every labeled region
(ground truth) and of the unlabeled regions (predictions; a fixed-size random subsample
bounds the cost). Each step draws K disjoint pools of N unlabeled regions and the agent picks
one region per pool (`sampling.dqn`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from learners.query_network import QueryNetConfig
from sampling.base import SamplingError, require
from sampling.regions import RegionPool
from sampling.uncertainty import region_scores

_EPS = 1e-6


def region_class_fractions(pool: RegionPool, ids: np.ndarray, classes, n_classes: int) -> np.ndarray:
    """(n, C) share of each class among each region's pixels, read region by region."""
    out = np.zeros((len(ids), n_classes))
    for i, r in enumerate(pool.regions(ids)):
        counts = np.bincount(np.asarray(classes[r.slices]).astype(np.int64).ravel(), minlength=n_classes)
        out[i] = counts[:n_classes] / max(counts.sum(), 1)
    return out


def pooled_entropy(pool: RegionPool, ids: np.ndarray, entropy, grid: int = 4, scale: float = 1.0) -> np.ndarray:
    """(n, 3 * grid**2): each region's entropy min-, mean- and max-pooled to grid x grid cells.

    The region-size cell is split into grid x grid blocks; blocks a partial border region
    does not reach are 0.
    """
    bh, bw = (math.ceil(s / grid) for s in pool.size)
    out = np.zeros((len(ids), 3, grid, grid))
    for i, r in enumerate(pool.regions(ids)):
        patch = np.full((grid * bh, grid * bw), np.nan)
        patch[: r.h, : r.w] = np.asarray(entropy[r.slices], dtype=np.float64) / scale
        blocks = patch.reshape(grid, bh, grid, bw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks outside a partial region
            stats = np.stack([np.nanmin(blocks, (1, 3)), np.nanmean(blocks, (1, 3)), np.nanmax(blocks, (1, 3))])
        out[i] = np.nan_to_num(stats, nan=0.0)
    return out.reshape(len(ids), -1)


def class_summary(fractions: np.ndarray, predicted: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """(n, 4) class features whose size does not depend on the number of classes C.

    From each region's class shares p (n, C): the normalised entropy of p (how mixed it is), its
    largest share, and its rarity against the classes' shares among the unlabeled regions'
    predictions and among the labeled pixels, sum_c p_c (1 - share_c): a region of a class
    the labeled set lacks scores near 1, as RALIS's per-class shares let it learn.
    """
    c = fractions.shape[1]
    p = np.clip(fractions, 0.0, 1.0)
    ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1) / math.log(c)
    return np.stack([ent, p.max(1), p @ (1 - predicted), p @ (1 - labeled)], 1)


def region_features(pool: RegionPool, ids: np.ndarray, maps: dict, n_classes: int, predicted: np.ndarray,
                    labeled: np.ndarray, grid: int = 4) -> np.ndarray:
    """(n, 4 + 4 grid**2): `class_summary`, entropy min/mean/max-pooled and BALD mean-pooled to a
    grid x grid (both divided by log C, so in [0, 1] for any C). BALD's pooled mean is the
    teacher's (the BALD sampler's) score up to the region's area, so the agent can reproduce it."""
    ids = np.asarray(ids, dtype=np.int64)
    scale = math.log(n_classes)
    fr = region_class_fractions(pool, ids, maps["prediction"], n_classes)
    bald = pooled_entropy(pool, ids, maps["bald"], grid, scale).reshape(len(ids), 3, -1)[:, 1]
    return np.hstack([class_summary(fr, predicted, labeled), pooled_entropy(pool, ids, maps["entropy"], grid, scale),
                      bald])


def kl_histogram(dists: np.ndarray, refs: np.ndarray, bins: int = 8, kl_max: float = 3.0) -> np.ndarray:
    """(n, bins) normalised histograms of KL(dist_i || ref_j) over the references; zeros without references.

    Distributions are smoothed by 1e-6 so KL stays finite; values beyond kl_max fall in the last bin.
    """
    if len(refs) == 0:
        return np.zeros((len(dists), bins))
    p = (np.asarray(dists) + _EPS) / (1 + _EPS * dists.shape[1])
    q = (np.asarray(refs) + _EPS) / (1 + _EPS * refs.shape[1])
    kl = (p * np.log(p)).sum(1)[:, None] - p @ np.log(q).T  # (n, m)
    idx = np.clip((kl / kl_max * bins).astype(np.int64), 0, bins - 1)
    hist = np.zeros((len(dists), bins))
    np.add.at(hist, (np.repeat(np.arange(len(dists)), kl.shape[1]), idx.ravel()), 1.0)
    return hist / kl.shape[1]


STATE_POOLS = 3
"""The state: the state set's region features min-, mean- and max-pooled over its regions
(rows), so its size depends neither on the state set's size nor on the number of classes."""


class FeatureSpec:
    """Sizes of the RALIS features: entropy grid, KL bins. None depends on the class count or on the
    state set's size, so one agent serves any data (`n_reference` bounds the KL references)."""

    def __init__(self, grid: int = 4, bins: int = 8, kl_max: float = 3.0, n_reference: int = 256,
                 state_regions: int = 8) -> None:
        if grid < 1 or bins < 1 or kl_max <= 0 or n_reference < 1 or state_regions < 1:
            raise SamplingError("features need grid >= 1, bins >= 1, kl_max > 0, n_reference >= 1 and a state set")
        self.grid, self.bins, self.kl_max, self.n_reference = grid, bins, kl_max, n_reference
        self.state_regions = state_regions  # the state set a session draws (the network does not depend on it)

    @property
    def region_size(self) -> int:
        return 4 + 4 * self.grid**2

    def net_config(self, width: int = 64, norm: str = "layer") -> QueryNetConfig:
        """The query network for these features (the last 2 * bins action columns gate it)."""
        sizes = (STATE_POOLS, self.region_size, self.region_size + 2 * self.bins, 2 * self.bins)
        return QueryNetConfig(*sizes, width=width, norm=norm)

    def matches(self, config: QueryNetConfig) -> bool:
        mine = self.net_config()
        keys = ("state_regions", "state_features", "action_features", "sim_features")
        return all(getattr(mine, k) == getattr(config, k) for k in keys)

    def to_dict(self) -> dict:
        """JSON-able; save it in the agent's checkpoint meta so the sampler rebuilds the same features."""
        return {"grid": self.grid, "bins": self.bins, "kl_max": self.kl_max, "n_reference": self.n_reference,
                "state_regions": self.state_regions}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        try:
            return cls(**data)
        except TypeError:
            raise SamplingError("this DQN agent uses an older, class-count-specific feature format; train it again "
                                "with `paser al train-dqn` (or use the shipped agent)") from None


ActionFeatures = Callable[[np.ndarray], np.ndarray]


def infer_classes(needs: dict) -> int:
    """The class count: `needs['n_classes']` when the caller knows it, else 1 + the largest class
    the state set's predictions hold (at least 2)."""
    if needs.get("n_classes"):
        return int(needs["n_classes"])
    pool, pred = needs["pool"], needs["prediction"]
    top = max(int(np.asarray(pred[r.slices]).max()) for r in pool.regions(np.asarray(needs["state_ids"])))
    return max(2, top + 1)


def observe(spec: FeatureSpec, needs: dict, rng: np.random.Generator) -> tuple[np.ndarray, ActionFeatures]:
    """The state (STATE_POOLS, F) and a function giving action features (n, A) for region ids.

    `needs`: pool (RegionPool, its labeled ids are the labeled set), prediction (Z, H, W)
    class map, entropy and bald (Z, H, W), labels (Z, H, W) ground truth (read only in labeled
    regions), state_ids (the fixed state set, any size), optionally n_classes.
    """
    pool = require(needs, "pool", "dqn")
    maps = {name: require(needs, name, "dqn") for name in ("prediction", "entropy", "bald")}
    state_ids = np.asarray(require(needs, "state_ids", "dqn"), dtype=np.int64)
    if state_ids.size < 1:
        raise SamplingError("the DQN agent needs a non-empty state set")
    c = infer_classes(needs)
    lab = np.zeros((0, c))
    if pool.labeled_ids.size:
        lab = region_class_fractions(pool, pool.labeled_ids, require(needs, "labels", "dqn"), c)
    labeled = (lab * pool.area[pool.labeled_ids, None]).sum(0) / max(pool.area[pool.labeled_ids].sum(), 1)
    unl = pool.candidates()
    if unl.size > spec.n_reference:
        unl = np.sort(rng.choice(unl, spec.n_reference, replace=False))
    unl_dist = region_class_fractions(pool, unl, maps["prediction"], c)
    predicted = unl_dist.mean(0) if len(unl_dist) else np.full(c, 1 / c)
    feats = region_features(pool, state_ids, maps, c, predicted, labeled, spec.grid)
    state = np.stack([feats.min(0), feats.mean(0), feats.max(0)])

    def actions(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        base = region_features(pool, ids, maps, c, predicted, labeled, spec.grid)
        dist = region_class_fractions(pool, ids, maps["prediction"], c)
        hists = [kl_histogram(dist, refs, spec.bins, spec.kl_max) for refs in (lab, unl_dist)]
        return np.hstack([base] + hists)

    return state, actions


def teacher_scores(needs: dict, ids: np.ndarray) -> np.ndarray:
    """The teacher's score of each region: its summed BALD, the BALD sampler's ranking (and
    TAUDIS's, whose set cover acts on the batch, not within a pool)."""
    return region_scores(np.asarray(ids, dtype=np.int64), needs, "bald", "dqn")


def draw_pools(candidates: np.ndarray, k: int, pool_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """K = k disjoint pools of up to pool_size candidates each, drawn uniformly (every pool non-empty)."""
    n = min(pool_size, len(candidates) // k)
    if n < 1:
        raise SamplingError(f"cannot draw {k} pools from {len(candidates)} candidates; lower k")
    drawn = rng.choice(candidates, k * n, replace=False)
    return list(drawn.reshape(k, n))


def choose_state_set(pool: RegionPool, labels, n_classes: int, size: int, rng: np.random.Generator,
                     ids: Sequence[int] | None = None) -> np.ndarray:
    """A state set of `size` regions whose pooled class distribution is close to the whole set's.

    RALIS needs the state set to mirror the class distribution of the data (its footnote 2):
    among 64 random draws, the one with the smallest total-variation distance wins.
    """
    ids = pool.ids if ids is None else np.asarray(ids, dtype=np.int64)
    if size > ids.size:
        raise SamplingError(f"a state set of {size} regions needs at least that many labeled regions, got {ids.size}")
    fr = region_class_fractions(pool, ids, labels, n_classes) * pool.area[ids, None]
    target = fr.sum(0) / fr.sum()
    best, best_d = None, np.inf
    for _ in range(64):
        pick = rng.choice(ids.size, size, replace=False)
        dist = fr[pick].sum(0) / fr[pick].sum()
        d = np.abs(dist - target).sum() / 2
        if d < best_d:
            best, best_d = pick, d
    return np.sort(ids[best])


def random_state_set(allowed: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A state set of `size` regions drawn with a fixed seed among `allowed` ids, where no ground
    truth is known to pick a class-representative one (`choose_state_set`), as in a session."""
    allowed = np.asarray(allowed, dtype=np.int64)
    if allowed.size < size:
        raise SamplingError(f"the DQN agent needs a state set of {size} regions but only {allowed.size} are "
                            "available; compute maps on more slices first")
    return np.sort(np.random.default_rng(seed).choice(allowed, size, replace=False))
