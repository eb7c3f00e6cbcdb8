"""Supervised training of one segmentation model, as a generator of progress events.

`iter_training` yields a `StepReport` after every optimiser step and an `EpochReport` after
every validation, and returns a `TrainResult`; the CLI drives it with a tqdm bar (`train`),
the GUI from a napari `thread_worker`. It supports whole-image or patch-wise training (the
PaSeR paper trains f1..fm on a 4x4 patch grid), class-weighted cross entropy, knowledge
distillation towards a teacher's logits (the paper's Eq. 1), flips/rot90 augmentation,
fixed/step/cosine learning rates or the Q-learning agent (`learners.lr_agent`), early
stopping on validation mIoU with the best weights restored, and cancellation between steps
that keeps the last good weights.

With `keep` > 0 the model also matches the predictions its starting weights make on the
unlabeled pixels of each batch (soft cross entropy, "learning without forgetting"): a few
labels then correct the model where they are, instead of erasing what it knew elsewhere,
e.g. a phase absent from the first labeled region.

With `crop` set, training draws a fixed number of random crops per epoch from labeled images
of any size (`learners.augment.CropSampler`: class-balanced centres, partial labels), which
is how a session fine-tunes on a handful of regions and scribbles: a step count that does
not depend on how few crops there are, intensity jitter, and (early_stop=False) the last
weights rather than the best epoch picked on a tiny validation set.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from learners.augment import IGNORE_INDEX, CropSampler, augment_batch
from learners.errors import ConfigError
from learners.generators import drain
from learners.grid import Grid
from learners.inference import predict_classes
from learners.lr_agent import LRAgent, LRAgentConfig
from learners.metrics import confusion_matrix, iou_from_confusion

SCHEDULERS = ("fixed", "step", "cosine", "agent")
# IGNORE_INDEX (255, defined in learners.augment): pixels nobody labeled, ignored by the loss and validation.


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    min_delta: float = 1e-4
    class_weighted: bool = True
    kd_beta: float = 0.0
    augment: bool = True
    scheduler: str = "fixed"
    max_steps_per_epoch: int | None = None
    seed: int = 0
    crop: int | None = None  # train on random crops of this size from images of any size (CropSampler)
    steps_per_epoch: int | None = None  # with crop: optimiser steps per epoch (None: one pass over the pieces)
    balanced: bool = False  # with crop: crop centres drawn class-balanced
    jitter: float = 0.0  # intensity jitter strength (contrast, brightness, gamma) of the augmentation
    early_stop: bool = True  # False: run every epoch and keep the last weights (validation only reported)
    keep: float = 0.0  # weight of matching the starting weights' predictions on unlabeled pixels (no forgetting)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, {self.lr}")
        if (self.crop is not None and self.crop < 8) or (self.steps_per_epoch is not None and self.steps_per_epoch < 1):
            raise ConfigError("crop must be >= 8 pixels and steps_per_epoch >= 1")
        if self.jitter < 0 or self.keep < 0:
            raise ConfigError("jitter and keep must be >= 0")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")


@dataclass
class StepReport:
    epoch: int
    step: int
    steps_per_epoch: int
    loss: float


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    val_miou: float
    lr: float
    improved: bool


@dataclass
class TrainResult:
    history: list[EpochReport] = field(default_factory=list)
    best_epoch: int = -1
    best_val_miou: float = float("nan")
    stopped_early: bool = False
    cancelled: bool = False
    lr_agent: dict | None = None  # scheduler="agent": LRAgent.to_dict() (Q-table, epsilon, decisions), JSON-able


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Median-frequency balancing: weight_c = median(freq) / freq_c; absent classes get the largest weight."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=n_classes)[:n_classes].astype(np.float64)
    freq = counts / max(counts.sum(), 1)
    present = freq > 0
    w = np.ones(n_classes)
    w[present] = np.median(freq[present]) / freq[present]
    w[~present] = w[present].max() if present.any() else 1.0
    return torch.tensor(w, dtype=torch.float32)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(cfg.epochs // 3, 1), gamma=0.3)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def _lr_agent(cfg: TrainConfig, agent: LRAgent | None) -> LRAgent | None:
    """The Q-learning scheduler for scheduler="agent", starting this run at cfg.lr."""
    if cfg.scheduler != "agent":
        return None
    if agent is None:
        agent = LRAgent(LRAgentConfig(base_lr=cfg.lr, min_lr=min(1e-6, cfg.lr), max_lr=max(1e-2, cfg.lr)), seed=cfg.seed)
    agent.begin_run(cfg.lr)
    return agent


def _samples(images, labels, grid, teacher):
    """Training tensors (x, y, teacher logits or None), cut into patches when a grid is given."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))[:, None]
    t = None if teacher is None else torch.as_tensor(teacher, dtype=torch.float32)
    if grid is not None:
        g = Grid.divide(x.shape[-2], x.shape[-1], *grid)
        x, y = g.extract(x), g.extract(y)
        t = None if t is None else g.extract(t)
    return x, y[:, 0].round().long(), t


