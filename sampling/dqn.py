"""RALIS region sampler: state and action features, the episode loop, and the trained-agent sampler.

Features (RALIS section 3.1, appendix A): a region is described by the share of its pixels
predicted in each class and by its entropy map min-, mean- and max-pooled to a g x g grid
(entropy divided by log C, so features lie in [0, 1]). The state is the features of every
region of a small fixed state set. A candidate (sub-action) adds two normalised histograms
of KL divergences between its predicted class distribution and that of every labeled region
(ground truth) and of the unlabeled regions (predictions; a fixed-size random subsample
bounds the cost). Each step draws K disjoint pools of N unlabeled regions and the agent picks
one region per pool.

`play_episode` runs the active-learning game for any `ALGame` (label the chosen regions,
train briefly, measure mIoU on a reward split). The reward is the mIoU gain over the
previous step, the first step measured against the mIoU the game reports at reset, never
against 0 (the published code's inflated first reward); the last step is terminal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from learners.query_network import DQNAgent, QueryNetConfig, Transition
from sampling.base import Sampler, SamplingError, Selection, require
from sampling.regions import RegionPool

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


def region_features(pool: RegionPool, ids: np.ndarray, prediction, entropy, n_classes: int,
                    grid: int = 4) -> np.ndarray:
    """(n, C + 3 grid**2): predicted class shares and pooled normalised entropy (RALIS state/action base)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.hstack([
        region_class_fractions(pool, ids, prediction, n_classes),
        pooled_entropy(pool, ids, entropy, grid, math.log(n_classes)),
    ])


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


class FeatureSpec:
    """Sizes of the RALIS features: classes, entropy grid, KL bins, state set size."""

    def __init__(self, n_classes: int, state_regions: int, grid: int = 4, bins: int = 8, kl_max: float = 3.0,
                 n_reference: int = 256) -> None:
        if n_classes < 2 or state_regions < 1 or grid < 1 or bins < 1:
            raise SamplingError("features need n_classes >= 2, a non-empty state set, grid >= 1 and bins >= 1")
        self.n_classes, self.state_regions, self.grid, self.bins = n_classes, state_regions, grid, bins
        self.kl_max, self.n_reference = kl_max, n_reference

    @property
    def region_size(self) -> int:
        return self.n_classes + 3 * self.grid**2

    def net_config(self, width: int = 64, norm: str = "layer") -> QueryNetConfig:
        """The query network for these features (the last 2 * bins action columns gate it)."""
        sizes = (self.state_regions, self.region_size, self.region_size + 2 * self.bins, 2 * self.bins)
        return QueryNetConfig(*sizes, width=width, norm=norm)

    def matches(self, config: QueryNetConfig) -> bool:
        mine = self.net_config()
        keys = ("state_regions", "state_features", "action_features", "sim_features")
        return all(getattr(mine, k) == getattr(config, k) for k in keys)

    def to_dict(self) -> dict:
        """JSON-able; save it in the agent's checkpoint meta so the sampler rebuilds the same features."""
        return {"n_classes": self.n_classes, "state_regions": self.state_regions, "grid": self.grid,
                "bins": self.bins, "kl_max": self.kl_max, "n_reference": self.n_reference}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(**data)


ActionFeatures = Callable[[np.ndarray], np.ndarray]


def observe(spec: FeatureSpec, needs: dict, rng: np.random.Generator) -> tuple[np.ndarray, ActionFeatures]:
    """The state (S, F) and a function giving action features (n, A) for region ids, from `needs`.

    `needs`: pool (RegionPool, its labeled ids are the labeled set), prediction (Z, H, W)
    class map, entropy (Z, H, W), labels (Z, H, W) ground truth (read only in labeled regions),
    state_ids (S,) region ids of the fixed state set.
    """
    pool = require(needs, "pool", "dqn")
    pred, ent = require(needs, "prediction", "dqn"), require(needs, "entropy", "dqn")
    state_ids = np.asarray(require(needs, "state_ids", "dqn"), dtype=np.int64)
    if state_ids.size != spec.state_regions:
        raise SamplingError(
            f"the agent was trained with a state set of {spec.state_regions} regions, got {state_ids.size}"
        )
    state = region_features(pool, state_ids, pred, ent, spec.n_classes, spec.grid)
    lab = np.zeros((0, spec.n_classes))
    if pool.labeled_ids.size:
        lab = region_class_fractions(pool, pool.labeled_ids, require(needs, "labels", "dqn"), spec.n_classes)
    unl = pool.candidates()
    if unl.size > spec.n_reference:
        unl = np.sort(rng.choice(unl, spec.n_reference, replace=False))
    unl_dist = region_class_fractions(pool, unl, pred, spec.n_classes)

    def actions(ids: np.ndarray) -> np.ndarray:
        base = region_features(pool, ids, pred, ent, spec.n_classes, spec.grid)
        dist = base[:, : spec.n_classes]
        hists = [kl_histogram(dist, refs, spec.bins, spec.kl_max) for refs in (lab, unl_dist)]
        return np.hstack([base] + hists)

    return state, actions


