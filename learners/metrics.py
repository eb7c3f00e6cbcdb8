"""Segmentation metrics: confusion matrix, per-class and mean IoU, IoU per GigaFLOP."""

from __future__ import annotations

import numpy as np

from learners.errors import ConfigError, ShapeError


def confusion_matrix(pred: np.ndarray, target: np.ndarray, n_classes: int, valid: np.ndarray | None = None) -> np.ndarray:
    """(C, C) counts, rows = ground truth, columns = prediction; pixels outside `valid` ignored."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    if pred.shape != target.shape:
        raise ShapeError(f"prediction and target differ in size: {pred.size} vs {target.size}")
    keep = (target >= 0) & (target < n_classes)
    if valid is not None:
        keep &= np.asarray(valid).ravel().astype(bool)
    idx = target[keep] * n_classes + np.clip(pred[keep], 0, n_classes - 1)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN for a class absent from both prediction and target."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def iou_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-class IoU of a prediction against a target of class indices."""
    return iou_from_confusion(confusion_matrix(pred, target, n_classes, valid))


def mean_iou(pred: np.ndarray, target: np.ndarray, n_classes: int, valid: np.ndarray | None = None) -> float:
    """Mean IoU over the classes present in prediction or target."""
    ious = iou_per_class(pred, target, n_classes, valid)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def iou_per_gflop(iou: float, gflops: float) -> float:
    """The PaSeR paper's efficiency metric (IoU per GigaFLOP spent per image)."""
    if gflops <= 0:
        raise ConfigError("GFLOPs must be positive")
    return iou / gflops
