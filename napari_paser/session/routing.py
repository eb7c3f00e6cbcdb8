"""PaSeR routing of one slice for the session's overlay: which model each patch went to, and the cost.

Optional: it needs a trained policy (`policy.pt` beside the models of a run folder, or
`Session.load_policy`). A policy's trade-off (lambda) is fixed when it is trained, so the live
lambda control picks from a bank of policies (`paser policy`, `learners.routing.bank`). f0's
MC-dropout state of a slice is the expensive part and does not depend on the policy: computed
once, a routing map for another lambda is one pass of the small policy (milliseconds), and its
cost is known without running the routed models (`execute=False`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from learners.grid import Grid
from learners.routing.policy import PolicyNet
from learners.errors import InputError
from learners.routing.router import (F0State, RoutingCost, check_policy, execute_routing, f0_state, make_grid,
                                     policy_probabilities)
from learners.unet import count_parameters
from napari_paser.errors import PaserInputError
from napari_paser.session.progress import Progress


@dataclass
class SliceRouting:
    """The routed segmentation of one slice and what it cost."""

    z: int
    routing: np.ndarray  # (rows, cols) index of the model that produced each patch
    segmentation: np.ndarray | None  # (H, W) uint8 class indices; None for a preview (models not run)
    shape: tuple[int, int]  # (H, W) of the slice
    names: tuple[str, ...]  # "f0", "f1", ...
    params: dict[str, int]  # parameter count per model, for the legend
    gflops: float  # spent on this slice: f0's MC passes, the policy, the routed patches
    gflops_largest: float  # the largest model on every patch
    shares: dict[str, float]  # share of patches per model
    lam: float | None = None  # the cost weight the policy was trained with, when known
    cell: tuple[int, int] | None = None  # patch size in pixels (the last row/column may be partial)
    done: np.ndarray | None = None  # (rows, cols): patches whose segmentation is computed (None: all of them)

    def grid(self) -> Grid:
        """The patch grid of the slice: what each entry of `routing` covers."""
        if self.cell is not None:
            return Grid(self.shape, self.cell)
        return Grid.divide(*self.shape, *self.routing.shape)

    def pixel_map(self) -> np.ndarray:
        """(H, W) model index per pixel, for an overlay layer."""
        return self.routing.ravel()[self.grid().cell_index_map()]


def policy_models(policy: PolicyNet, models: dict[str, nn.Module], what: str) -> list[nn.Module]:
    """The session's f0..f{m-1} that `policy` routes between, checked by `learners.routing.router.check_policy`
    (the models' class count was checked against the session's when they were loaded)."""
    needed = [f"f{k}" for k in range(policy.config.n_models)]
    missing = [r for r in needed if r not in models]
    if missing:
        raise PaserInputError(f"{what} routes between {', '.join(needed)} but {', '.join(missing)} are not loaded: "
                              "load the run folder the policy was trained with")
    chosen = [models[r] for r in needed]
    try:
        check_policy(chosen, policy, None)
    except InputError as exc:
        raise PaserInputError(f"{what}: {exc}") from None
    return chosen


def slice_state(f0: nn.Module, image: np.ndarray, z: int, samples: int = 5) -> F0State:
    """f0's MC-dropout prediction and entropy of one normalised slice (seed z, as its maps): what every
    policy reads."""
    return f0_state(f0, image[None], samples, seed=z)


def route_slice(models: Sequence[nn.Module], policy: PolicyNet, image: np.ndarray, z: int, samples: int = 5,
                state: F0State | None = None, execute: bool = True, lam: float | None = None,
                actions: np.ndarray | None = None) -> SliceRouting:
    """Route normalised slice `image` (H, W) with `policy` over `models` (f0 first).

    `state` is f0's state of this slice (`slice_state`), computed here when not given. With
    `execute=False` only the routing map and its cost are computed (no routed model runs); `actions`
    (rows, cols), the map of an earlier preview, skips the policy.
    """
    h, w = image.shape
    patching = policy.config.patching
    try:
        grid = make_grid((h, w), patching)
    except InputError as exc:
        raise PaserInputError(f"slice {z}: {exc}") from None
    rows, cols = grid.rows, grid.cols
    models = list(models)
    state = state if state is not None else slice_state(models[0], image, z, samples)
    if actions is None:
        actions = policy_probabilities(policy, state).argmax(-1)
    else:  # chosen by an earlier pass of the same policy on the same state (a preview)
        actions = torch.as_tensor(np.asarray(actions), dtype=torch.long).reshape(1, -1)
    cost = RoutingCost.of(models, h, w, patching, samples, policy)
    names = tuple(f"f{k}" for k in range(len(models)))
    if execute:
        res = execute_routing(models, image[None], actions, patching, state, samples, z, ROUTE_BATCH, policy)
        segmentation, flops = res.segmentation[0], res.flops
    else:
        segmentation, flops = None, cost.routed(actions, 1, 1)
    counts = np.bincount(actions.reshape(-1).numpy(), minlength=len(models)) / actions.numel()
    return SliceRouting(
        z=z, routing=actions.reshape(rows, cols).numpy(), segmentation=segmentation, shape=(h, w), names=names,
        params={n: count_parameters(m) for n, m in zip(names, models)},
        gflops=sum(flops.values()) / 1e9, gflops_largest=rows * cols * cost.patch[-1] / 1e9,
        shares=dict(zip(names, map(float, counts))), lam=lam, cell=grid.cell,
    )


ROUTE_BATCH = 8
"""Patches per batch of a routed model: a large f2 on 64 context patches at once held over a gigabyte."""


def partial_routing(session, z: int, samples: int, lam: float | None, done: np.ndarray) -> SliceRouting:
    """A routing preview of slice z from the maps stored so far: the policy reads the slice's stored maps,
    and patches not wholly inside the mapped part `done` (an (H, W) mask) are left out (index -1)."""
    lam, policy = session.pick_policy(lam)
    models = policy_models(policy, session.models, "the routing policy")
    maps = session.slice_maps(z)
    state = F0State(torch.from_numpy(np.asarray(maps["prediction"], np.uint8))[None],
                    torch.from_numpy(np.asarray(maps["entropy"], np.float32))[None], session.n_classes, samples)
    routed = route_slice(models, policy, session.image_slice(z), z, samples, state, execute=False, lam=lam)
    grid = routed.grid()
    inside = np.array([done[b.slices].all() for b in grid.boxes()]).reshape(routed.routing.shape)
    routed.routing = np.where(inside, routed.routing, -1)
    return routed


def route_in_view(session, z: int, samples: int = 5, lam: float | None = None, view=None,
                  should_stop: Callable[[], bool] | None = None,
                  preview: Callable[[SliceRouting], None] | None = None) -> Generator[Progress, None, SliceRouting | None]:
    """Route slice z as `Session.route` does, the part on screen first: when f0's state of the slice is not
    known, its maps are computed tile by tile (those meeting `view` first, stored as the slice's maps) and
    `preview` gets a routing of the mapped part once the first tile is done, long before the whole slice is
    mapped and its routed models run. The routed models then run on the patches meeting `view` first:
    `preview` gets the whole routing map, then (when larger models were chosen both on and off screen) the
    segmentation of the patches on screen (`SliceRouting.done`), before the rest. Returns the routing (None
    when stopped)."""
    stop = should_stop or (lambda: False)
    session.pick_policy(lam)  # no policy: its message at once
    z = int(z)
    if not session.has_state(z, samples):
        model = session.require_f0()
        version = session.maps_version()
        n = len(session.map_tiles())
        done = np.zeros(session.shape[-2:], bool)
        tiles = session._map_tiles(model, z, samples, version, None, view=view)
        for j, (box, _maps, stored) in enumerate(tiles, 1):
            if not stored:  # f0 replaced meanwhile: the full routing below maps the slice again
                tiles.close()
                break
            done[box.slices] = True
            if j == 1 and j < n and preview is not None:
                preview(partial_routing(session, z, samples, lam, done))
            yield Progress("maps", j, n + 1, f"routing slice {z}: maps tile {j} of {n}", z=z)
            if stop():
                tiles.close()
                yield Progress("cancelled", j, n + 1, "routing cancelled")
                return None
        else:
            session._commit_maps(z, version)
    lam, policy = session.pick_policy(lam)
    models = policy_models(policy, session.models, "the routing policy")
    state = session.f0_state(z, samples)  # the maps just stored: the image is read after the map is shown
    shape_only = np.empty(session.shape[-2:], np.float32)  # untouched pages: the policy reads the state alone
    chosen = route_slice(models, policy, shape_only, z, samples, state, execute=False, lam=lam)
    if preview is not None:  # the whole routing map, before the routed models run
        preview(chosen)
    image = session.image_slice(z)
    first = patches_in_view(chosen, view)
    larger = chosen.routing > 0  # f0's patches cost nothing more: its state is known
    if preview is None or not (larger & first).any() or not (larger & ~first).any():
        yield Progress("route", 0, 1, f"routing slice {z}: running the routed models", z=z)
        return route_slice(models, policy, image, z, samples, state, True, lam, actions=chosen.routing)
    yield Progress("route", 0, 2, f"routing slice {z}: the routed models on the part on screen", z=z)
    part = route_slice(models, policy, image, z, samples, state, True, lam,
                       actions=np.where(first, chosen.routing, 0))
    preview(replace(chosen, segmentation=part.segmentation, done=first))
    if stop():
        yield Progress("cancelled", 1, 2, "routing cancelled")
        return None
    yield Progress("route", 1, 2, f"routing slice {z}: the routed models on the rest", z=z)
    rest = route_slice(models, policy, image, z, samples, state, True, lam,
                       actions=np.where(first, 0, chosen.routing))
    shown = first.ravel()[chosen.grid().cell_index_map()]
    return replace(chosen, segmentation=np.where(shown, part.segmentation, rest.segmentation))


def patches_in_view(routed: SliceRouting, view=None) -> np.ndarray:
    """(rows, cols) bool: the patches of `routed`'s grid meeting `view` ((y0, x0, y1, x1); None: all)."""
    grid = routed.grid()
    if view is None:
        return np.ones(routed.routing.shape, bool)
    y0, x0, y1, x1 = view
    return np.array([box_meets(b, slice(y0, y1), slice(x0, x1)) for b in grid.boxes()]).reshape(routed.routing.shape)


def box_meets(box, ys: slice, xs: slice) -> bool:
    """Whether a grid box (`learners.grid` Box) overlaps the window (ys, xs)."""
    return box.y0 < ys.stop and ys.start < box.y0 + box.h and box.x0 < xs.stop and xs.start < box.x0 + box.w
