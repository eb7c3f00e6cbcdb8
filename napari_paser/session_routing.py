"""PaSeR routing of one slice for the session's overlay: which model each patch went to, and the cost.

Optional: it needs a trained policy (`policy.pt` beside the models of a run folder, or
`Session.load_policy`). The policy's trade-off (lambda) is fixed when it is trained; this
module runs it as trained (argmax action per patch) and reports the GFLOPs spent against
running the largest model on every patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from learners.grid import Grid
from learners.policy import PolicyNet
from learners.router import RoutingCost, route
from learners.unet import count_parameters
from napari_paser.errors import PaserInputError


@dataclass
class SliceRouting:
    """The routed segmentation of one slice and what it cost."""

    z: int
    routing: np.ndarray  # (rows, cols) index of the model that produced each patch
    segmentation: np.ndarray  # (H, W) uint8 class indices
    names: tuple[str, ...]  # "f0", "f1", ...
    params: dict[str, int]  # parameter count per model, for the legend
    gflops: float  # spent on this slice: f0's MC passes, the policy, the routed patches
    gflops_largest: float  # the largest model on every patch
    shares: dict[str, float]  # share of patches per model

    def pixel_map(self) -> np.ndarray:
        """(H, W) model index per pixel, for an overlay layer."""
        grid = Grid.divide(*self.segmentation.shape, *self.routing.shape)
        return self.routing.ravel()[grid.cell_index_map()]


def check_policy(policy: PolicyNet, models: dict[str, nn.Module], n_classes: int, what: str) -> None:
    """The policy must route between f0..f{m-1} of this session and read its classes."""
    cfg = policy.config
    if cfg.n_classes != n_classes:
        raise PaserInputError(f"{what} reads {cfg.n_classes}-class predictions but this session has {n_classes} classes")
    needed = [f"f{k}" for k in range(cfg.n_models)]
    missing = [r for r in needed if r not in models]
    if missing:
        raise PaserInputError(f"{what} routes between {', '.join(needed)} but {', '.join(missing)} are not loaded: "
                              "load the run folder the policy was trained with")


def route_slice(models: Sequence[nn.Module], policy: PolicyNet, image: np.ndarray, z: int,
                samples: int = 5) -> SliceRouting:
    """Route normalised slice `image` (H, W) with `policy` over `models` (f0 first)."""
    h, w = image.shape
    rows, cols = policy.config.grid
    if h < rows or w < cols:
        raise PaserInputError(f"a {h}x{w} slice is smaller than the policy's {rows}x{cols} patch grid")
    res = route(list(models), policy, image[None], samples=samples, seed=z)
    cost = RoutingCost.of(list(models), h, w, policy.config.grid, samples, policy)
    names = tuple(res.names)
    return SliceRouting(
        z=z, routing=res.routing[0], segmentation=res.segmentation[0], names=names,
        params={n: count_parameters(m) for n, m in zip(names, models)},
        gflops=res.gflops_per_image, gflops_largest=rows * cols * cost.patch[-1] / 1e9,
        shares=res.patch_share(),
    )
