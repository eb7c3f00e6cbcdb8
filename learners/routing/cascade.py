"""Baselines for the router: the IDK cascade (appendix B4), a random policy, the oracle router.

IDK cascade: every patch starts with f0's MC-dropout prediction; while the patch's mean
entropy under the current model exceeds that stage's threshold, the patch goes to the next
larger model (f1 with its own MC passes, whose mean is its prediction and whose entropy
decides the next step; the last model runs once in eval mode). Every model that ran on a
patch is paid for, which is the waste PaSeR avoids. Thresholds are grid-searched on the
validation split between one standard deviation below and above the mean patch entropy of
each stage, minimising Eq. 5: mean patch cross entropy + lambda_IDK * C(final model).

Random policy (PaSeR-RandPol): each patch's model drawn from a fixed categorical (uniform
unless given). Oracle: per patch the model with the best reward given the labels; its FLOPs
are those of executing its routing, not of finding it (that needs every model everywhere).

All three can be evaluated on a `PatchTable` (no model runs, for sweeps) or executed on
images (only the models a patch needs run), returning a `RoutingResult` like `route`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learners.routing import GRID
from learners.errors import ConfigError, InputError
from learners.grid import Grid
from learners.routing.reward import PatchTable, best_actions
from learners.routing.router import (RoutingCost, RoutingResult, as_stack, default_names, execute_routing, f0_state,
                             make_grid, patch_outputs)

# ----------------------------------------------------------------------------- cascade on a table


def cascade_stages(entropy: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(N, P) index of the model whose prediction each patch ends with.

    entropy (N, P, K) patch-mean entropies per model (only k < K - 1 are read); thresholds
    has one value per stage but the last: stage k escalates when its entropy exceeds t_k.
    """
    entropy = np.asarray(entropy)
    n_stages = entropy.shape[-1]
    if len(thresholds) != n_stages - 1:
        raise InputError(f"a cascade of {n_stages} models needs {n_stages - 1} thresholds, got {len(thresholds)}")
    stage = np.zeros(entropy.shape[:2], dtype=np.int64)
    for k, t in enumerate(thresholds):
        stage[(stage == k) & (entropy[..., k] > t)] = k + 1
    return stage


def cascade_flops(stages: np.ndarray, cost: RoutingCost, stage_samples: int) -> dict[str, int]:
    """{part: FLOPs}: f0's MC passes on every image plus every stage each patch went through."""
    stages = np.asarray(stages)
    last = len(cost.patch) - 1
    flops = {"f0": len(stages) * cost.f0_flops(), "policy": 0}
    for k in range(1, last + 1):
        passes = 1 if k == last else stage_samples
        flops[f"f{k}"] = int((stages >= k).sum()) * cost.patch[k] * passes
    return flops


def idk_loss(table: PatchTable, stages: np.ndarray, costs: Sequence[float], lam_idk: float,
             cumulative: bool = False) -> float:
    """Eq. 5 averaged over patches: cross entropy of the final prediction + lambda_IDK * C(f_i).

    `cumulative` charges every model that ran (sum of C up to the final stage) instead of the
    final model alone (the paper's Eq. 5 as written).
    """
    if table.nll is None:
        raise ConfigError("the cascade loss needs a PatchTable built with with_nll=True")
    costs = np.asarray(costs, dtype=np.float64)
    charge = np.cumsum(costs) if cumulative else costs
    nll = np.take_along_axis(table.nll, stages[..., None], -1)[..., 0]
    return float(np.nanmean(nll + lam_idk * charge[stages]))


@dataclass
class CascadePoint:
    """One threshold setting of the cascade and its outcome on a table."""

    thresholds: tuple[float, ...]
    iou: float
    gflops_per_image: float
    loss: float
    patch_share: dict[str, float]


