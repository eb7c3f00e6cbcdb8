"""Complementary experts (the PaSeR paper's noisy-MNIST experiment, R4) on scikit-learn digits.

Each 8x8 digit is upscaled to 32x32; its foreground mask is the clean upscaled image above
half its range. Every image is degraded by one of three corruptions, in equal shares:
Gaussian blur sigma 1; Gaussian blur sigma 2 on a raised background (0.5 + 0.5 x); box blur
5x5 with inverted intensities. Expert f_k is trained only on corruption k. With the three
blurs alone the experts were not complementary (4 epochs: the largest expert was best or
within 0.01 on every blur type, IoU 0.95 / 0.91 / 0.94 against 0.92 / 0.92 / 0.94 for the
own-type experts), so nothing was left to route; the intensity mappings give each expert a
domain the others fail on, which is the property the paper's experiment tests. The router works per image (a 1x1 grid; the paper routes whole
MNIST images), is trained with lambda = 0 (appendix B3), and is scored by its model
assignment against the expert of each image's blur: confusion matrix (rows = blur, columns
= chosen model) and accuracy, beside the IDK cascade (thresholds grid-searched on val),
the random policy and the reward oracle. Paper: PaSeR 92.7%, IDK cascade 80%.

The experts are small UNets of growing width (the paper's three sizes would take far longer
on a CPU); sizes matter here only for the cost term, which lambda = 0 switches off.

    .venv/bin/python benchmarks/bench_experts.py [--epochs 6] [--epochs-rl 60]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from learners.routing.cascade import cascade_stages, oracle_actions, search_thresholds
from learners.routing.policy import PolicyConfig, PolicyNet
from learners.routing.router import RoutingCost, build_patch_table, model_costs, policy_probabilities, table_summary
from learners.routing.training import RLConfig, RoutingData, train_policy
from learners.training import TrainConfig, train
from learners.unet import UNet, UNetConfig
from napari_paser.bench.routing.stages import history_summary

BLURS = ("gauss1", "gauss2-raised", "box5-inverted")
GRID = (1, 1)
SIZES = ((8, 2), (16, 3), (32, 3))  # (base, depth) of f0, f1, f2
OUT = Path(__file__).resolve().parent / "results" / "experts.json"


def blur(image: np.ndarray, kind: str) -> np.ndarray:
    """One corruption type (see the module docstring)."""
    if kind == "gauss1":
        return ndimage.gaussian_filter(image, 1.0)
    if kind == "gauss2-raised":
        return 0.5 + 0.5 * ndimage.gaussian_filter(image, 2.0)
    return 1.0 - ndimage.uniform_filter(image, 5)


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, 32, 32) float32 in [0, 1], masks uint8, blur index per image)."""
    from sklearn.datasets import load_digits

    digits = load_digits().images / 16.0
    rng = np.random.default_rng(seed)
    clean = np.stack([ndimage.zoom(d, 4, order=1) for d in digits]).clip(0, 1).astype(np.float32)
    masks = (clean > 0.5).astype(np.uint8)
    kinds = rng.permutation(np.arange(len(clean)) % 3)
    noisy = np.stack([blur(c, BLURS[k]) for c, k in zip(clean, kinds)])
    noisy = (noisy + 0.05 * rng.standard_normal(noisy.shape)).clip(0, 1).astype(np.float32)
    return noisy, masks, kinds


