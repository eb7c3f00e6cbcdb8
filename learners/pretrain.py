"""Stage 1 of the PaSeR algorithm (Algorithm 1, lines 1-16): pretrain the segmentation models.

The larger models f1..fm learn on the patches of a grid (each sees one patch alone); the
small model f0 learns on whole images with cross entropy plus the knowledge-distillation
loss of Eq. 1 towards the largest model's logits (computed patch-wise, as fm sees data, and
stitched). Models are trained in that order because f0 needs a trained fm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from learners.errors import ConfigError
from learners.inference import predict_logits
from learners.grid import GRID
from learners.training import TrainConfig, TrainResult, train
from learners.unet import UNet, UNetConfig


@dataclass
class PretrainResult:
    models: list[UNet]  # f0, f1, ..., fm
    results: list[TrainResult]


def pretrain_segmenters(
    configs: Sequence[UNetConfig],
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    train_configs: Sequence[TrainConfig],
    grid: tuple[int, int] = GRID,
    kd_beta: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    names: Sequence[str] | None = None,
    on_model_done: Callable[[int, UNet, TrainResult], None] | None = None,
    init: Sequence[UNet | None] | None = None,
) -> PretrainResult:
    """Train f1..fm patch-wise, then f0 on whole images distilled from fm; return all in order f0..fm.

    `init[i]`, when given, is a model of the same config whose weights model i starts from (to
    train longer than a first run did); it is not changed.
    """
    if len(configs) < 2 or len(train_configs) != len(configs):
        raise ConfigError("need at least two model configs (f0 and one larger) and one TrainConfig each")
    init = list(init or [None] * len(configs))
    if len(init) != len(configs) or any(m is not None and m.config != c for m, c in zip(init, configs)):
        raise ConfigError("init must hold one model (or None) per config, each built from that config")
    names = list(names or [f"f{i}" for i in range(len(configs))])
    models: list[UNet | None] = [None] * len(configs)
    results: list[TrainResult | None] = [None] * len(configs)
    for i in range(len(configs) - 1, 0, -1):  # largest first: f0 distils from it
        models[i], results[i] = _fit(configs[i], i, train_images, train_labels, val_images, val_labels,
                                     train_configs[i], grid, None, seed, progress, names[i], init[i])
        if on_model_done:
            on_model_done(i, models[i], results[i])
    teacher = predict_logits(models[-1], train_images, grid) if kd_beta > 0 else None
    cfg0 = replace(train_configs[0], kd_beta=kd_beta)
    models[0], results[0] = _fit(configs[0], 0, train_images, train_labels, val_images, val_labels,
                                 cfg0, None, teacher, seed, progress, names[0], init[0])
    if on_model_done:
        on_model_done(0, models[0], results[0])
    return PretrainResult(models, results)


def _fit(config, index, x, y, vx, vy, tcfg, grid, teacher, seed, progress, name, start=None):
    torch.manual_seed(seed + index)
    model = UNet(config)
    if start is not None:
        model.load_state_dict(start.state_dict())
    result = train(model, x, y, vx, vy, tcfg, grid=grid, teacher_logits=teacher, progress=progress, desc=f"{name}")
    return model, result
