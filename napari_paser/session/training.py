"""A session's training, as generators a napari `thread_worker` can drive (their progress events:
`session.progress`): the training set of the labels, and background retraining.

Training labels are every painted pixel of the canvas (partial regions, strokes in any slice,
inside or outside proposals: no confirmation needed), with accepted train regions read from
their accepted crops. Accepted regions marked "val" (every `val_every`-th accept) are held
out: their pixels never train, and they are the validation set. Scribbles therefore only
train; the held-out set grows with accepted regions.

Retraining runs a fixed number of optimiser steps on class-balanced, augmented random crops
(`RETRAIN_CONFIG`; no early stop judged on a few regions), on copies of the models; weights that
an earlier retrain produced train at half the rate (`WARM_LR_FACTOR`). Then the
new and the current weights are both scored on the held-out regions: a role whose mIoU drops
by more than the held-out set's noise (`session.guard`: a paired bootstrap over the regions)
keeps its current weights and the result says so ("kept previous weights: val mIoU X < Y").
A cancel (a `should_stop` flag checked between optimiser steps, or closing the generator,
which `worker.quit()` does) keeps the last good weights. One step of f0 on a batch of 64x64
crops takes well under a second, so a cancel is honoured within a second.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from scipy.ndimage import uniform_filter

from learners.lr_agent import LRAgent
from learners.training import (
    IGNORE_INDEX, TrainConfig, TrainResult, iter_training, steps_per_epoch,
)
from learners.uncertainty import uncertainty_maps
from learners.unet import UNet
from torch import nn
from napari_paser.data.dataset import normalise
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.errors import PaserInputError
from napari_paser.session.guard import Verdict, judge, region_confusions
from napari_paser.session.progress import Progress, step_progress  # noqa: F401 (re-exported: the jobs' progress)
from napari_paser.session.store import CurvePoint, State, Store, load_crop, now_iso

RETRAIN_CONFIG = TrainConfig(epochs=4, steps_per_epoch=75, batch_size=8, lr=1e-3, crop=64, balanced=True,
                             class_weighted=False, jitter=0.1, early_stop=False, keep=0.3)
"""Default retraining: 300 steps on class-balanced, augmented 64x64 crops (about 20 s for f0 on one
core), however few labels there are; unlabeled pixels of the crops keep the current model's
predictions (keep=0.3: a single small region then costs the starting model less than keeping
everything or nothing), so one region without some phase does not erase it; no early stop, the keep-or-replace decision
comes after."""
WARM_LR_FACTOR = 0.5
"""A retrain of weights this session retrained before (source "retrain") runs at this share of the lr:
they already fit most of the labels, and a fresh Adam at the first retrain's rate knocks them off their
minimum (the AL simulation's warm lr; SOC cold start, lowres-varying, 12k
pixels: test mIoU 0.824 at 1e-3, 0.837 at 5e-4)."""
PIECE_SIDE = 128
"""Training pieces grow to at least this side around their labels: context, and unlabeled pixels to keep."""


class Trainee(Protocol):
    """What a retrain works on (`session.models.ModelSet`): the session's store, its models by role, installing
    new weights as a model version, and what runs after new weights (`retrained`: the maps' refresh)."""

    store: Store
    models: dict[str, UNet]

    def install_models(self, models: dict[str, nn.Module], source: str,
                       mutate_more: Callable[[State], None] | None = None, drop: Sequence[str] = ()) -> None: ...

    def retrained(self, samples: int, should_stop: Callable[[], bool] | None) -> Generator[Progress, None, None]: ...


@dataclass
class RetrainResult:
    cancelled: bool
    results: dict[str, TrainResult] = field(default_factory=dict)
    curve_point: CurvePoint | None = None
    kept_previous: list[str] = field(default_factory=list)  # roles whose new weights scored worse, not installed
    message: str = ""  # what happened, for a notification, e.g. "kept previous weights: val mIoU 0.61 < 0.74"


@dataclass
class TrainingData:
    """The labels a retrain learns from: train pieces of any size and the held-out regions.

    images/labels: normalised float32 crops and uint8 class indices (IGNORE_INDEX where not
    painted or held out), one per slice holding training labels: the bounding box of its
    labeled pixels, grown to at least `min_side` for context. val_*: the accepted "val"
    regions, padded to the region size.
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    val_images: np.ndarray
    val_labels: np.ndarray
    n_train_regions: int
    n_val_regions: int

    @property
    def n_train_pixels(self) -> int:
        return int(sum((lab != IGNORE_INDEX).sum() for lab in self.labels))

    @property
    def n_val_pixels(self) -> int:
        return int((self.val_labels != IGNORE_INDEX).sum())


def training_data(store: Store, min_side: int = PIECE_SIDE, hold_out: Collection[int] = ()) -> TrainingData:
    """Training pieces from every painted pixel outside held-out regions, and the held-out regions.

    `hold_out`: accepted regions whose pixels are left out of training as well (cross-fitting: models
    trained without them score them), without joining the validation set."""
    lo, hi = store.state.image["lo"], store.state.image["hi"]
    accepted = {"train": [], "val": [], "out": []}
    for rec in store.state.accepted:
        split = rec.split if rec.split in ("train", "val") else "train"
        accepted["out" if rec.region_id in hold_out else split].append(rec)
    images, labels = [], []
    for z in range(store.n_slices):
        lab = _slice_labels(store, z, accepted)
        if lab is None:
            continue
        ys, xs = _bbox(lab != IGNORE_INDEX, min_side)
        images.append(normalise(np.asarray(store.image[store.index(z, ys, xs)]), lo, hi))
        labels.append(lab[ys, xs])
    vx, vy = _region_crops(store, accepted["val"], lo, hi)
    return TrainingData(images, labels, vx, vy, len(accepted["train"]), len(accepted["val"]))


def check_focus(focus: float) -> None:
    """One line for a negative `focus` (`uncertainty_focus`), before any work starts."""
    if focus < 0:
        raise PaserInputError(f"focus must be >= 0 (0: crops anywhere on the labels), got {focus}")


def uncertainty_focus(trainee: Trainee, images: Sequence[np.ndarray], focus: float, samples: int) -> list[np.ndarray]:
    """Crop-centre weights that train a routed larger model where it will be used: f0's MC entropy averaged
    over a region-sized window around each pixel (the ranked router sends a patch up by f0's entropy on it),
    to the power `focus` (0: uniform; higher: more of the steps on the most uncertain patches)."""
    f0 = trainee.models["f0"]
    out = []
    for im in images:
        entropy = uncertainty_maps(f0, np.asarray(im, np.float32), samples=max(samples, 1), seed=0).entropy
        out.append(np.clip(uniform_filter(entropy.astype(np.float64), size=trainee.store.pool.size, mode="reflect"), 0, None)
                   ** focus)
    return out


def _slice_labels(store: Store, z: int, accepted: dict[str, list]) -> np.ndarray | None:
    """Class indices of slice z's training labels (None when it has none): the canvas, accepted
    train crops over it, held-out regions blanked."""
    canvas = np.asarray(store.labels[store.index(z)])
    train = [r for r in accepted["train"] if r.z == z]
    val = [r for r in accepted["val"] + accepted.get("out", []) if r.z == z]
    if not canvas.any() and not train:
        return None
    classes, mask = layer_to_classes(canvas, n_classes=store.n_classes)
    lab = np.where(mask, classes, IGNORE_INDEX).astype(np.uint8)
    for rec in train:
        c, m = layer_to_classes(load_crop(store.folder, rec.region_id, rec.seq), n_classes=store.n_classes)
        lab[rec.y0:rec.y0 + rec.h, rec.x0:rec.x0 + rec.w] = np.where(m, c, IGNORE_INDEX)
    for rec in val:
        lab[rec.y0:rec.y0 + rec.h, rec.x0:rec.x0 + rec.w] = IGNORE_INDEX
    return lab if (lab != IGNORE_INDEX).any() else None


def _bbox(mask: np.ndarray, min_side: int) -> tuple[slice, slice]:
    """The bounding box of `mask`, grown around its centre to at least min_side (within the slice)."""
    out = []
    for axis in (0, 1):
        idx = np.nonzero(mask.any(axis=1 - axis))[0]
        lo, hi, size = int(idx[0]), int(idx[-1]) + 1, mask.shape[axis]
        grow = max(0, min(min_side, size) - (hi - lo))
        lo = max(0, min(lo - grow // 2, size - max(hi - lo, min(min_side, size))))
        out.append(slice(lo, max(hi, lo + min(min_side, size))))
    return out[0], out[1]


def _region_crops(store: Store, records, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image crops and class labels of accepted regions, padded to the region size."""
    sh, sw = store.pool.size
    xs, ys = [], []
    for rec in records:
        region = store.pool.region(rec.region_id)
        classes, mask = layer_to_classes(load_crop(store.folder, rec.region_id, rec.seq), n_classes=store.n_classes)
        pad = ((0, sh - region.h), (0, sw - region.w))
        xs.append(np.pad(normalise(store.raw_crop(region), lo, hi), pad, mode="edge"))
        ys.append(np.pad(np.where(mask, classes, IGNORE_INDEX).astype(np.uint8), pad, constant_values=IGNORE_INDEX))
    if not xs:
        return np.zeros((0, sh, sw), np.float32), np.zeros((0, sh, sw), np.uint8)
    return np.stack(xs).astype(np.float32), np.stack(ys)


def retrain_steps(trainee: Trainee, cfg: TrainConfig, roles: list[str], data: TrainingData,
                  should_stop: Callable[[], bool] | None, refresh: bool, samples: int,
                  keep_if_worse: bool = True, focus: float = 0.0) -> Generator[Progress, None, RetrainResult]:
    """Train each role on a copy, keep or replace each by its held-out score, commit, refresh."""
    if cfg.crop is None:  # an epoch-style config: crops of the region size, one pass over the pieces
        cfg = replace(cfg, crop=max(trainee.store.pool.size))
    centre_weights = uncertainty_focus(trainee, data.images, focus, samples) if focus > 0 else None
    has_val = len(data.val_images) > 0
    vx, vy = (data.val_images, data.val_labels) if has_val else (None, None)
    total = steps_per_epoch(len(data.images), cfg) * cfg.epochs * len(roles)
    done, trained, results = 0, {}, {}
    for role in roles:
        model = copy.deepcopy(trainee.models[role])
        agent = None
        state = trainee.store.state
        if cfg.scheduler == "agent" and role in state.lr_agents:
            agent = LRAgent.from_dict(state.lr_agents[role], seed=cfg.seed)
        gen = iter_training(model, data.images, data.labels, vx, vy, role_config(trainee.store, cfg, role),
                            should_stop=should_stop, lr_agent=agent, centre_weights=centre_weights)
        result, done = yield from step_progress(gen, "train", done, total,
                                                lambda e, role=role: f"{role}: epoch {e.epoch + 1}/{cfg.epochs}")
        if result.cancelled:
            yield Progress("cancelled", done, total, "training cancelled; the previous weights are kept")
            return RetrainResult(True, results, message="training cancelled; the previous weights are kept")
        trained[role], results[role] = model, result
    verdict = _judge(trainee.models, trained, data) if has_val else {}
    kept = [r for r, v in verdict.items() if keep_if_worse and v.worse]
    point = _commit_trained(trainee, {r: m for r, m in trained.items() if r not in kept}, results, data, verdict, kept)
    message = _message(verdict, kept, point)
    yield Progress("kept" if kept else "save", total, total, message)
    if refresh and len(kept) < len(trained):
        yield from trainee.retrained(samples, should_stop)
    yield Progress("done", total, total, message)
    return RetrainResult(False, results, point, kept, message)


def role_config(store: Store, cfg: TrainConfig, role: str) -> TrainConfig:
    """`cfg`, at WARM_LR_FACTOR of its lr when `role`'s weights come from an earlier retrain of this session."""
    if store.state.models.get(role, {}).get("source") == "retrain":
        return replace(cfg, lr=cfg.lr * WARM_LR_FACTOR)
    return cfg


def _judge(current: dict[str, UNet], trained: dict[str, UNet], data: TrainingData) -> dict[str, Verdict]:
    """Per role: the new weights against the current ones on the held-out regions (`session.guard`)."""
    vx, vy = data.val_images, data.val_labels
    return {role: judge(region_confusions(model, vx, vy), region_confusions(current[role], vx, vy))
            for role, model in trained.items()}


def _message(verdict: dict[str, Verdict], kept: list[str], point: CurvePoint) -> str:
    """One line for a notification: what the retrain did to the weights, and why."""
    if kept:
        scores = {r: f"val mIoU {verdict[r].new_miou:.3f} < {verdict[r].old_miou:.3f} "
                     f"(lower on {verdict[r].p_worse:.0%} of resamples of {verdict[r].n_regions} held-out regions)"
                  for r in kept}
        if kept == ["f0"]:
            return f"kept previous weights: {scores['f0']}"
        return "kept previous weights of " + "; ".join(f"{r} ({v})" for r, v in scores.items())
    if point.val_miou is None:
        return f"retrained on {point.n_train_pixels} labeled pixels (no held-out regions yet: accept more regions)"
    main = verdict.get("f0") or next(iter(verdict.values()))
    if main.new_miou < main.old_miou:
        return (f"retrained: val mIoU {point.val_miou:.3f} on {point.n_val} held-out regions (previous "
                f"{main.old_miou:.3f}: a drop within the held-out noise)")
    return f"retrained: val mIoU {point.val_miou:.3f} on {point.n_val} held-out regions"


def _commit_trained(trainee: Trainee, trained: dict[str, UNet], results: dict[str, TrainResult], data: TrainingData,
                    verdict: dict, kept: list[str]) -> CurvePoint:
    """The weights that won, a learning-curve point (f0's held-out scores) and the LR agents' Q-tables."""
    main = "f0" if "f0" in results else next(iter(results))
    n_val, names = data.n_val_regions, trainee.store.classes.names
    ious = None
    if main in verdict:
        ious = verdict[main].old_iou if main in kept else verdict[main].new_iou
    miou = float(np.nanmean(ious)) if ious is not None and np.isfinite(ious).any() else None
    class_iou = None if ious is None else {n: float(v) for n, v in zip(names, ious) if np.isfinite(v)}
    version = trainee.store.state.model_version + (1 if trained else 0)
    point = CurvePoint(data.n_train_regions + n_val, data.n_train_regions, n_val, miou, version,
                       len(results[main].history), now_iso(), class_iou=class_iou, kept_previous=main in kept,
                       n_train_pixels=data.n_train_pixels)

    def more(s: State) -> None:
        s.curve.append(point)
        for role, res in results.items():
            if res.lr_agent is not None and role in trained:
                s.lr_agents[role] = res.lr_agent

    if trained:
        trainee.install_models(trained, source="retrain", mutate_more=more)
    else:
        trainee.store.commit(more)
    return point

