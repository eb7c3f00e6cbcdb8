"""MC-dropout uncertainty: T stochastic passes, predictive entropy and BALD per pixel.

Dropout stays active while BatchNorm uses its running statistics (eval mode), so the
samples differ only by the dropout masks (Gal & Ghahramani 2016). The T samples run as one
batch where memory allows. Large images are processed in tiles with a halo of context so the
maps equal the whole-image maps away from tile seams up to the receptive field.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learners.errors import ConfigError, ShapeError
from learners.grid import Grid

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode with dropout layers active; restore every module's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, _DROPOUT):
            m.train()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _like(result: torch.Tensor, template: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    return result if isinstance(template, torch.Tensor) else result.numpy()


def entropy(probs: np.ndarray | torch.Tensor, dim: int = -3) -> np.ndarray | torch.Tensor:
    """Shannon entropy in nats along the class axis (0 log 0 = 0)."""
    p = _as_tensor(probs).double()
    h = -torch.special.xlogy(p, p).sum(dim)
    return _like(h.to(_as_tensor(probs).dtype), probs)


def predictive_entropy(mc_probs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """H[mean_t p_t] for samples on axis 0 and classes on axis -3 ((T, C, H, W) or (T, N, C, H, W))."""
    p = _as_tensor(mc_probs)
    return _like(_as_tensor(entropy(p.double().mean(0))).to(p.dtype), mc_probs)


def bald(mc_probs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Mutual information H[mean_t p_t] - mean_t H[p_t], clamped at 0 against rounding."""
    p = _as_tensor(mc_probs).double()
    mi = _as_tensor(entropy(p.mean(0))) - _as_tensor(entropy(p)).mean(0)
    return _like(mi.clamp_min(0).to(_as_tensor(mc_probs).dtype), mc_probs)


@torch.no_grad()
def mc_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    samples: int = 5,
    seed: int | None = 0,
    max_batch: int = 16,
) -> torch.Tensor:
    """Softmax probabilities of `samples` dropout passes: (N, 1, H, W) -> (T, N, C, H, W).

    With a seed the dropout masks are reproducible and the global RNG is left untouched.
    """
    if samples < 1:
        raise ConfigError(f"MC dropout needs at least one sample, got samples={samples}")
    n = images.shape[0]
    with torch.random.fork_rng(enabled=seed is not None), mc_dropout(model):
        if seed is not None:
            torch.manual_seed(seed)
        reps = images.repeat(samples, 1, 1, 1)  # sample-major: index t * n + i
        out = torch.cat([model(chunk).softmax(1) for chunk in reps.split(max(max_batch, 1))])
    return out.reshape(samples, n, *out.shape[1:])


@dataclass
class UncertaintyMaps:
    """Per-pixel results of MC dropout on one 2D image."""

    mean_probs: np.ndarray  # (C, H, W) float32
    entropy: np.ndarray  # (H, W) float32, nats
    bald: np.ndarray  # (H, W) float32, nats

    @property
    def prediction(self) -> np.ndarray:
        """Class index of the mean prediction, (H, W) uint8."""
        return self.mean_probs.argmax(0).astype(np.uint8)


def uncertainty_maps(
    model: nn.Module,
    image: np.ndarray,
    samples: int = 5,
    tile: int | None = None,
    halo: int = 16,
    seed: int | None = 0,
) -> UncertaintyMaps:
    """MC-dropout mean probabilities, entropy and BALD of a 2D float32 image.

    With `tile`, the image is processed in `tile` x `tile` cells, each run with `halo` pixels
    of surrounding context, so memory stays bounded on large slices. With `tile` and `halo`
    multiples of 2**depth and `halo` at least the receptive-field radius, a model without
    dropout gives the whole-image maps exactly; with dropout the masks (not the
    expectation) differ between tiles.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ShapeError(f"uncertainty_maps takes one 2D slice, got shape {image.shape}")
    h, w = image.shape
    grid = Grid((h, w), (tile, tile) if tile else (h, w))
    n_classes = None
    mean = ent = mi = None
    for box in grid.boxes():
        y0, x0 = max(box.y0 - halo, 0), max(box.x0 - halo, 0)
        y1, x1 = min(box.y0 + box.h + halo, h), min(box.x0 + box.w + halo, w)
        x = torch.from_numpy(image[y0:y1, x0:x1].copy())[None, None]
        probs = mc_probabilities(model, x, samples=samples, seed=seed)[:, 0]  # (T, C, h, w)
        inner = (slice(None), slice(box.y0 - y0, box.y0 - y0 + box.h), slice(box.x0 - x0, box.x0 - x0 + box.w))
        probs = probs[(slice(None),) + inner]
        if n_classes is None:
            n_classes = probs.shape[1]
            mean = np.empty((n_classes, h, w), np.float32)
            ent, mi = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
        ys, xs = box.slices
        mean[:, ys, xs] = probs.mean(0).numpy()
        ent[ys, xs] = predictive_entropy(probs).numpy()
        mi[ys, xs] = bald(probs).numpy()
    return UncertaintyMaps(mean, ent, mi)