def draw_pools(candidates: np.ndarray, k: int, pool_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """K = k disjoint pools of up to pool_size candidates each, drawn uniformly (every pool non-empty)."""
    n = min(pool_size, len(candidates) // k)
    if n < 1:
        raise SamplingError(f"cannot draw {k} pools from {len(candidates)} candidates; lower k")
    drawn = rng.choice(candidates, k * n, replace=False)
    return list(drawn.reshape(k, n))


class DQNSampler(Sampler):
    """Runs a trained RALIS agent: k disjoint pools of `pool_size` random candidates, the region of
    highest Q in each (Eq. 1, no exploration). Needs what `observe` lists; keep the state set's
    regions out of the candidates (RALIS holds D_S apart from the pool)."""

    name = "dqn"

    def __init__(self, agent: DQNAgent, spec: FeatureSpec, pool_size: int = 10) -> None:
        if not spec.matches(agent.net.config):
            raise SamplingError(
                "the agent's network does not match these feature sizes; use the FeatureSpec it was trained with "
                "(saved in its checkpoint meta)"
            )
        if pool_size < 1:
            raise SamplingError(f"pool_size must be positive, got {pool_size}")
        self.agent, self.spec, self.pool_size = agent, spec, pool_size

    def check_classes(self, n_classes: int) -> None:
        if self.spec.n_classes != n_classes:
            raise SamplingError(f"the DQN agent was trained for {self.spec.n_classes} classes but the data has "
                                f"{n_classes}: use an agent trained on {n_classes}-class data")

    def _select(self, candidates, k, rng, **needs) -> Selection:
        state, actions = observe(self.spec, needs, rng)
        pools = draw_pools(candidates, k, self.pool_size, rng)
        picks, q = self.agent.act(state, [actions(p) for p in pools], 0.0, rng)
        order = np.argsort(-q, kind="stable")  # best first, like every sampler
        return Selection(np.array([p[i] for p, i in zip(pools, picks)])[order], q[order])


class ALGame(Protocol):
    """One active-learning episode on labeled data (the segmentation model it trains is its own)."""

    def reset(self, rng: np.random.Generator) -> float:
        """Start an episode; return the mIoU on the reward split before any region is added."""

    def needs(self) -> dict:
        """What `observe` reads, for the current model and labeled set."""

    def label(self, ids: np.ndarray) -> float:
        """Add the regions to the labeled set, train briefly, return the reward-split mIoU."""


def _step_inputs(spec: FeatureSpec, game: ALGame, k: int, pool_size: int, rng: np.random.Generator):
    """State, candidate pools (region ids) and their action features for the game's current model."""
    needs = game.needs()
    state, actions = observe(spec, needs, rng)
    ids = draw_pools(needs["pool"].candidates(), k, pool_size, rng)
    return state, ids, [actions(p) for p in ids]


def play_episode(agent: DQNAgent, game: ALGame, spec: FeatureSpec, steps: int, k: int, rng: np.random.Generator,
                 epsilon: float = 0.1, pool_size: int = 10, learn: bool = True) -> list[float]:
    """Play `steps` AL steps of k regions, storing transitions (and learning); returns the rewards."""
    miou = game.reset(rng)  # the baseline of the first reward
    state, ids, pools = _step_inputs(spec, game, k, pool_size, rng)
    rewards = []
    for step in range(steps):
        picks, _ = agent.act(state, pools, epsilon, rng)
        new_miou = game.label(np.array([p[i] for p, i in zip(ids, picks)]))
        reward, miou = new_miou - miou, new_miou
        rewards.append(reward)
        taken = np.stack([pool[i] for pool, i in zip(pools, picks)])
        if step == steps - 1:
            agent.buffer.push(Transition(state, taken, reward, done=True))
        else:
            next_state, ids, pools = _step_inputs(spec, game, k, pool_size, rng)
            agent.buffer.push(Transition(state, taken, reward, next_state, pools))
            state = next_state
        if learn:
            agent.learn(rng)
    return rewards


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
