"""The one sampler interface: `select(candidates, k, rng, **needs) -> Selection`.

Every sampler (random, entropy, BALD, TAUDIS, DQN) goes through `Sampler.select`, which checks
the request once (k within 1..pool size, unique integer candidate ids) and the answer once
(exactly k unique ids, all candidates), so the samplers themselves only rank. `needs` are the
precomputed inputs a sampler reads (a `RegionPool` and per-pixel maps, region embeddings ...);
samplers never train the segmentation model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from learners.errors import InputError


class SamplingError(InputError):
    """A sampling request that cannot be met (bad k, bad candidates, a missing input)."""


@dataclass(frozen=True, eq=False)
class Selection:
    """The chosen region ids, best first, with the score each was chosen by (ids and scores are arrays,
    so compare them with numpy, not `==` on Selections)."""

    ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def check_candidates(candidates: np.ndarray, k: int) -> np.ndarray:
    """Candidates as a 1D int64 array, refusing duplicates and a k outside 1..len(candidates)."""
    ids = np.asarray(candidates)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise SamplingError(f"candidates must be a 1D array of integer region ids, got shape {ids.shape} of {ids.dtype}")
    ids = ids.astype(np.int64)
    if _has_duplicates(ids):
        raise SamplingError("candidates contain duplicate region ids; pass each unlabeled region once")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise SamplingError(f"k must be a positive integer number of regions, got {k!r}")
    if k > ids.size:
        raise SamplingError(
            f"asked for k={k} regions but only {ids.size} candidates remain unlabeled; "
            f"lower k to at most {ids.size} or add images to the pool"
        )
    return ids


def _has_duplicates(ids: np.ndarray) -> bool:
    """O(n) for the sorted ids a RegionPool hands out (a million of them), a sort otherwise
    (np.unique's hashing is far slower at that size)."""
    if ids.size < 2:
        return False
    if (ids[1:] > ids[:-1]).all():
        return False
    s = np.sort(ids)
    return bool((s[1:] == s[:-1]).any())


def _contains(pool: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """np.isin(ids, pool) by binary search in a sorted copy of the pool."""
    s = pool if pool.size < 2 or (pool[1:] > pool[:-1]).all() else np.sort(pool)
    pos = np.clip(np.searchsorted(s, ids), 0, max(s.size - 1, 0))
    return s[pos] == ids if s.size else np.zeros(ids.shape, bool)


def require(needs: dict, name: str, sampler: str) -> object:
    """A named input of `needs`, or a message saying which sampler needs it."""
    if needs.get(name) is None:
        raise SamplingError(f"the {sampler} sampler needs `{name}=`; pass it to select()")
    return needs[name]


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the k highest scores, best first; exact ties broken at random by `rng`."""
    return ranked(scores, k, rng.random(len(scores)))


def ranked(scores: np.ndarray, k: int, tie: np.ndarray) -> np.ndarray:
    """The first k positions of the order (score descending, then `tie` ascending).

    For k much smaller than the pool (a million regions of a whole volume) only the k best are
    sorted, after an O(n) argpartition; the result equals the first k of the full sort.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    k = min(int(k), n)
    if k < 1:
        return np.empty(0, dtype=np.int64)
    if k * 8 < n:
        thr = s[np.argpartition(-s, k - 1)[:k]].min()
        if not np.isnan(thr):
            cand = np.flatnonzero(s >= thr)  # every tie at the threshold, so `tie` decides among them
            return cand[np.lexsort((tie[cand], -s[cand]))][:k]
    return np.lexsort((tie, -s))[:k]


class Sampler(ABC):
    """Ranks candidate regions; `select` validates the request and the result around `_select`."""

    name: str = "sampler"

    def select(self, candidates: np.ndarray, k: int, rng: np.random.Generator, **needs) -> Selection:
        """The k chosen ids among `candidates` with their scores; deterministic for a given rng seed."""
        ids = check_candidates(candidates, k)
        chosen = self._select(ids, k, rng, **needs)
        picked = np.asarray(chosen.ids, dtype=np.int64)
        if picked.size != k or np.unique(picked).size != k or not _contains(ids, picked).all():
            raise RuntimeError(f"{self.name} sampler returned {picked.size} ids for k={k}: a bug, please report it")
        return Selection(picked, np.asarray(chosen.scores, dtype=np.float64))

    def check_classes(self, n_classes: int) -> None:
        """Refuse data with a class count this sampler was not made for (only trained samplers care)."""

    @abstractmethod
    def _select(self, candidates: np.ndarray, k: int, rng: np.random.Generator, **needs) -> Selection:
        """Rank validated candidates (1D int64, 1 <= k <= len) and return k of them."""