def evaluate_miou(model: nn.Module, images: np.ndarray, labels: np.ndarray, n_classes: int, grid=None) -> float:
    """Mean IoU over a set of images (confusion pooled over all pixels)."""
    pred = predict_classes(model, images, grid)
    ious = iou_from_confusion(confusion_matrix(pred, labels, n_classes))
    return float(np.nanmean(ious))


def iter_training(
    model: nn.Module,
    train_images: np.ndarray | Sequence[np.ndarray],
    train_labels: np.ndarray | Sequence[np.ndarray],
    val_images: np.ndarray | None,
    val_labels: np.ndarray | None,
    config: TrainConfig = TrainConfig(),
    grid: tuple[int, int] | None = None,
    teacher_logits: np.ndarray | torch.Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
    lr_agent: LRAgent | None = None,
    centre_weights: Sequence[np.ndarray] | None = None,
) -> Generator[StepReport | EpochReport, None, TrainResult]:
    """Train `model` in place; yields progress, returns the result (best weights restored,
    or the last ones with early_stop=False).

    With config.crop, train_images/train_labels may be sequences of 2D arrays of any sizes
    (partial labels: IGNORE_INDEX pixels are ignored). With scheduler="agent", `lr_agent`
    continues a saved agent (`LRAgent.from_dict`); else a fresh one starts at config.lr.
    `centre_weights` (crop mode): one array per training image, crop centres drawn in proportion
    (`CropSampler`).
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    n_classes = model.config.n_classes
    batches, steps = _batches(train_images, train_labels, config, grid, teacher_logits, n_classes, gen, centre_weights)
    weight = _class_weight(train_labels, n_classes) if config.class_weighted else None
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = _scheduler(opt, config)
    agent = _lr_agent(config, lr_agent)
    if agent is not None:  # a saved agent may clamp config.lr into its [min_lr, max_lr]
        for group in opt.param_groups:
            group["lr"] = agent.lr
    has_val = val_images is not None and len(val_images) > 0
    anchor = copy.deepcopy(model).eval() if config.keep > 0 else None  # the starting weights, frozen
    result, best_state, bad_epochs = TrainResult(), None, 0
    best_score = -math.inf
    for epoch in range(config.epochs):
        model.train()
        losses = []
        for step, batch in enumerate(batches(steps)):
            if should_stop is not None and should_stop():
                result.cancelled = True
                break
            if config.augment:
                batch = augment_batch(batch, gen, config.jitter)
            logits = model(batch[0])
            loss = F.cross_entropy(logits, batch[1], weight=weight, ignore_index=IGNORE_INDEX)
            if anchor is not None:
                loss = loss + config.keep * _keep_loss(anchor, batch[0], batch[1], logits)
            if len(batch) > 2 and config.kd_beta > 0:
                loss = loss + config.kd_beta * F.mse_loss(logits, batch[2])  # Eq. 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            yield StepReport(epoch, step, steps, losses[-1])
        if result.cancelled:
            break
        train_loss = float(np.mean(losses)) if losses else float("nan")
        score = evaluate_miou(model, val_images, val_labels, n_classes, grid) if has_val else -train_loss
        improved = score > best_score + config.min_delta
        if improved:
            best_score, best_state, bad_epochs = score, copy.deepcopy(model.state_dict()), 0
            result.best_epoch = epoch
        else:
            bad_epochs += 1
        report = EpochReport(epoch, train_loss, score if has_val else float("nan"), opt.param_groups[0]["lr"], improved)
        result.history.append(report)
        yield report
        if sched is not None:
            sched.step()
        if agent is not None:
            for group in opt.param_groups:
                group["lr"] = agent.step(score, train_loss)
        if config.early_stop and bad_epochs >= config.patience:
            result.stopped_early = True
            break
    if agent is not None:
        agent.finish()
        result.lr_agent = agent.to_dict()
    if not config.early_stop and result.history:  # the last weights; report their own validation score
        result.best_epoch = result.history[-1].epoch
        result.best_val_miou = result.history[-1].val_miou
    elif best_state is not None:
        model.load_state_dict(best_state)
        result.best_val_miou = best_score if has_val else float("nan")
    model.eval()
    return result


def _keep_loss(anchor: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Soft cross entropy towards the frozen starting model's predictions, on unlabeled pixels only."""
    free = y == IGNORE_INDEX
    if not free.any():
        return logits.new_zeros(())
    with torch.no_grad():
        target = anchor(x).softmax(1)
    per_pixel = -(target * logits.log_softmax(1)).sum(1)
    return per_pixel[free].mean()


