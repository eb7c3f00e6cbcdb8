"""Z-context: does a model that sees the neighbouring slices (z-1, z, z+1 as input channels) segment
the SOC stack better than the same model on slice z alone?

Two arms per model role, trained on the same labels with the same recipe and the same seed:
- 2d: the shipped starting weights (`napari_paser.weights.starting_model`; f0 = tiny, f1 = medium),
  input = slice z, trained through `learners.training.iter_training` as the session retrains;
- 2.5d: the same weights with the 1x1 stem conv inflated to 3 input channels (slices z-1, z, z+1;
  the volume's edge slices reflected): the centre channel carries the shipped stem weights and the
  neighbour channels start at 0, so at step 0 both arms are the identical function (checked: the
  largest logit difference on the test slices is in the results) and any difference is learned z-context.

`iter_training`'s crop mode takes 2D images only, so the 2.5d arm runs the same `iter_training`
with its crop sampler swapped, for that call, for `StackCropSampler`: the stock `CropSampler` picks
the crops on a map of pixel indices and the crops are then gathered from every channel, so both
arms draw the identical crops, flips and jitter for a seed; a thin `Folded` wrapper turns the
(B, 1, C, H, W) batches that `iter_training` makes into (B, C, H, W). Nothing in the package changes.

Data (`common.soc_stack_3d`): the stack's central crop degraded in 3D (Gaussian blur
sigma 1, 2x down-sampling of z, y and x with linear re-sampling back, Gaussian noise sd 0.08 of the
range; the same recipe as bench_effort.py's soc_stack-3d), normalised by `robust_range` of the
degraded volume. Per seed: the pool is a block of --pool consecutive slices in the first half, the
test a block of --pool consecutive slices in the held-back second half (bench_effort's split).
Budgets: k random (--region)-sided cells of the pool slices' grid labeled (the k of a larger budget
include those of a smaller one), the rest IGNORE_INDEX, and "full" (every pool pixel); each
budget trains from the starting weights with RETRAIN_CONFIG (keep, jitter, balanced 64 x 64 crops)
with --epochs x --steps optimiser steps, the same for both arms. Score: test mIoU (`labeling_loop.miou`)
per seed; per budget the paired per-seed differences 2.5d - 2d with a percentile-bootstrap 95%
interval (`napari_paser.bench.al.bootstrap_ci`); "better" when the interval lies above 0.

    PYTHONPATH=. nice -n 10 python benchmarks/bench_zcontext.py [--seeds 10] [--budgets 6,24,full]
        [--roles f0,f1] [--f1-budgets 24,full] [--f1-seeds 5] [--epochs 4] [--steps 75] [--crop 192] [--pool 4]
        [--out benchmarks/results/zcontext.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

import common
from labeling_loop import miou
from learners.augment import CropSampler
from learners.generators import drain
from learners.modes import eval_mode
from learners.training import IGNORE_INDEX, iter_training
from learners.unet import UNet, preset_config
from napari_paser.bench.al import bootstrap_ci, verdict
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.session.training import RETRAIN_CONFIG
from napari_paser.weights import starting_model

PRESET = {"f0": "tiny", "f1": "medium"}
"""The shipped starting weights' preset per role."""


# ----------------------------------------------------------------------------- data


