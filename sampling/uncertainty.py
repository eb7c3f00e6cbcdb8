"""The RALIS baselines: uniform random (U), entropy (H) and BALD (B) region samplers.

H and B score a region by the sum of its pixels' predictive entropy or BALD (RALIS section
4.1), read from precomputed per-pixel maps (`learners.uncertainty`) with one vectorised
reduction over the pool (or from those sums, precomputed per region), then keep the top k
(an argpartition: a million regions take milliseconds). A sum (not a mean) prefers full regions over
small partial border cells, as the labeling effort of a region grows with its area too.
"""

from __future__ import annotations

import numpy as np

from sampling.base import Sampler, SamplingError, Selection, require, top_k
from sampling.regions import RegionPool


def region_scores(candidates: np.ndarray, needs: dict, measure: str, sampler: str) -> np.ndarray:
    """Per-candidate sum of the per-pixel map `needs[measure]` over each region of `needs['pool']`.

    `needs[measure]` may instead hold the per-region sums already (a 1D array indexed by region
    id, `RegionPool.reduce(map, "sum")`): a whole volume's maps are reduced once, as they are
    computed, and every proposal after that reads a million numbers, not 16 GB of pixels.
    """
    pool = require(needs, "pool", sampler)
    if not isinstance(pool, RegionPool):
        raise SamplingError(f"`pool=` must be a sampling.regions.RegionPool, got {type(pool).__name__}")
    pixel_map = require(needs, measure, sampler)
    if candidates.size and candidates.max() >= len(pool):
        raise SamplingError(f"candidate ids go up to {candidates.max()} but the pool has {len(pool)} regions")
    if np.ndim(pixel_map) == 1:
        if len(pixel_map) != len(pool):
            raise SamplingError(f"per-region `{measure}=` scores must have one value per region ({len(pool)}), "
                                f"got {len(pixel_map)}")
        return np.asarray(pixel_map, dtype=np.float64)[candidates]
    return pool.reduce(pixel_map, "sum")[candidates]


class RandomSampler(Sampler):
    """Uniform random regions (baseline U); the score is the random priority it was drawn by."""

    name = "random"

    def _select(self, candidates, k, rng, **needs) -> Selection:
        priority = rng.random(candidates.size)
        best = np.argsort(-priority, kind="stable")[:k]
        return Selection(candidates[best], priority[best])


class _MapSampler(Sampler):
    measure = ""

    def _select(self, candidates, k, rng, **needs) -> Selection:
        scores = region_scores(candidates, needs, self.measure, self.name)
        best = top_k(scores, k, rng)
        return Selection(candidates[best], scores[best])


class EntropySampler(_MapSampler):
    """Top-k regions by summed pixel entropy (baseline H). Needs `pool=` and `entropy=` (Z, H, W)."""

    name = "entropy"
    measure = "entropy"


class BaldSampler(_MapSampler):
    """Top-k regions by summed pixel BALD (baseline B). Needs `pool=` and `bald=` (Z, H, W)."""

    name = "bald"
    measure = "bald"
