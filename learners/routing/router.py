"""PaSeR routing: run f0 + f_RL, send each patch to one model, train the policy (Algorithm 1).

Inference (`route`): f0 runs `samples` MC-dropout passes on the whole image; their mean is
f0's prediction and their predictive entropy the uncertainty map. The policy reads both and
picks the argmax model per patch of the policy's `learners.grid.Patching` (patches of a size in
pixels, or a rows x cols grid); only the chosen models run, each on a batch of just its
patches, and the patches are stitched into one segmentation. Every `grid` argument below takes
a `Patching`, an int patch side, or a (rows, cols) count. Images whose size is not a multiple
of the patch get reflect-padded border patches (the padding is cropped again after stitching, and counted in the FLOPs). A volume is
routed slice by slice, in chunks.

Training (stages 2 and 3) lives in `learners.routing.training`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learners.routing import GRID
from learners.errors import ConfigError, InputError
from learners.flops import cost_shares, image_flops
from learners.grid import Grid, Patching, crop_halo
from learners.metrics import confusion_matrix, iou_from_confusion, iou_per_gflop
from learners.modes import eval_mode
from learners.routing.policy import PolicyNet, policy_state
from learners.routing.reward import PatchTable, patch_confusions
from learners.uncertainty import model_device, predictive_entropy, uncertainty_maps
from learners.unet import count_parameters

# ----------------------------------------------------------------------------- inputs


def as_stack(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (H, W) real images -> (N, 1, H, W) float32 tensor."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise InputError(f"routing takes a 2D slice (H, W) or a stack of slices (N, H, W), got shape {tuple(x.shape)}")
    return x[:, None]


def make_grid(shape: Sequence[int], grid: Patching | tuple[int, int] | int) -> Grid:
    """The routing grid of images of `shape` (..., H, W) under `grid` (see `Patching.of`)."""
    h, w = int(shape[-2]), int(shape[-1])
    patching = Patching.of(grid)
    if patching.count is not None and (patching.count[0] > h or patching.count[1] > w):
        rows, cols = patching.count
        raise InputError(f"a {h}x{w} image cannot be cut into a {rows}x{cols} patch grid; use a smaller grid")
    return patching.grid(h, w)


def model_costs(models: Sequence[nn.Module]) -> np.ndarray:
    """C(f_k) of Eq. 3 for f0..fm, from their learnable parameter counts."""
    return cost_shares([count_parameters(m) for m in models])


# ----------------------------------------------------------------------------- f0 state


@dataclass
class F0State:
    """f0's view of the images: MC-mean prediction (N, H, W) and predictive entropy (N, H, W)."""

    prediction: torch.Tensor  # uint8
    entropy: torch.Tensor  # float32, nats
    n_classes: int
    samples: int
    mean_probs: torch.Tensor | None = None  # (N, C, H, W), only when asked for (memory)

    def policy_input(self, index: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        return policy_state(self.prediction[index], self.entropy[index], self.n_classes)

    def __len__(self) -> int:
        return len(self.prediction)


def f0_state(f0: nn.Module, images: np.ndarray | torch.Tensor, samples: int = 5, seed: int = 0,
             batch_size: int = 8, keep_probs: bool = False) -> F0State:
    """f0's state of (N, H, W) images: `learners.uncertainty.uncertainty_maps` of each image, with
    seed `seed + n` for image n (so image n of a stack gets the maps a session computes for slice
    n with seed n: one f0 state, whoever asks).

    samples = 0 runs one deterministic pass instead (eval mode, entropy of its softmax, `batch_size`
    images at a time): the cheapest f0, for f0 alone or routers that do not read the entropy.
    """
    if samples < 0:
        raise ConfigError(f"samples must be >= 0 (0: one deterministic pass), got {samples}")
    x = as_stack(images)
    if samples > 0:
        maps = [uncertainty_maps(f0, x[i, 0].numpy(), samples=samples, seed=seed + i) for i in range(len(x))]
        mean = torch.from_numpy(np.stack([m.mean_probs for m in maps]))
        entropy = torch.from_numpy(np.stack([m.entropy for m in maps]))
    else:
        mean = torch.cat([_eval_probs(f0, chunk.to(model_device(f0))).cpu() for chunk in x.split(batch_size)])
        entropy = predictive_entropy(mean[None]).to(torch.float32)
    return F0State(mean.argmax(1).to(torch.uint8), entropy, int(mean.shape[1]), samples,
                   mean if keep_probs else None)


@torch.no_grad()
def _eval_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return model(x).softmax(1)


# ----------------------------------------------------------------------------- running models on patches


@dataclass
class PatchOutputs:
    """Per-pixel outputs of one model on (M, 1, ch, cw) patches."""

    prediction: torch.Tensor  # (M, ch, cw) uint8
    entropy: torch.Tensor | None = None  # MC predictive entropy, nats
    nll: torch.Tensor | None = None  # -log p(label), for the cascade's loss


@torch.no_grad()
def patch_outputs(model: nn.Module, patches: torch.Tensor, targets: torch.Tensor | None = None,
                  samples: int = 0, seed: int = 0, batch_size: int = 64, halo: int = 0) -> PatchOutputs:
    """Prediction of a model on patches: eval mode (samples = 0) or the mean of MC-dropout passes.

    With MC passes the entropy map comes along; with `targets` (M, ch, cw) the per-pixel
    negative log-likelihood of the label too. Patches with `halo` pixels of context
    (`Grid.context_patches`) give maps of their centre only. Only per-pixel maps are kept, batch by batch.
    """
    preds, ents, nlls = [], [], []
    for i, b in enumerate(patches.split(batch_size)):
        if samples > 0:  # MC passes: the same f0-state function as whole images, patch by patch
            state = f0_state(model, b[:, 0], samples, seed + i * batch_size, keep_probs=True)
            p = crop_halo(state.mean_probs, halo)
            ents.append(crop_halo(state.entropy, halo))
        else:
            p = crop_halo(_eval_probs(model, b.to(model_device(model))).cpu(), halo)
        preds.append(p.argmax(1).to(torch.uint8))
        if targets is not None:
            t = targets[i * batch_size:(i + 1) * batch_size].long().clamp(0, p.shape[1] - 1)
            nlls.append(-p.gather(1, t[:, None])[:, 0].clamp_min(1e-12).log())
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return PatchOutputs(cat(preds), cat(ents), cat(nlls))


def predict_patches(model: nn.Module, patches: torch.Tensor, batch_size: int = 64, halo: int = 0) -> torch.Tensor:
    """Class indices (M, ch, cw) of (M, 1, ch + 2 halo, cw + 2 halo) patches, eval mode (no dropout)."""
    if len(patches) == 0:
        return torch.empty((0, patches.shape[-2] - 2 * halo, patches.shape[-1] - 2 * halo), dtype=torch.uint8)
    return patch_outputs(model, patches, batch_size=batch_size, halo=halo).prediction


def build_patch_table(
    models: Sequence[nn.Module],
    images: np.ndarray,
    labels: np.ndarray,
    grid: tuple[int, int] = GRID,
    samples: int = 5,
    seed: int = 0,
    state: F0State | None = None,
    mc_models: Sequence[int] = (),
    with_nll: bool = False,
    batch_size: int = 64,
) -> tuple[PatchTable, F0State]:
    """Score every model on every patch once (f0 on whole images, f1..fm patch by patch).

    f0's prediction is its MC mean; models listed in `mc_models` (k >= 1) also run `samples`
    MC passes, their MC mean is their prediction and their patch-mean entropy is recorded
    (what the IDK cascade decides on); the others run once in eval mode, as in routed
    inference. `with_nll` adds each patch's mean negative log-likelihood (Eq. 5's loss).
    Patch means are over the image's own pixels (border padding excluded).
    """
    x = as_stack(images)
    y = np.asarray(labels).reshape(len(x), *x.shape[-2:])
    g = make_grid(x.shape, grid)
    if state is None or (with_nll and state.mean_probs is None):
        state = f0_state(models[0], images, samples, seed, keep_probs=with_nll)
    n, p, k_models = len(x), len(g), len(models)
    conf = [patch_confusions(state.prediction.numpy(), y, g, state.n_classes)]
    ent = np.full((n, p, k_models), np.nan)
    nll = np.full((n, p, k_models), np.nan) if with_nll else None
    ent[:, :, 0] = g.reduce(state.entropy.numpy(), "mean")
    if with_nll:
        t = torch.as_tensor(y, dtype=torch.long).clamp(0, state.n_classes - 1)
        nll[:, :, 0] = g.reduce(-state.mean_probs.gather(1, t[:, None])[:, 0].clamp_min(1e-12).log().numpy(), "mean")
    patches = g.context_patches(x)
    targets = g.extract(torch.as_tensor(y, dtype=torch.float32)[:, None])[:, 0] if with_nll else None
    stitch = lambda m: g.paste(m[:, None].float())[:, 0].numpy()  # noqa: E731
    for k in range(1, k_models):
        mc = samples if k in mc_models else 0
        out = patch_outputs(models[k], patches, targets, mc, seed + 1000 * k, batch_size, g.halo)
        conf.append(patch_confusions(stitch(out.prediction), y, g, state.n_classes))
        if out.entropy is not None:
            ent[:, :, k] = g.reduce(stitch(out.entropy), "mean")
        if with_nll:
            nll[:, :, k] = g.reduce(stitch(out.nll), "mean")
    return PatchTable(np.stack(conf, axis=2), ent, nll), state


# ----------------------------------------------------------------------------- cost and results


@dataclass(frozen=True)
class RoutingCost:
    """FLOPs of each part of a routed pipeline on images of one size, counted on real passes."""

    f0_image: int  # one f0 pass on a whole image
    policy_image: int  # one policy pass (0 without a policy)
    patch: tuple[int, ...]  # one pass of f_k on one (padded) patch with its halo, k = 0..m
    samples: int  # f0's MC passes

    @classmethod
    def of(cls, models: Sequence[nn.Module], height: int, width: int, grid: tuple[int, int] = GRID,
           samples: int = 5, policy: PolicyNet | None = None) -> RoutingCost:
        g = make_grid((height, width), grid)
        pol = image_flops(policy, height, width, policy.config.in_channels) if policy is not None else 0
        patch = tuple(image_flops(m, g.cell[0] + 2 * g.halo, g.cell[1] + 2 * g.halo) for m in models)
        return cls(image_flops(models[0], height, width), pol, patch, samples)

    def f0_flops(self) -> int:
        return max(self.samples, 1) * self.f0_image

    def routed(self, actions: np.ndarray | torch.Tensor, f0_images: int, policy_images: int = 0) -> dict[str, int]:
        """{part: FLOPs} of f0 on `f0_images` images, the policy, and f_k on each patch routed to it."""
        counts = np.bincount(np.asarray(actions, dtype=np.int64).ravel(), minlength=len(self.patch))
        flops = {"f0": f0_images * self.f0_flops(), "policy": policy_images * self.policy_image}
        flops.update({f"f{k}": int(counts[k]) * self.patch[k] for k in range(1, len(self.patch))})
        return flops

    def for_table(self, actions: np.ndarray, f0_always: bool, policy: bool = False) -> dict[str, int]:
        """What `execute_routing` would spend on a routing map: f0 on every image (it feeds a
        policy) or only on the images where it is chosen for some patch."""
        a = np.asarray(actions)
        n = len(a)
        f0_images = n if f0_always else int((a.reshape(n, -1) == 0).any(1).sum())
        return self.routed(a, f0_images, n if policy else 0)


@dataclass
class RoutingResult:
    """A routed segmentation of N images and what it cost.

    routing (N, rows, cols) holds the model that produced each patch (for the cascade: the
    last stage that ran); flops is {part: FLOPs summed over all images} with parts "f0"
    (its MC passes), "policy", and "f1".. "fm" (their patch passes, every stage that ran).
    """

    segmentation: np.ndarray  # (N, H, W) uint8
    routing: np.ndarray  # (N, rows, cols) int64
    flops: dict[str, int]
    names: tuple[str, ...]
    entropy: np.ndarray | None = None  # (N, H, W) float32, f0's MC entropy where f0 ran
    probabilities: np.ndarray | None = None  # (N, rows, cols, K) policy distribution

    @property
    def n_images(self) -> int:
        return len(self.segmentation)

    @property
    def total_flops(self) -> int:
        return int(sum(self.flops.values()))

    @property
    def gflops_per_image(self) -> float:
        return self.total_flops / max(self.n_images, 1) / 1e9

    def patch_share(self) -> dict[str, float]:
        """Fraction of all patches each model produced."""
        counts = np.bincount(self.routing.ravel(), minlength=len(self.names))
        return {n: float(c) / max(self.routing.size, 1) for n, c in zip(self.names, counts)}

    def summary(self, labels: np.ndarray, n_classes: int) -> dict:
        """{iou, gflops_per_image, iou_per_gflop, patch_share}: one row of the routing benchmark."""
        cm = confusion_matrix(self.segmentation, np.asarray(labels).reshape(self.segmentation.shape), n_classes)
        iou = float(np.nanmean(iou_from_confusion(cm)))
        gf = self.gflops_per_image
        return {"iou": iou, "gflops_per_image": gf, "iou_per_gflop": iou_per_gflop(iou, gf) if gf > 0 else math.nan,
                "patch_share": self.patch_share()}

    @classmethod
    def concat(cls, parts: Sequence[RoutingResult]) -> RoutingResult:
        """Join the results of consecutive chunks of a stack."""
        first = parts[0]

        def cat(attr):
            vals = [getattr(p, attr) for p in parts]
            return None if any(v is None for v in vals) else np.concatenate(vals)

        flops = {k: sum(p.flops.get(k, 0) for p in parts) for k in first.flops}
        return cls(cat("segmentation"), cat("routing"), flops, first.names, cat("entropy"), cat("probabilities"))


def default_names(n_models: int) -> tuple[str, ...]:
    return tuple(f"f{k}" for k in range(n_models))


def table_summary(table: PatchTable, actions: np.ndarray, flops: dict[str, int]) -> dict:
    """`RoutingResult.summary` of a routing map scored on a patch table, for sweeps that must not
    rerun the models; `flops` from `RoutingCost.for_table` or `learners.routing.cascade.cascade_flops`."""
    a = np.asarray(actions)
    iou = table.miou(a)
    gf = sum(flops.values()) / max(len(a), 1) / 1e9
    counts = np.bincount(a.ravel(), minlength=table.n_models) / max(a.size, 1)
    return {"iou": iou, "gflops_per_image": gf, "iou_per_gflop": iou_per_gflop(iou, gf) if gf > 0 else math.nan,
            "patch_share": dict(zip(default_names(table.n_models), map(float, counts)))}


def execute_routing(
    models: Sequence[nn.Module],
    images: np.ndarray | torch.Tensor,
    actions: np.ndarray | torch.Tensor,
    grid: tuple[int, int] = GRID,
    state: F0State | None = None,
    samples: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    policy: PolicyNet | None = None,
) -> RoutingResult:
    """Segment `images` by running model actions[n, p] on patch p of image n, and only that.

    f0 runs whole-image MC dropout (its mean is the prediction) on the images where it is
    chosen for at least one patch, unless `state` is given (then it already ran and its cost
    is counted for every image). Each larger model sees one batch of exactly its patches.
    `policy` only adds its FLOPs (one pass per image): pass the one that chose the actions.
    """
    x = as_stack(images)
    g = make_grid(x.shape, grid)
    a = torch.as_tensor(np.asarray(actions), dtype=torch.long).reshape(len(x), len(g))
    if a.numel() and (a.min() < 0 or a.max() >= len(models)):
        raise InputError(f"routing actions must lie in 0..{len(models) - 1}")
    names = default_names(len(models))
    pred = torch.zeros((len(x) * len(g), *g.cell), dtype=torch.uint8)
    entropy, f0_images = None, len(x)
    if state is None:
        need = (a == 0).any(1).nonzero()[:, 0]
        f0_images = len(need)
        if len(need):
            sub = f0_state(models[0], x[need, 0], samples, seed)
            full = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.uint8)
            full[need] = sub.prediction
            ent = torch.full(full.shape, float("nan"))
            ent[need] = sub.entropy
            state = F0State(full, ent, sub.n_classes, samples)
    flat = a.reshape(-1)
    if state is not None:
        f0_patches = g.extract(state.prediction[:, None].float())[:, 0].to(torch.uint8)
        pred[flat == 0] = f0_patches[flat == 0]
        entropy = state.entropy.numpy()
    patches = g.context_patches(x) if bool((flat > 0).any()) else None
    for k in range(1, len(models)):
        idx = (flat == k).nonzero()[:, 0]
        if len(idx):
            pred[idx] = predict_patches(models[k], patches[idx], batch_size, g.halo)
    cost = RoutingCost.of(models, *x.shape[-2:], grid, state.samples if state is not None else samples, policy)
    flops = cost.routed(a, f0_images, len(x) if policy is not None else 0)
    seg = g.paste(pred[:, None])[:, 0].numpy()
    return RoutingResult(seg, a.reshape(len(x), g.rows, g.cols).numpy(), flops, names, entropy)


