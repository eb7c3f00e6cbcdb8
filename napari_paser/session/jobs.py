"""The long jobs of a session, as generators a napari `thread_worker` can drive: progress
events, the training set of the accepted regions, and background retraining.

Retraining works on copies of the models and commits only when every role finished, so
a cancel (a `should_stop` flag checked between optimiser steps, or closing the generator,
which `worker.quit()` does) keeps the last good weights. One step of a small model on a
batch of 64x64 regions takes well under a second, so a cancel is honoured within a second.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from learners.lr_agent import LRAgent
from learners.training import IGNORE_INDEX, EpochReport, StepReport, TrainConfig, TrainResult, iter_training
from learners.unet import UNet
from napari_paser.data.dataset import normalise
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.session.store import CurvePoint, State, load_crop, now_iso

RETRAIN_CONFIG = TrainConfig(epochs=20, batch_size=8, lr=1e-3, patience=5)
"""Default retraining: short, as it runs after every accepted batch."""


@dataclass
class Progress:
    """One progress event of a long job, for a progress bar: `done` of `total` units in `stage`
    ("maps", "train", "save", "propose", "done", "cancelled")."""

    stage: str
    done: int
    total: int
    message: str = ""
    z: int | None = None
    event: StepReport | EpochReport | None = None


@dataclass
class RetrainResult:
    cancelled: bool
    results: dict[str, TrainResult] = field(default_factory=dict)
    curve_point: CurvePoint | None = None


def training_data(session) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, val images, val labels) of the accepted regions.

    Images are normalised crops; labels are class indices with IGNORE_INDEX (255) where
    unpainted. Border regions smaller than the region size are padded (edge values,
    IGNORE_INDEX labels) so every crop has the region size and they stack into one batch.
    """
    parts = {"train": ([], []), "val": ([], [])}
    lo, hi, (sh, sw) = session.state.image["lo"], session.state.image["hi"], session.pool.size
    for rec in session.state.accepted:
        region = session.pool.region(rec.region_id)
        img = normalise(session.raw_crop(region), lo, hi)
        classes, mask = layer_to_classes(load_crop(session.folder, rec.region_id, rec.seq), n_classes=session.n_classes)
        lab = np.where(mask, classes, IGNORE_INDEX).astype(np.uint8)
        pad = ((0, sh - region.h), (0, sw - region.w))
        parts[rec.split][0].append(np.pad(img, pad, mode="edge"))
        parts[rec.split][1].append(np.pad(lab, pad, constant_values=IGNORE_INDEX))
    out = []
    for split in ("train", "val"):
        x, y = parts[split]
        out.append(np.stack(x) if x else np.zeros((0, sh, sw), np.float32))
        out.append(np.stack(y) if y else np.zeros((0, sh, sw), np.uint8))
    return tuple(out)


def retrain_steps(session, cfg: TrainConfig, roles: list[str], data, should_stop: Callable[[], bool] | None,
                  refresh: bool, samples: int) -> Generator[Progress, None, RetrainResult]:
    """Train each role on a copy, commit all at once, then refresh maps and proposals."""
    x, y, vx, vy = data
    per_epoch = math.ceil(len(x) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        per_epoch = min(per_epoch, cfg.max_steps_per_epoch)
    total, done = per_epoch * cfg.epochs * len(roles), 0
    trained, results = {}, {}
    for role in roles:
        model = copy.deepcopy(session.models[role])
        agent = None
        if cfg.scheduler == "agent" and role in session.state.lr_agents:
            agent = LRAgent.from_dict(session.state.lr_agents[role], seed=cfg.seed)
        gen = iter_training(model, x, y, vx if len(vx) else None, vy if len(vy) else None, cfg,
                            should_stop=should_stop, lr_agent=agent)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            done += isinstance(event, StepReport)
            yield Progress("train", done, total, f"{role}: epoch {event.epoch + 1}/{cfg.epochs}", event=event)
        if result.cancelled:
            yield Progress("cancelled", done, total, "training cancelled; the previous weights are kept")
            return RetrainResult(True, results)
        trained[role], results[role] = model, result
    point = _commit_trained(session, trained, results, len(x), len(vx))
    yield Progress("save", total, total, f"saved model version {point.model_version}")
    if refresh:
        yield from _refresh(session, samples, should_stop)
    yield Progress("done", total, total, "retrained")
    return RetrainResult(False, results, point)


def _commit_trained(session, trained: dict[str, UNet], results: dict[str, TrainResult], n_train: int,
                    n_val: int) -> CurvePoint:
    """New weights, a learning-curve point (f0's held-out mIoU) and the LR agents' Q-tables, in one commit."""
    main = results.get("f0", next(iter(results.values())))
    miou = main.best_val_miou if n_val and not math.isnan(main.best_val_miou) else None
    point = CurvePoint(n_train + n_val, n_train, n_val, miou, session.state.model_version + 1, len(main.history),
                       now_iso())

    def more(s: State) -> None:
        s.curve.append(point)
        for role, res in results.items():
            if res.lr_agent is not None:
                s.lr_agents[role] = res.lr_agent

    session._install(trained, source="retrain", mutate_more=more)
    return point


def _refresh(session, samples: int, should_stop) -> Generator[Progress, None, None]:
    """After new weights: recompute the stale maps (slice order: `Session.refresh_order`), repeat the last proposal."""
    yield from session.refresh(samples=samples, should_stop=should_stop)
