"""Samplers that know the ground truth: ceilings for what any sampler could save when people correct.

Benchmark-only. They read the pool's true labels, which no session has, and rank the candidate
regions by the wrong pixels of f0's current prediction (the `prediction` map, the argmax of its MC
mean; the suggestion a person corrects is the same guess from more passes):
- `oracle-wrong`: the most wrong pixels first: what uncertainty sampling tries to estimate;
- `oracle-cheap`: the fewest wrong pixels first: the least a person could pay per region;
- `oracle-gain-per-px`: an oracle's proxy of mIoU gained per corrected pixel. A region teaches the
  confusions it holds (true class a predicted as b); a few examples teach most of a confusion
  (saturating n / (n + `saturation`) in the region's count n), and fixing a confusion is worth its
  count in the whole pool times the mIoU gained per fixed pixel of that kind (from the pool's
  confusion matrix: 1/U_a + T_b/U_b^2, over C classes). That value is divided by the region's wrong
  pixels plus `floor` x its area (looking at a region costs something even when nothing is wrong).

`register(truth, n_classes)` adds them to `sampling.registry.REGISTRY` under those names, so a real
`Session.propose(k, "oracle-wrong")` builds and runs them like any shipped sampler (the registry is
only changed in the benchmark's process).
"""

from __future__ import annotations

import numpy as np

from sampling.base import Sampler, SamplingError, Selection, top_k
from sampling.registry import REGISTRY, SamplerInfo

ORACLES = ("oracle-wrong", "oracle-cheap", "oracle-gain-per-px")


def region_confusions(candidates: np.ndarray, pool, prediction, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(len(candidates), C, C) pixel counts per region of (true class a, predicted class b)."""
    c = int(n_classes)
    out = np.zeros((len(pool), c * c), np.float64)
    one = type(pool)(pool.shape[1:], pool.size)  # one slice's cells
    for z in np.unique(pool.z_of(candidates)):
        code = truth[int(z)].astype(np.int64) * c + np.asarray(prediction[int(z)]).astype(np.int64)
        ids = pool.slice_ids(int(z))
        for k in range(c * c):
            out[ids, k] = one.reduce((code == k).astype(np.float32))
    return out[candidates].reshape(-1, c, c)


def pool_confusion(prediction, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) pixel counts of (true a, predicted b) over every slice of the pool."""
    c = int(n_classes)
    m = np.zeros(c * c, np.int64)
    for z in range(len(truth)):
        code = truth[z].astype(np.int64) * c + np.asarray(prediction[z]).astype(np.int64)
        m += np.bincount(code.ravel(), minlength=c * c)[: c * c]
    return m.reshape(c, c)


def fix_value(confusion: np.ndarray) -> np.ndarray:
    """(C, C) mIoU gained per fixed pixel of each confusion (true a, predicted b), 0 on the diagonal:
    fixing one raises class a's TP by one at the same union (1 / U_a) and removes one of class b's
    false positives (T_b / U_b^2), over the C classes."""
    m = np.asarray(confusion, np.float64)
    c = len(m)
    tp = np.diag(m)
    union = m.sum(1) + m.sum(0) - tp
    inv = np.divide(1.0, union, out=np.zeros(c), where=union > 0)
    fp_gain = np.divide(tp, union ** 2, out=np.zeros(c), where=union > 0)
    value = (inv[:, None] + fp_gain[None, :]) / c
    np.fill_diagonal(value, 0.0)
    return value


class OracleSampler(Sampler):
    """Ranks candidates by f0's wrong pixels against the truth (see the module docstring). Needs `pool=`
    and `prediction=` ((Z, H, W) class indices)."""

    def __init__(self, name: str, truth: np.ndarray, n_classes: int, floor: float = 0.02,
                 saturation: float = 16.0) -> None:
        if name not in ORACLES:
            raise SamplingError(f"unknown oracle {name!r}; choose one of {', '.join(ORACLES)}")
        self.name, self.truth, self.n_classes = name, np.asarray(truth), int(n_classes)
        self.floor, self.saturation = float(floor), float(saturation)

    def scores(self, candidates: np.ndarray, pool, prediction) -> np.ndarray:
        conf = region_confusions(candidates, pool, prediction, self.truth, self.n_classes)
        off = ~np.eye(self.n_classes, dtype=bool)
        wrong = conf[:, off].sum(1)
        if self.name == "oracle-wrong":
            return wrong
        if self.name == "oracle-cheap":
            return -wrong
        whole = pool_confusion(prediction, self.truth, self.n_classes)
        worth = fix_value(whole) * whole  # the pool's mIoU at stake in each confusion
        taught = conf / (conf + self.saturation)
        value = (taught * worth[None]).sum((1, 2))
        return value / (wrong + self.floor * pool.area[candidates])

    def _select(self, candidates, k, rng, **needs) -> Selection:
        pool, prediction = needs.get("pool"), needs.get("prediction")
        if pool is None or prediction is None:
            raise SamplingError(f"the {self.name} sampler needs `pool=` and `prediction=`")
        scores = self.scores(candidates, pool, prediction).astype(np.float64)
        best = top_k(scores, k, rng)
        return Selection(candidates[best], scores[best])


def register(truth: np.ndarray, n_classes: int) -> None:
    """Put the oracles that know `truth` ((Z, H, W) class indices of the session's image) in the registry."""
    for name in ORACLES:
        REGISTRY[name] = SamplerInfo(
            name, "benchmark oracle: ranks by f0's wrong pixels against the ground truth",
            lambda _n=name: OracleSampler(_n, truth, n_classes), lambda s: frozenset({"prediction"}))
