"""Compute cost: FLOPs counted by running the real forward pass, and the paper's cost share.

`torch.utils.flop_counter.FlopCounterMode` counts the multiply-adds of convolutions and
matrix products (2 FLOPs each) as they execute, so the numbers follow the actual
architecture and input size; nothing is estimated from parameter counts. BatchNorm, ReLU,
pooling and interpolation are not counted (they are a small fraction of a UNet's work).
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from learners.errors import ConfigError
from learners.grid import GRID, Grid
from learners.modes import eval_mode


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of `model` on a zero tensor of `input_shape` (N, C, H, W).

    A model rebuilt from its `config` (same class, same number of weights) runs the pass on torch's "meta" device (shapes only: the same
    operations counted, no memory, no arithmetic; a 2048^2 pass of a large UNet took half a minute and
    gigabytes on the CPU); any other model, or one with an op lacking a meta kernel, runs it for real."""
    weight = next(model.parameters(), None)  # a rule without weights (a ranked policy) reads float32
    dtype = torch.float32 if weight is None else weight.dtype
    config = getattr(model, "config", None)
    if config is not None:
        try:
            with torch.device("meta"):
                shadow = type(model)(config)
                x = torch.zeros(tuple(input_shape), dtype=dtype)
            if _n_weights(shadow) == _n_weights(model):  # the same architecture, not a wrapper's config
                with eval_mode(shadow), FlopCounterMode(display=False) as counter:
                    shadow(x)
                return int(counter.get_total_flops())
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            pass
    x = torch.zeros(tuple(input_shape), dtype=dtype)
    with eval_mode(model), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def _n_weights(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_CACHE: dict[tuple, int] = {}


def image_flops(model: nn.Module, height: int, width: int, in_channels: int = 1) -> int:
    """FLOPs for one image of H x W; cached per architecture config and size when the model has one."""
    config = getattr(model, "config", None)
    if config is None:
        return count_flops(model, (1, in_channels, height, width))
    key = (config, in_channels, height, width)
    if key not in _CACHE:
        _CACHE[key] = count_flops(model, (1, in_channels, height, width))
    return _CACHE[key]


def gflops_per_image(model: nn.Module, height: int, width: int, samples: int = 1) -> float:
    """GFLOPs of `samples` forward passes on an H x W image (samples > 1 for MC dropout)."""
    return samples * image_flops(model, height, width) / 1e9


def patch_flops(model: nn.Module, height: int, width: int, grid: tuple[int, int] = GRID) -> int:
    """FLOPs of one patch of an H x W image cut into a `grid` (padded border patches cost the same)."""
    g = Grid.divide(height, width, *grid)
    return image_flops(model, *g.cell)


def cost_shares(param_counts: Sequence[int]) -> np.ndarray:
    """C(f_i) of the PaSeR paper's Eq. 3: each model's share of all models' parameters.

    The paper's text defines the share over all models {f0..fm} with range (0, 1); its
    equation's sum starts at f1. We follow the text so that the shares sum to 1.
    """
    counts = np.asarray(param_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts <= 0).any():
        raise ConfigError("cost shares need a positive parameter count per model")
    return counts / counts.sum()
