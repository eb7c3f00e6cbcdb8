"""Per-patch scores, the PaSeR reward (Eqs. 2-3), and the distance between two policies.

Everything a router decision is judged by reduces to per-patch numbers: the confusion
matrix of each model's prediction on each patch, and from it the patch's mean IoU. A
`PatchTable` holds them for every model at once so that RL epochs, threshold searches and
accuracy-cost sweeps never rerun a segmentation model: the IoU of any routing map is the
IoU of the summed confusions of the chosen (patch, model) pairs, exactly what stitching the
routed patches and scoring the image would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learners.errors import ConfigError, ShapeError
from learners.grid import Grid
from learners.metrics import iou_from_confusion


def patch_confusions(pred: np.ndarray, target: np.ndarray, grid: Grid, n_classes: int) -> np.ndarray:
    """(N, P, C, C) confusion counts (rows = truth) of each grid patch, in one bincount.

    pred and target are (N, H, W) class indices; target pixels outside 0..C-1 are ignored.
    """
    pred = np.asarray(pred).astype(np.int64)
    target = np.asarray(target).astype(np.int64)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ShapeError(f"need matching (N, H, W) prediction and target, got {pred.shape} and {target.shape}")
    n, p, c = pred.shape[0], len(grid), n_classes
    cell = np.broadcast_to(grid.cell_index_map(), pred.shape)
    image = np.broadcast_to(np.arange(n)[:, None, None], pred.shape)
    keep = (target >= 0) & (target < c)
    idx = ((image * p + cell) * c + target) * c + np.clip(pred, 0, c - 1)
    counts = np.bincount(idx[keep], minlength=n * p * c * c)
    return counts.reshape(n, p, c, c)


def confusion_iou(confusions: np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present (in truth or prediction) of each (..., C, C) confusion.

    The per-patch IoU of the reward. A patch with no valid pixel scores NaN.
    """
    cm = np.asarray(confusions, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        ious = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    present = np.isfinite(ious)
    total = np.where(present, ious, 0).sum(-1)
    count = present.sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def patch_ious(pred: np.ndarray, target: np.ndarray, grid: Grid, n_classes: int) -> np.ndarray:
    """(N, P) mean IoU of each patch of a prediction."""
    return confusion_iou(patch_confusions(pred, target, grid, n_classes))


@dataclass
class PatchTable:
    """What every model scores on every patch of a set of images.

    confusion: (N, P, K, C, C) counts of model k on patch p of image n.
    iou: (N, P, K) the patch's mean IoU (the reward's accuracy term).
    entropy: (N, P, K) mean MC-dropout entropy of model k on the patch, NaN where not computed
        (the IDK cascade's decision statistic).
    nll: (N, P, K) mean negative log-likelihood of the labels (the cascade's Eq. 5 loss), or None.
    """

    confusion: np.ndarray
    entropy: np.ndarray | None = None
    nll: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.confusion = np.asarray(self.confusion, dtype=np.int64)
        if self.confusion.ndim != 5:
            raise ShapeError(f"patch confusions must be (N, P, K, C, C), got {self.confusion.shape}")
        self.iou = confusion_iou(self.confusion)

    @property
    def n_models(self) -> int:
        return self.confusion.shape[2]

    def pooled_confusion(self, actions: np.ndarray) -> np.ndarray:
        """(C, C) confusion of the segmentation stitched from `actions` (N, P) model indices."""
        a = np.asarray(actions, dtype=np.int64)
        chosen = np.take_along_axis(self.confusion, a[:, :, None, None, None], axis=2)
        return chosen.sum((0, 1, 2))

    def miou(self, actions: np.ndarray) -> float:
        """Mean IoU over classes (confusion pooled over all pixels) of a routing map."""
        return float(np.nanmean(iou_from_confusion(self.pooled_confusion(actions))))


def rewards(
    actions: torch.Tensor, ious: torch.Tensor, costs: torch.Tensor, lam: float
) -> torch.Tensor:
    """Per-patch terms of Eq. 2: (1 - lam) (IoU(f_a) - IoU(f0)) - lam C(f_a), shape (N, P).

    actions (N, P) model indices, ious (N, P, K) patch IoUs, costs (K,) Eq. 3 shares. The
    image reward R is the sum over patches. NaN IoUs (empty patches) count as no gain.
    """
    table = action_rewards(torch.as_tensor(ious, dtype=torch.float32), costs, lam)
    return table.gather(-1, torch.as_tensor(actions, dtype=torch.long)[..., None])[..., 0]


def action_rewards(ious: torch.Tensor | np.ndarray, costs: torch.Tensor | np.ndarray, lam: float) -> torch.Tensor:
    """(..., K) reward term of every action on every patch: what `rewards` picks from, given the labels."""
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"lambda must lie in [0, 1], got {lam}")
    ious = torch.nan_to_num(torch.as_tensor(ious))
    costs = torch.as_tensor(costs, dtype=ious.dtype)
    return (1.0 - lam) * (ious - ious[..., :1]) - lam * costs


def image_rewards(actions: torch.Tensor, ious: torch.Tensor, costs: torch.Tensor, lam: float) -> torch.Tensor:
    """R of Eq. 2 for each image, shape (N,)."""
    return rewards(actions, ious, costs, lam).sum(-1)


def best_actions(ious: np.ndarray | torch.Tensor, costs: np.ndarray | torch.Tensor, lam: float) -> torch.Tensor:
    """(N, P) action with the highest reward per patch: the oracle router.

    The reward is a sum of per-patch terms, so the per-patch argmax maximises R; ties go to
    the cheaper (lower-index) model.
    """
    return action_rewards(torch.as_tensor(np.asarray(ious), dtype=torch.float64), np.asarray(costs), lam).argmax(-1)


def best_at_share(ious: np.ndarray | torch.Tensor, share: float, model: int = -1) -> np.ndarray:
    """(N, P) actions of the oracle at a fixed compute: `model` on the `share` of all patches where it gains
    most over f0 (largest IoU gain first, at most where it gains), f0 elsewhere. The bound a ranked router
    sending that share up can reach: how much its ranking, not the share, leaves on the table."""
    iou = np.asarray(ious, np.float64)
    if iou.ndim != 3:
        raise ShapeError(f"ious must be (N, P, K), got {iou.shape}")
    k = model % iou.shape[-1]
    gain = (iou[..., k] - iou[..., 0]).ravel()
    take = np.argsort(-gain, kind="stable")[: int(round(float(share) * gain.size))]
    take = take[gain[take] > 0]
    actions = np.zeros(gain.size, np.int64)
    actions[take] = k
    return actions.reshape(iou.shape[:2])


def total_variation(p: torch.Tensor | np.ndarray, q: torch.Tensor | np.ndarray) -> float:
    """Mean over patches of 0.5 * sum_k |p_k - q_k|: 0 for equal policies, 1 for disjoint ones.

    p and q are (..., K) categorical distributions over the models. The TVD threshold of
    appendix B3 is in these units (0.05 = 5%).
    """
    p = torch.as_tensor(np.asarray(p) if not isinstance(p, torch.Tensor) else p, dtype=torch.float64)
    q = torch.as_tensor(np.asarray(q) if not isinstance(q, torch.Tensor) else q, dtype=torch.float64)
    if p.shape != q.shape:
        raise ShapeError(f"policies differ in shape: {tuple(p.shape)} vs {tuple(q.shape)}")
    return float(0.5 * (p - q).abs().sum(-1).mean())