@torch.no_grad()
def policy_probabilities(policy: PolicyNet, state: F0State, batch_size: int = 32) -> torch.Tensor:
    """(N, P, K) routing distribution of the policy for every image of a state."""
    with eval_mode(policy):
        dev = model_device(policy)
        return torch.cat([policy(state.policy_input(slice(i, i + batch_size)).to(dev)).softmax(-1).cpu()
                          for i in range(0, len(state), batch_size)])


def check_policy(models: Sequence[nn.Module], policy: PolicyNet, grid: Patching | tuple[int, int] | None) -> Patching:
    """The policy's patching, after checking it fits `models` (and `grid`, when given)."""
    cfg = policy.config
    if cfg.n_models != len(models):
        raise InputError(f"the policy routes between {cfg.n_models} models but {len(models)} were given")
    n_classes = getattr(getattr(models[0], "config", None), "n_classes", cfg.n_classes)
    if cfg.n_classes != n_classes:
        raise InputError(f"the policy reads {cfg.n_classes}-class predictions but f0 predicts {n_classes} classes")
    if grid is not None and Patching.of(grid) != cfg.patching:
        raise InputError(f"the policy was built for {cfg.patching.describe()}, not {Patching.of(grid).describe()}")
    return cfg.patching


def route(
    models: Sequence[nn.Module],
    policy: PolicyNet,
    images: np.ndarray | torch.Tensor,
    samples: int = 5,
    seed: int = 0,
    chunk: int = 16,
    batch_size: int = 64,
) -> RoutingResult:
    """PaSeR inference on a slice (H, W) or a stack/volume (N, H, W), `chunk` slices at a time.

    Only one chunk is in memory as float32 at a time, so a lazily loaded volume (dask, zarr,
    memory map) is read slice range by slice range.
    """
    grid = check_policy(models, policy, None)
    shape = np.shape(images)
    if len(shape) == 2:
        images, shape = np.asarray(images)[None], (1, *shape)
    make_grid(shape, grid)
    parts = [_route_chunk(models, policy, as_stack(images[i:i + chunk])[:, 0], grid, samples, seed + i, batch_size)
             for i in range(0, shape[0], chunk)]
    return RoutingResult.concat(parts)


def _route_chunk(models, policy, images, grid, samples, seed, batch_size) -> RoutingResult:
    state = f0_state(models[0], images, samples, seed)
    probs = policy_probabilities(policy, state)
    result = execute_routing(models, images, probs.argmax(-1), grid, state, samples, seed, batch_size, policy)
    g = make_grid(images.shape, grid)
    result.probabilities = probs.reshape(len(images), g.rows, g.cols, -1).numpy()
    return result