def evaluate_cascade(table: PatchTable, thresholds: Sequence[float], cost: RoutingCost, stage_samples: int,
                     costs: Sequence[float] | None = None, lam_idk: float = 0.01,
                     cumulative: bool = False) -> CascadePoint:
    """IoU, GFLOPs per image, Eq. 5 loss (NaN without nll or costs) and shares of a setting."""
    stages = cascade_stages(table.entropy, thresholds)
    flops = sum(cascade_flops(stages, cost, stage_samples).values())
    loss = np.nan
    if table.nll is not None and costs is not None:
        loss = idk_loss(table, stages, costs, lam_idk, cumulative)
    counts = np.bincount(stages.ravel(), minlength=table.n_models) / stages.size
    share = dict(zip(default_names(table.n_models), map(float, counts)))
    return CascadePoint(tuple(map(float, thresholds)), table.miou(stages), flops / len(stages) / 1e9, loss, share)


def threshold_ranges(table: PatchTable, spread: str = "std") -> list[tuple[float, float]]:
    """Search range per stage: mean -/+ one std of its patch entropies (B4), or their full span."""
    ranges = []
    for k in range(table.n_models - 1):
        e = table.entropy[..., k]
        e = e[np.isfinite(e)]
        if e.size == 0:
            raise ConfigError(f"the table has no entropies for stage f{k}; build it with "
                             f"mc_models covering f1..f{table.n_models - 2}")
        if spread == "std":
            ranges.append((float(e.mean() - e.std()), float(e.mean() + e.std())))
        elif spread == "full":
            ranges.append((float(e.min()) - 1e-9, float(e.max())))
        else:
            raise ConfigError(f"spread must be 'std' or 'full', got {spread!r}")
    return ranges


def threshold_grid(ranges: Sequence[tuple[float, float]], steps: int = 5) -> list[tuple[float, ...]]:
    """Every combination of `steps` evenly spaced thresholds per stage."""
    axes = [np.linspace(lo, hi, steps) for lo, hi in ranges]
    return [tuple(map(float, t)) for t in itertools.product(*axes)]


@dataclass
class CascadeSearch:
    best: CascadePoint
    points: list[CascadePoint]


def search_thresholds(table: PatchTable, cost: RoutingCost, costs: Sequence[float], lam_idk: float = 0.01,
                      steps: int = 5, stage_samples: int = 5, cumulative: bool = False) -> CascadeSearch:
    """Appendix B4 on a validation table (with entropies and nll): the setting of least Eq. 5 loss."""
    grid = threshold_grid(threshold_ranges(table, "std"), steps)
    points = [evaluate_cascade(table, t, cost, stage_samples, costs, lam_idk, cumulative) for t in grid]
    return CascadeSearch(min(points, key=lambda p: p.loss), points)


@dataclass
class IoUMatch:
    point: CascadePoint
    matched: bool  # False when no setting reached the target (point is then the best IoU found)


def match_iou(table: PatchTable, cost: RoutingCost, target_iou: float, tol: float = 1e-3, steps: int = 21,
              stage_samples: int = 5) -> IoUMatch:
    """Table 2's IDK-Cascade (IoU Match): the cheapest setting whose IoU reaches target - tol.

    Thresholds sweep each stage's full entropy span, so the curve runs from f0 alone to every
    patch through the whole cascade.
    """
    grid = threshold_grid(threshold_ranges(table, "full"), steps)
    points = [evaluate_cascade(table, t, cost, stage_samples) for t in grid]
    ok = [p for p in points if p.iou >= target_iou - tol]
    if ok:
        return IoUMatch(min(ok, key=lambda p: (p.gflops_per_image, -p.iou)), True)
    return IoUMatch(max(points, key=lambda p: (p.iou, -p.gflops_per_image)), False)


def pareto_front(points: Sequence[CascadePoint]) -> list[CascadePoint]:
    """Settings no other setting beats on both IoU and GFLOPs, by increasing GFLOPs."""
    front, best = [], -np.inf
    for p in sorted(points, key=lambda p: (p.gflops_per_image, -p.iou)):
        if p.iou > best:
            front.append(p)
            best = p.iou
    return front


# ----------------------------------------------------------------------------- cascade on images


def _valid_pixels(grid: Grid, n_images: int) -> torch.Tensor:
    """(N * P, ch, cw) mask of each patch's own pixels (not border padding)."""
    mask = torch.zeros((len(grid), *grid.cell))
    for i, box in enumerate(grid.boxes()):
        mask[i, : box.h, : box.w] = 1
    return mask.repeat(n_images, 1, 1)


