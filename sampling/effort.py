"""Effort-aware region sampling: expected gain per expected correction.

When a proposed region arrives filled with the model's guess, a person pays for the pixels
they change, not for the region. This sampler ranks a region by what labeling it is expected
to teach (the summed BALD or entropy of its pixels) divided by the pixels the person is expected
to correct: the summed expected error of the guess, 1 - max_c p(c) per pixel. That error is read
from the per-pixel entropy the maps hold (`expected_error`: the error of the distribution with
the same entropy whose other classes share the rest equally; exact for two classes), plus a
floor (`floor` x the region's area: looking at a region and accepting it costs something even
when nothing is wrong), so regions the model gets right are not all that is proposed.
"""

from __future__ import annotations

import numpy as np

from sampling.base import Sampler, SamplingError, Selection, top_k
from sampling.uncertainty import region_scores


def expected_error(entropy: np.ndarray, n_classes: int, points: int = 512) -> np.ndarray:
    """Per-pixel expected error 1 - q of the C-class distribution (q, (1-q)/(C-1), ...) whose entropy
    (nats) is `entropy`: a monotone lookup, 0 at entropy 0 and 1 - 1/C at log C."""
    c = int(n_classes)
    if c < 2:
        raise SamplingError(f"expected_error needs at least 2 classes, got {c}")
    q = np.linspace(1.0, 1.0 / c, points)
    rest = (1 - q) / (c - 1)
    h = -(q * np.log(np.clip(q, 1e-12, None)) + (c - 1) * rest * np.log(np.clip(rest, 1e-12, None)))
    flat = np.asarray(entropy, dtype=np.float64)
    return np.interp(flat, h, 1 - q).astype(np.float32)


class EffortSampler(Sampler):
    """Top-k regions by summed `measure` (BALD by default) per expected corrected pixel.

    Needs `pool=`, `entropy=` and, for measure "bald", `bald=` ((Z, H, W) maps). The class count is
    taken from `check_classes` (the session and the simulation call it), else `n_classes`.
    """

    name = "effort"

    def __init__(self, measure: str = "bald", floor: float = 0.02, n_classes: int = 3) -> None:
        if measure not in ("bald", "entropy"):
            raise SamplingError(f"the effort sampler's measure is 'bald' or 'entropy', got {measure!r}")
        if not 0 < float(floor) <= 1:
            raise SamplingError(f"floor must lie in (0, 1] (a share of the region's area), got {floor}")
        self.measure, self.floor, self.n_classes = measure, float(floor), int(n_classes)

    def check_classes(self, n_classes: int) -> None:
        self.n_classes = int(n_classes)

    def _select(self, candidates, k, rng, **needs) -> Selection:
        gain = region_scores(candidates, needs, self.measure, self.name)
        pool = needs["pool"]
        entropy = needs.get("entropy")
        if entropy is None:
            raise SamplingError("the effort sampler needs `entropy=` maps (the expected corrections come from them)")
        wrong = np.zeros(len(pool), np.float64)
        one = type(pool)(pool.shape[1:], pool.size)  # one slice's cells, to reduce the slices one at a time
        for z in np.unique(pool.z_of(candidates)):  # only the candidates' slices: a large volume's maps stay on disk
            wrong[pool.slice_ids(int(z))] = one.reduce(expected_error(np.asarray(entropy[int(z)]), self.n_classes))
        cost = wrong[candidates] + self.floor * pool.area[candidates]
        scores = gain / cost
        best = top_k(scores, k, rng)
        return Selection(candidates[best], scores[best])