def _class_weight(labels, n_classes: int) -> torch.Tensor:
    """class_weights over one stack or over pieces of any sizes."""
    if isinstance(labels, np.ndarray):
        return class_weights(labels, n_classes)
    return class_weights(np.concatenate([np.asarray(lab).ravel() for lab in labels]), n_classes)


def _batches(images, labels, config: TrainConfig, grid, teacher, n_classes: int, gen: torch.Generator,
             centre_weights=None):
    """(batches(steps) -> iterator of [x, y(, teacher)] tensors, steps per epoch) for either mode."""
    if config.crop is None and centre_weights is not None:
        raise ConfigError("centre weights steer crop training: set TrainConfig.crop")
    if config.crop is not None:
        if grid is not None or teacher is not None:
            raise ConfigError("crop training takes neither a patch grid nor teacher logits")
        sampler = CropSampler(list(images), list(labels), config.crop, n_classes, config.balanced, config.seed,
                              centre_weights)
        rng = np.random.default_rng(config.seed)
        steps = config.steps_per_epoch or math.ceil(len(images) / config.batch_size)

        def crops(n: int):
            for _ in range(n):
                x, y = sampler.sample(config.batch_size, rng)
                yield [torch.from_numpy(x)[:, None], torch.from_numpy(y).long()]

        return crops, steps
    x, y, t = _samples(images, labels, grid, teacher)
    steps = math.ceil(len(x) / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)

    def passes(n: int):
        order = torch.randperm(len(x), generator=gen)
        for step in range(n):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            yield [x[idx], y[idx]] + ([t[idx]] if t is not None else [])

    return passes, steps


def steps_per_epoch(n_images: int, config: TrainConfig, grid: tuple[int, int] | None = None) -> int:
    """Optimiser steps of one epoch of `iter_training` on n_images images (or pieces with crop)."""
    if config.crop is not None:
        return config.steps_per_epoch or math.ceil(n_images / config.batch_size)
    steps = math.ceil(n_images * (grid[0] * grid[1] if grid else 1) / config.batch_size)
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


def run_training(generator: Generator, total_steps: int | None = None, desc: str = "train", progress: bool = True):
    """Drive an `iter_training` generator with a tqdm bar; return its `TrainResult`."""
    def tick(event) -> None:
        if isinstance(event, StepReport):
            bar.update(1)
            bar.set_postfix(epoch=event.epoch + 1, loss=f"{event.loss:.3f}", refresh=False)
        elif not math.isnan(event.val_miou):
            bar.set_postfix(epoch=event.epoch + 1, val_mIoU=f"{event.val_miou:.3f}")

    with tqdm(total=total_steps, desc=desc, unit="step", disable=not progress, dynamic_ncols=True) as bar:
        return drain(generator, tick)


def train(model: nn.Module, train_images, train_labels, val_images=None, val_labels=None,
          config: TrainConfig = TrainConfig(), grid=None, teacher_logits=None, progress: bool = True,
          desc: str = "train", lr_agent: LRAgent | None = None) -> TrainResult:
    """`iter_training` run to the end with a progress bar."""
    steps = steps_per_epoch(len(train_images), config, grid)
    gen = iter_training(model, train_images, train_labels, val_images, val_labels, config, grid, teacher_logits,
                        lr_agent=lr_agent)
    return run_training(gen, steps * config.epochs, desc, progress)
