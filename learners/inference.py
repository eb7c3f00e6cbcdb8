"""Deterministic prediction (eval mode, no dropout) on whole images or on a patch grid."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from learners.grid import Grid
from learners.modes import eval_mode


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: np.ndarray | torch.Tensor, grid: tuple[int, int] | None = None, batch_size: int = 8
) -> torch.Tensor:
    """Logits (N, C, H, W) of float32 images (N, H, W) or (H, W).

    With `grid` = (rows, cols) the model sees each patch alone, as the PaSeR paper's larger
    models do, and the patch logits are stitched back into whole images.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    x = x.reshape(-1, 1, *x.shape[-2:])
    with eval_mode(model):
        if grid is None:
            return torch.cat([model(chunk) for chunk in x.split(batch_size)])
        g = Grid.divide(x.shape[-2], x.shape[-1], *grid)
        patches = g.extract(x)
        logits = torch.cat([model(chunk) for chunk in patches.split(batch_size * len(g))])
        return g.paste(logits)


def predict_classes(model: nn.Module, images: np.ndarray, grid: tuple[int, int] | None = None, batch_size: int = 8) -> np.ndarray:
    """Class indices (N, H, W) uint8 of float32 images (N, H, W)."""
    return predict_logits(model, images, grid, batch_size).argmax(1).numpy().astype(np.uint8)
