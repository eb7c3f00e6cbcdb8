"""Cost-aware proposals: label the regions whose labels would change routing decisions most.

PaSeR sends a patch from f0 to a larger model f_k when (1 - lambda) (IoU(f_k) - IoU(f0)) exceeds
lambda (C(f_k) - C(f0)) (Eq. 2). Where f0 and f_k predict the same pixels their IoUs are equal
whatever the labels say, so a label there cannot move that decision; where they disagree, the
label decides which of them is right, and the IoU difference it can reveal grows with the number
of disagreeing pixels. Against the price of routing up, a region's value for routing is therefore
max over k of (pixels where f_k and f0 disagree) / (C(f_k) - C(f0)): "f0 and the larger models
disagree most per unit of cost". Uncertainty samplers (entropy, BALD, TAUDIS) instead ask where
f0 alone is unsure, which also picks regions every model gets equally wrong. Needs f0's
prediction map (its MC mean, what PaSeR routes from), f1..fm's per-region disagreement with it
(`model_disagreement`) and the models' Eq. 3 cost shares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from learners.modes import eval_mode
from sampling.base import Sampler, SamplingError, Selection, require, top_k
from sampling.regions import RegionPool


@torch.no_grad()
def model_disagreement(models: Sequence[nn.Module], pool: RegionPool, image_of: Callable[[int], np.ndarray],
                       prediction, slices: Iterable[int]) -> np.ndarray:
    """(len(pool), K) pixels of each region where model k (eval pass on the whole slice) predicts a class
    other than f0's `prediction` map (Z, H, W); column 0 (f0 itself) is 0, rows of other slices are 0."""
    one = RegionPool(pool.shape[1:], pool.size)
    out = np.zeros((len(pool), len(models) + 1), np.float64)
    for z in slices:
        x = torch.from_numpy(np.ascontiguousarray(image_of(z), np.float32))[None, None]
        base = np.asarray(prediction[z])
        for k, model in enumerate(models, 1):
            with eval_mode(model):
                pred = model(x).argmax(1)[0].numpy()
            out[pool.slice_ids(z), k] = one.reduce((pred != base)[None].astype(np.float32), "sum")
    return out


MIN_PRICE = 1e-3


class RoutingValueSampler(Sampler):
    """Top-k regions by max_k disagreeing pixels(f0, f_k) / (C(f_k) - C(f0)). Needs `pool=`,
    `disagreement=` (len(pool), K) and `model_costs=` (K,)."""

    name = "routing"

    def _select(self, candidates, k, rng, **needs) -> Selection:
        pool = require(needs, "pool", self.name)
        d = np.asarray(require(needs, "disagreement", self.name), np.float64)
        costs = np.asarray(require(needs, "model_costs", self.name), np.float64)
        if d.shape != (len(pool), costs.size) or costs.size < 2:
            raise SamplingError(f"disagreement must be (regions, models) = ({len(pool)}, {costs.size}) with at least "
                                f"two models, got {d.shape}")
        price = np.maximum(costs[1:] - costs[0], MIN_PRICE)  # a model no dearer than f0 is nearly free to route to
        scores = (d[candidates, 1:] / price).max(1)
        best = top_k(scores, k, rng)
        return Selection(candidates[best], scores[best])