def soc_stack_3d(crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(volume (Z, crop, crop) float32 in [0, 1], labels uint8): the benchmarks' soc_stack-3d
    (`common.soc_stack_3d`), normalised by the degraded volume's `robust_range`."""
    vol, lab = common.soc_stack_3d(crop)
    return normalise(vol, *robust_range(vol)), lab


def with_neighbours(volume: np.ndarray, zs: Sequence[int]) -> np.ndarray:
    """(N, 3, H, W): slices z-1, z, z+1 of each z, reflected at the volume's first and last slice."""
    n = len(volume)
    rows = [[abs(z - 1), z, (n - 1) - abs(n - 1 - (z + 1))] for z in zs]
    return np.ascontiguousarray(volume[np.array(rows)])


def split(n_slices: int, seed: int, pool: int) -> tuple[list[int], list[int]]:
    """(pool z's, test z's): consecutive blocks in the first and the held-back second half (bench_effort's split)."""
    rng = np.random.default_rng(seed)
    half = n_slices // 2
    z0, t0 = int(rng.integers(0, half - pool)), half + int(rng.integers(0, half - pool))
    return list(range(z0, z0 + pool)), list(range(t0, t0 + pool))


def region_labels(truth: np.ndarray, k: int | None, region: int, seed: int) -> np.ndarray:
    """The pool labels with only k random cells of the (region x region) grid kept (None: every pixel)."""
    if k is None:
        return truth.copy()
    n, h, w = truth.shape
    cells = [(i, y, x) for i in range(n) for y in range(0, h - region + 1, region) for x in range(0, w - region + 1, region)]
    order = np.random.default_rng([seed, 7]).permutation(len(cells))  # nested: budget k's cells are the first k
    out = np.full_like(truth, IGNORE_INDEX)
    for c in order[:k]:
        i, y, x = cells[c]
        out[i, y:y + region, x:x + region] = truth[i, y:y + region, x:x + region]
    return out


# ----------------------------------------------------------------------------- models


def inflate(model: UNet, in_channels: int = 3) -> UNet:
    """A copy of `model` that takes `in_channels` slices: the stem's centre channel keeps the weights, the others 0."""
    wide = UNet(replace(model.config, in_channels=in_channels))
    state = dict(model.state_dict())
    stem = torch.zeros((state["stem.weight"].shape[0], in_channels, 1, 1))
    stem[:, in_channels // 2] = state["stem.weight"][:, 0]
    state["stem.weight"] = stem
    wide.load_state_dict(state)
    return wide.eval()


class Folded(nn.Module):
    """`model` on the (B, 1, C, H, W) batches `iter_training` makes of (C, H, W) crops: folded to (B, C, H, W)."""

    def __init__(self, model: UNet) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flatten(1, 2) if x.dim() == 5 else x)


class StackCropSampler(CropSampler):
    """`CropSampler` over (C, H, W) images: the crops are chosen on a map of pixel indices exactly as the
    stock sampler chooses them on 2D images (same labels and seed: same crops), then gathered from every
    channel; edge padding of the index map equals edge padding of each channel."""

    def __init__(self, images, labels, crop, n_classes, balanced=True, seed=0, centre_weights=None) -> None:
        stacks = [np.asarray(im, np.float32) for im in images]
        starts = np.cumsum([0] + [s[0].size for s in stacks])
        if starts[-1] >= 2**24:
            raise ValueError("too many pixels for exact float32 indices")
        index_maps = [np.arange(a, a + s[0].size, dtype=np.float32).reshape(s.shape[1:]) for a, s in zip(starts, stacks)]
        super().__init__(index_maps, labels, crop, n_classes, balanced, seed, centre_weights)
        self.flat = np.concatenate([s.reshape(len(s), -1) for s in stacks], axis=1)  # (C, all pixels)

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(images (batch, C, crop, crop) float32, labels (batch, crop, crop) uint8)."""
        idx, ys = super().sample(batch, rng)
        return np.ascontiguousarray(np.moveaxis(self.flat[:, idx.astype(np.int64)], 0, 1)), ys


def fine_tune(model: UNet, images: np.ndarray, labels: np.ndarray, config) -> None:
    """`iter_training` on whole pool slices with partial labels: (N, H, W) images for 2d, (N, C, H, W) for 2.5d."""
    if images.ndim == 3:
        drain(iter_training(model, list(images), list(labels), None, None, config))
        return
    with mock.patch("learners.training.CropSampler", StackCropSampler):
        drain(iter_training(Folded(model), list(images), list(labels), None, None, config))


@torch.no_grad()
def logits(model: UNet, images: np.ndarray, batch: int = 4) -> torch.Tensor:
    """Deterministic logits of (N, H, W) or (N, C, H, W) images."""
    x = torch.from_numpy(np.asarray(images, np.float32))
    x = x[:, None] if x.dim() == 3 else x
    with eval_mode(model):
        return torch.cat([model(chunk) for chunk in x.split(batch)])


def score(model: UNet, images: np.ndarray, truth: np.ndarray) -> float:
    return round(miou(logits(model, images).argmax(1).numpy(), truth), 4)


# ----------------------------------------------------------------------------- the experiment


def plumbing(role: str, images: np.ndarray, truth: np.ndarray, test: np.ndarray, config) -> float:
    """Largest test-logit difference between the stock 2d path and the 2.5d path fed one channel (slice z only),
    after a few steps on the same labels: 0 when the swapped sampler and the wrapper train exactly as the stock path."""
    config = replace(config, epochs=1, steps_per_epoch=5)
    stock, folded = (starting_model(role, preset_config(PRESET[role], n_classes=3)) for _ in range(2))
    fine_tune(stock, images, truth, config)
    fine_tune(folded, images[:, None], truth, config)
    return float((logits(stock, test) - logits(folded, test[:, None])).abs().max())


def neighbour_share(model: UNet) -> float:
    """How much a trained 2.5d stem reads the neighbouring slices: the norm of its z-1 and z+1 weights over
    the norm of all its input weights (0 at the start; the slices share one intensity scale)."""
    w = model.stem.weight.detach()[:, :, 0, 0]
    return round(float(torch.linalg.norm(w[:, [0, 2]]) / torch.linalg.norm(w)), 4)


def run_seed(volume: np.ndarray, labels: np.ndarray, seed: int, role: str, budgets: list, args) -> dict:
    """Per budget, test mIoU of both arms after the same fine-tuning; and the step-0 check."""
    pool, test = split(len(volume), seed, args.pool)
    p2, t2, p3, t3 = volume[pool], volume[test], with_neighbours(volume, pool), with_neighbours(volume, test)
    truth_pool, truth_test = labels[pool], labels[test]
    start = starting_model(role, preset_config(PRESET[role], n_classes=3))
    same = float((logits(start, t2) - logits(inflate(start), t3)).abs().max())
    config = replace(RETRAIN_CONFIG, epochs=args.epochs, steps_per_epoch=args.steps, seed=seed)
    out = {"pool_z": [pool[0], pool[-1]], "test_z": [test[0], test[-1]], "step0_miou": score(start, t2, truth_test),
           "step0_max_logit_diff": same, "plumbing_max_logit_diff": plumbing(role, p2, labels[pool], t2, config),
           "budgets": {}}
    for budget in budgets:
        lab = region_labels(truth_pool, None if budget == "full" else int(budget), args.region, seed)
        row = {"labeled_px": int((lab != IGNORE_INDEX).sum())}
        for arm, images, test_images, make in (("2d", p2, t2, lambda m: m), ("2.5d", p3, t3, inflate)):
            model = make(starting_model(role, preset_config(PRESET[role], n_classes=3)))
            t = time.perf_counter()
            fine_tune(model, images, lab, config)
            row[arm] = score(model, test_images, truth_test)
            row[f"{arm}_s"] = round(time.perf_counter() - t, 1)
        row["neighbour_stem_share"] = neighbour_share(model)
        out["budgets"][str(budget)] = row
        print(f"{role} seed {seed} budget {budget}: 2d {row['2d']:.4f} 2.5d {row['2.5d']:.4f} "
              f"({row['2d_s']} s, {row['2.5d_s']} s)", flush=True)
    return out


def summarise(runs: list[dict], budgets: list) -> dict:
    table = {}
    for budget in map(str, budgets):
        a = [r["budgets"][budget]["2d"] for r in runs]
        b = [r["budgets"][budget]["2.5d"] for r in runs]
        ci = bootstrap_ci([y - x for x, y in zip(a, b)])
        table[budget] = {"miou_2d_mean": round(float(np.mean(a)), 4), "miou_25d_mean": round(float(np.mean(b)), 4),
                         "diff_25d_minus_2d": ci, "verdict": verdict(ci),
                         "labeled_px_mean": round(float(np.mean([r["budgets"][budget]["labeled_px"] for r in runs])))}
        shares = [r["budgets"][budget]["neighbour_stem_share"] for r in runs if "neighbour_stem_share" in r["budgets"][budget]]
        if shares:
            table[budget]["neighbour_stem_share_mean"] = round(float(np.mean(shares)), 4)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", default="6,24,full", help="labeled regions per budget, or full (every pool pixel)")
    parser.add_argument("--roles", default="f0,f1", help="f0 (tiny) and/or f1 (medium)")
    parser.add_argument("--f1-budgets", default="24,full", help="f1's budgets (it trains several times slower)")
    parser.add_argument("--f1-seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="retrain epochs (RETRAIN_CONFIG: 4)")
    parser.add_argument("--steps", type=int, default=75, help="optimiser steps per epoch (RETRAIN_CONFIG: 75)")
    parser.add_argument("--crop", type=int, default=192, help="central crop side of the stack's slices")
    parser.add_argument("--pool", type=int, default=4, help="consecutive slices of the pool and of the test block")
    parser.add_argument("--region", type=int, default=32)
    parser.add_argument("--out", type=Path, default=common.RESULTS / "zcontext.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    roles = args.roles.split(",")
    if set(roles) - set(PRESET):
        raise SystemExit(f"--roles: choose among {', '.join(PRESET)}, got {args.roles}")
    volume, labels = soc_stack_3d(args.crop)
    plan = {"f0": (args.budgets.split(","), args.seeds), "f1": (args.f1_budgets.split(","), args.f1_seeds)}
    result = {"command": "PYTHONPATH=. nice -n 10 python benchmarks/bench_zcontext.py " + " ".join(sys.argv[1:]),
              "dataset": f"soc_stack-3d: central {args.crop}^2 crop of the SOC stack (250 slices), degraded in 3D",
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "retrain": {"epochs": args.epochs, "steps_per_epoch": args.steps, "rest": "RETRAIN_CONFIG"},
              "machine": common.machine(os.getloadavg(), torch_threads=1, note="2 shared cores, nice 10"),
              "date": time.strftime("%Y-%m-%d"), "roles": {}}
    t0 = time.time()
    for role in roles:
        budgets, n_seeds = plan[role]
        runs = []
        for seed in range(n_seeds):  # written after every seed: a stopped run keeps what it finished
            runs.append(run_seed(volume, labels, seed, role, budgets, args))
            result["roles"][role] = {"preset": PRESET[role], "seeds_done": len(runs), "table": summarise(runs, budgets),
                                     "per_seed": runs}
            result["seconds"] = round(time.time() - t0)
            result["machine"]["load_average_end"] = os.getloadavg()
            common.write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