def run_cascade(models: Sequence[nn.Module], images: np.ndarray, thresholds: Sequence[float],
                grid: tuple[int, int] = GRID, samples: int = 5, seed: int = 0, batch_size: int = 64) -> RoutingResult:
    """Execute the IDK cascade: each stage runs only on the patches the previous one gave up on."""
    if samples < 1:
        raise InputError("the IDK cascade decides on MC-dropout entropy and needs samples >= 1")
    if len(thresholds) != len(models) - 1:
        raise InputError(f"a cascade of {len(models)} models needs {len(models) - 1} thresholds, got {len(thresholds)}")
    x = as_stack(images)
    g = make_grid(x.shape, grid)
    state = f0_state(models[0], x[:, 0], samples, seed)
    pred = g.extract(state.prediction[:, None].float())[:, 0].to(torch.uint8)
    stage = torch.zeros(len(pred), dtype=torch.long)
    active = torch.as_tensor(g.reduce(state.entropy.numpy(), "mean").reshape(-1) > thresholds[0])
    patches, valid = g.context_patches(x), _valid_pixels(g, len(x))
    for k in range(1, len(models)):
        idx = active.nonzero()[:, 0]
        if not len(idx):
            break
        last = k == len(models) - 1
        out = patch_outputs(models[k], patches[idx], samples=0 if last else samples, seed=seed + 1000 * k,
                            batch_size=batch_size, halo=g.halo)
        pred[idx], stage[idx] = out.prediction, k
        if not last:
            v = valid[idx]
            mean_entropy = (out.entropy * v).sum((1, 2)) / v.sum((1, 2))
            active = torch.zeros_like(active)
            active[idx] = mean_entropy > thresholds[k]
    routing = stage.reshape(len(x), g.rows, g.cols).numpy()
    cost = RoutingCost.of(models, *x.shape[-2:], grid, samples)
    flops = cascade_flops(routing.reshape(len(x), -1), cost, samples)
    seg = g.paste(pred[:, None])[:, 0].numpy()
    return RoutingResult(seg, routing, flops, default_names(len(models)), state.entropy.numpy())


# ----------------------------------------------------------------------------- random policy and oracle


def random_actions(n_images: int, n_patches: int, n_models: int, probabilities: Sequence[float] | None = None,
                   seed: int = 0) -> np.ndarray:
    """(N, P) models drawn independently per patch from `probabilities` (uniform by default)."""
    p = np.full(n_models, 1.0 / n_models) if probabilities is None else np.asarray(probabilities, dtype=np.float64)
    if p.shape != (n_models,) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise InputError(f"routing probabilities must be {n_models} non-negative numbers summing to 1, "
                         f"got {p.tolist()}")
    return np.random.default_rng(seed).choice(n_models, size=(n_images, n_patches), p=p)


def run_random(models: Sequence[nn.Module], images: np.ndarray, probabilities: Sequence[float] | None = None,
               grid: tuple[int, int] = GRID, samples: int = 5, seed: int = 0, batch_size: int = 64) -> RoutingResult:
    """PaSeR-RandPol: route each patch to a random model; f0 runs only where it is drawn."""
    x = as_stack(images)
    g = make_grid(x.shape, grid)
    actions = random_actions(len(x), len(g), len(models), probabilities, seed)
    return execute_routing(models, x[:, 0], actions, grid, samples=samples, seed=seed, batch_size=batch_size)


def oracle_actions(table: PatchTable, costs: Sequence[float], lam: float) -> np.ndarray:
    """(N, P) per-patch action of highest reward (Eq. 2) given the labels."""
    return best_actions(table.iou, costs, lam).numpy()


def run_oracle(models: Sequence[nn.Module], images: np.ndarray, table: PatchTable, costs: Sequence[float],
               lam: float, grid: tuple[int, int] = GRID, samples: int = 5, seed: int = 0,
               batch_size: int = 64) -> RoutingResult:
    """Execute the oracle's routing; `table` must be built on these images with their labels."""
    x = as_stack(images)
    actions = oracle_actions(table, costs, lam)
    if actions.shape[0] != len(x):
        raise InputError(f"the patch table covers {actions.shape[0]} images, not the {len(x)} given")
    return execute_routing(models, x[:, 0], actions, grid, samples=samples, seed=seed, batch_size=batch_size)