def split(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """pretrain / rl / val / test index sets (40 / 25 / 10 / 25 %)."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = (np.array([0.4, 0.65, 0.75]) * n).astype(int)
    return dict(zip(("pretrain", "rl", "val", "test"), np.split(order, cuts)))


def train_experts(x, y, kinds, idx, epochs: int) -> list[UNet]:
    """Expert k on the pretrain images of blur k only."""
    models = []
    for k, (base, depth) in enumerate(SIZES):
        torch.manual_seed(k)
        model = UNet(UNetConfig(n_classes=2, base=base, depth=depth, dropout=0.2))
        own = idx["pretrain"][kinds[idx["pretrain"]] == k]
        val = idx["val"][kinds[idx["val"]] == k]
        cfg = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, patience=epochs)
        train(model, x[own], y[own], x[val], y[val], cfg, desc=f"expert f{k} ({BLURS[k]})")
        models.append(model)
    return models


def confusion(kinds: np.ndarray, chosen: np.ndarray) -> dict:
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (kinds, chosen), 1)
    return {"rows_blur_cols_model": cm.tolist(), "accuracy": float(np.trace(cm) / cm.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--epochs-rl", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small models)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    x, y, kinds = make_data(args.seed)
    idx = split(len(x), args.seed)
    models = train_experts(x, y, kinds, idx, args.epochs)
    costs = model_costs(models)
    rx, ry = x[idx["rl"]], y[idx["rl"]]
    table, state = build_patch_table(models, rx, ry, GRID, 5, args.seed)
    torch.manual_seed(args.seed)
    policy = PolicyNet(PolicyConfig(n_classes=2, n_models=3, grid=GRID))
    ablation = copy.deepcopy(policy)  # same initial weights, trained without the mean-reward baseline
    data = RoutingData.from_table(state, table, costs)
    rl = RLConfig(epochs=args.epochs_rl, batch_size=16, lr=1e-3, lam=0.0, seed=args.seed)
    history = train_policy(policy, data, rl)
    history_nb = train_policy(ablation, data, replace(rl, baseline=False))
    vx, vy = x[idx["val"]], y[idx["val"]]
    val_table, _ = build_patch_table(models, vx, vy, GRID, 5, args.seed, mc_models=(1,), with_nll=True)
    cost = RoutingCost.of(models, 32, 32, GRID, 5)
    search = search_thresholds(val_table, cost, costs, steps=7)
    tx, ty, tk = x[idx["test"]], y[idx["test"]], kinds[idx["test"]]
    test, tstate = build_patch_table(models, tx, ty, GRID, 5, args.seed, mc_models=(1,))
    plain, _ = build_patch_table(models, tx, ty, GRID, 5, args.seed, state=tstate)
    pcost = RoutingCost.of(models, 32, 32, GRID, 5, policy)
    chosen = {
        "paser": policy_probabilities(policy, tstate).argmax(-1).numpy(),
        "paser_no_baseline": policy_probabilities(ablation, tstate).argmax(-1).numpy(),
        "idk_cascade": cascade_stages(test.entropy, search.best.thresholds),
        "random": np.random.default_rng(args.seed).integers(0, 3, (len(tx), 1)),
        "oracle": oracle_actions(plain, costs, 0.0),
    }
    results = {"command": "python benchmarks/bench_experts.py --epochs %d --epochs-rl %d --seed %d"
               % (args.epochs, args.epochs_rl, args.seed),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "blurs": list(BLURS), "sizes": [list(s) for s in SIZES],
               "split_sizes": {k: len(v) for k, v in idx.items()},
               "expert_iou_by_blur": expert_matrix(plain, tk), "idk_thresholds": list(search.best.thresholds),
               "stage2": {"baseline": history_summary(history), "no_baseline": history_summary(history_nb)},
               "methods": {}}
    for name, a in chosen.items():
        tab = test if name == "idk_cascade" else plain
        flops = pcost.for_table(a, True, True) if name.startswith("paser") else cost.for_table(a, False)
        row = table_summary(tab, a, flops)
        row.update(confusion(tk, a[:, 0]))
        results["methods"][name] = row
    results["seconds"] = round(time.time() - started, 1)
    OUT.write_text(json.dumps(results, indent=2))
    for name, m in results["methods"].items():
        print(f"{name:<12} assignment {m['accuracy']:.1%}  mIoU {m['iou']:.3f}  GFLOPs {m['gflops_per_image']:.4f}  "
              f"confusion {m['rows_blur_cols_model']}")
    print(f"wrote {OUT}")


def expert_matrix(table, kinds: np.ndarray) -> list[list[float]]:
    """Mean image IoU of each expert (columns) on each blur type (rows): the complementarity."""
    iou = table.iou[:, 0, :]
    return [[float(np.nanmean(iou[kinds == b, k])) for k in range(3)] for b in range(3)]


if __name__ == "__main__":
    main()
