"""Supervised training of one segmentation model, as a generator of progress events.

`iter_training` yields a `StepReport` after every optimiser step and an `EpochReport` after
every validation, and returns a `TrainResult`; the CLI drives it with a tqdm bar (`train`),
the GUI from a napari `thread_worker`. It supports whole-image or patch-wise training (the
PaSeR paper trains f1..fm on a 4x4 patch grid), class-weighted cross entropy, knowledge
distillation towards a teacher's logits (the paper's Eq. 1), flips/rot90 augmentation,
fixed/step/cosine learning rates or the Q-learning agent (`learners.lr_agent`), early
stopping on validation mIoU with the best weights restored, and cancellation between steps
that keeps the last good weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from learners.errors import ConfigError
from learners.generators import drain
from learners.grid import Grid
from learners.inference import predict_classes
from learners.lr_agent import LRAgent, LRAgentConfig
from learners.metrics import confusion_matrix, iou_from_confusion

SCHEDULERS = ("fixed", "step", "cosine", "agent")
IGNORE_INDEX = 255
"""Class-index value of pixels nobody labeled in training masks and exports: the loss and validation
ignore it (partial labels). napari layers mark them 0 instead (`labels_convention.LAYER_UNLABELED`)."""


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

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, {self.lr}")
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


def _augment(tensors: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """The same random flips (and rot90 for square inputs) applied to every tensor of a batch."""
    r = torch.rand(3, generator=gen)
    if r[0] < 0.5:
        tensors = [t.flip(-1) for t in tensors]
    if r[1] < 0.5:
        tensors = [t.flip(-2) for t in tensors]
    if r[2] < 0.5 and tensors[0].shape[-1] == tensors[0].shape[-2]:
        tensors = [t.rot90(1, (-2, -1)) for t in tensors]
    return [t.contiguous() for t in tensors]


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
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray | None,
    val_labels: np.ndarray | None,
    config: TrainConfig = TrainConfig(),
    grid: tuple[int, int] | None = None,
    teacher_logits: np.ndarray | torch.Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
    lr_agent: LRAgent | None = None,
) -> Generator[StepReport | EpochReport, None, TrainResult]:
    """Train `model` in place; yields progress, returns the result (best weights restored).

    With scheduler="agent", `lr_agent` continues a saved agent (`LRAgent.from_dict`); else a
    fresh one starts at config.lr.
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    n_classes = model.config.n_classes
    x, y, t = _samples(train_images, train_labels, grid, teacher_logits)
    weight = class_weights(train_labels, n_classes) if config.class_weighted else None
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = _scheduler(opt, config)
    agent = _lr_agent(config, lr_agent)
    if agent is not None:  # a saved agent may clamp config.lr into its [min_lr, max_lr]
        for group in opt.param_groups:
            group["lr"] = agent.lr
    steps = math.ceil(len(x) / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    has_val = val_images is not None and len(val_images) > 0
    result, best_state, bad_epochs = TrainResult(), None, 0
    best_score = -math.inf
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        losses = []
        for step in range(steps):
            if should_stop is not None and should_stop():
                result.cancelled = True
                break
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = [x[idx], y[idx]] + ([t[idx]] if t is not None else [])
            if config.augment:
                batch = _augment(batch, gen)
            logits = model(batch[0])
            loss = F.cross_entropy(logits, batch[1], weight=weight, ignore_index=IGNORE_INDEX)
            if t is not None and config.kd_beta > 0:
                loss = loss + config.kd_beta * F.mse_loss(logits, batch[2])  # Eq. 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            yield StepReport(epoch, step, steps, losses[-1])
        if result.cancelled:
            break
        train_loss = float(np.mean(losses))
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
        if bad_epochs >= config.patience:
            result.stopped_early = True
            break
    if agent is not None:
        agent.finish()
        result.lr_agent = agent.to_dict()
    if best_state is not None:
        model.load_state_dict(best_state)
        result.best_val_miou = best_score if has_val else float("nan")
    model.eval()
    return result


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
    n = len(train_images) * (grid[0] * grid[1] if grid else 1)
    steps = math.ceil(n / config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    gen = iter_training(model, train_images, train_labels, val_images, val_labels, config, grid, teacher_logits,
                        lr_agent=lr_agent)
    return run_training(gen, steps * config.epochs, desc, progress)
