"""The keep-or-replace decision of a retrain: do the new weights score worse on the held-out
regions than the current ones by more than the held-out set's own noise?

A plain "new mIoU < old mIoU" on 2-9 held-out regions freezes the model on noise: drops of one or
two hundredths on a few regions are common while more labels help on unseen slices. The decision is a paired bootstrap over
held-out *regions* (pixels of a region are correlated, regions are the independent units): both
models' per-region confusion matrices are resampled together, the mIoU of each resample is taken
from the pooled confusion (as the learning curve's), and the previous weights are kept when the
new ones are worse in at least `level` of the resamples and by at least `min_drop` on the full
set. With one held-out region every resample is that region: any drop beyond `min_drop` counts.

`scipy.stats.bootstrap` resamples statistics of per-observation values; this statistic pools
3x3 confusion matrices per resample, so the resampling is drawn here with numpy directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learners.inference import predict_classes
from learners.metrics import confusion_matrix
from learners.unet import UNet

LEVEL = 0.95
"""Keep the previous weights when the new ones are worse in at least this share of the resamples."""
MIN_DROP = 0.005
"""...and worse by at least this much mIoU on the whole held-out set (a tie is not a drop)."""
RESAMPLES = 2000


@dataclass(frozen=True)
class Verdict:
    """The held-out comparison of one role: per-class IoU of the new and the current weights,
    the share of resamples where the new mIoU is lower, and whether that is a real drop."""

    new_iou: np.ndarray
    old_iou: np.ndarray
    p_worse: float
    worse: bool
    n_regions: int

    @property
    def new_miou(self) -> float:
        return _nanmean(self.new_iou)

    @property
    def old_miou(self) -> float:
        return _nanmean(self.old_iou)


def region_confusions(model: UNet, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, C, C) confusion matrix of `model` on each held-out region (rows: truth)."""
    n = model.config.n_classes
    pred = predict_classes(model, images)
    return np.stack([confusion_matrix(p, t, n) for p, t in zip(pred, labels)]).astype(np.int64)


def pooled_iou(confusions: np.ndarray) -> np.ndarray:
    """Per-class IoU of confusion matrices pooled over their regions: (..., N, C, C) -> (..., C);
    NaN for a class absent from both prediction and truth."""
    cm = confusions.sum(-3)
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    union = cm.sum(-1) + cm.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def judge(new: np.ndarray, old: np.ndarray, level: float = LEVEL, min_drop: float = MIN_DROP,
          resamples: int = RESAMPLES, seed: int = 0) -> Verdict:
    """Compare per-region confusions `new` and `old` ((N, C, C), the same regions) by a paired bootstrap."""
    n = len(new)
    new_iou, old_iou = pooled_iou(new), pooled_iou(old)
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    diff = _nanmean(pooled_iou(new[idx]), axis=-1) - _nanmean(pooled_iou(old[idx]), axis=-1)
    p_worse = float(np.mean(diff < 0))
    worse = bool(_nanmean(old_iou) - _nanmean(new_iou) >= min_drop and p_worse >= level)
    return Verdict(new_iou, old_iou, p_worse, worse, n)


def _nanmean(values: np.ndarray, axis: int | None = None):
    """Mean over the classes present (NaN-safe, no warning for all-NaN rows)."""
    values = np.asarray(values, np.float64)
    present = np.isfinite(values)
    total = np.where(present, values, 0.0).sum(axis=axis)
    count = present.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if axis is None else out
