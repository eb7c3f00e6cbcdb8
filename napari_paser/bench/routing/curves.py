"""The routing benchmark's sweeps: PaSeR along lambda, the random policy and the IDK cascade as
cost-accuracy curves, their Pareto fronts and the plot.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from learners.routing import GRID
from learners.routing.bank import iter_bank_training
from learners.routing.cascade import (CascadePoint, evaluate_cascade, oracle_actions, random_actions, threshold_grid,
                                      threshold_ranges)
from learners.routing.reward import PatchTable
from learners.routing.router import RoutingCost, model_costs
from learners.routing.training import RoutingData
from napari_paser.bench.routing.config import RoutingBenchConfig, Inputs, RANDOM_STEP
from napari_paser.bench.routing.methods import gflops_at_iou, policy_actions, table_row, Tables
from napari_paser.bench.routing.stages import _ticking, policy_config


def sweep_curves(models, inp: Inputs, rl_data: RoutingData, test: Tables, cfg: RoutingBenchConfig, bar: tqdm) -> dict:
    """Accuracy-cost curves on the final models' test tables: PaSeR over lambda (a stage-2 policy
    per lambda, trained on the rl split's table, which is all stage 2 sees; no stage 3 per lambda),
    the cascade over thresholds, the random policy over routing probabilities, the oracle over lambda."""
    costs = model_costs(models)
    h, w = inp.splits["test"][0].shape[-2:]
    rl = cfg.rl_config()
    bank = _ticking(iter_bank_training(rl_data, cfg.sweep_lambdas, policy_config(inp.n_classes), rl), bar)
    cost = RoutingCost.of(models, h, w, GRID, cfg.samples, next(iter(bank.policies.values())))
    paser, oracle = [], []
    for lam, policy in sorted(bank.policies.items()):
        a = policy_actions(policy, test.state)
        paser.append({"lambda": lam, **table_row(test.plain, a, cost, True, True, costs, lam)})
        o = oracle_actions(test.plain, costs, lam)
        oracle.append({"lambda": lam, **table_row(test.plain, o, cost, False, False, costs, lam)})
    return {"paser": paser, "oracle": oracle, "random": random_curve(test.plain, cost, costs, cfg),
            "idk_cascade": [_point(p) for p in cascade_points(test.cascade, cost, cfg)]}


def cascade_cost_along_sweep(curves: dict) -> list[dict]:
    """For each PaSeR sweep point: the GFLOPs the cascade's Pareto curve needs for the same IoU.

    Computed from the stored curves only, so it can be re-derived from a results file.
    """
    front = pareto(curves["idk_cascade"])
    pts = [CascadePoint(tuple(r["thresholds"]), r["iou"], r["gflops_per_image"], math.nan, r["patch_share"])
           for r in front]
    out = []
    for r in curves["paser"]:
        need = gflops_at_iou(pts, r["iou"])
        ratio = None if need is None else need / r["gflops_per_image"]
        out.append({"lambda": r["lambda"], "iou": r["iou"], "gflops_per_image": r["gflops_per_image"],
                    "cascade_gflops": need, "cascade_over_paser": ratio})
    return out


def random_curve(table: PatchTable, cost: RoutingCost, costs: np.ndarray, cfg: RoutingBenchConfig) -> list[dict]:
    """The random policy at every routing distribution on a simplex grid of step RANDOM_STEP."""
    n, p = table.iou.shape[:2]
    steps = int(round(1 / RANDOM_STEP))
    out = []
    for i in range(steps + 1):
        for j in range(steps + 1 - i):
            probs = (i / steps, j / steps, (steps - i - j) / steps)
            a = random_actions(n, p, 3, probs, cfg.seed)
            out.append({"probabilities": list(probs), **table_row(table, a, cost, False, False, costs, cfg.lam)})
    return out


def cascade_points(table: PatchTable, cost: RoutingCost, cfg: RoutingBenchConfig) -> list[CascadePoint]:
    """The cascade at every threshold pair of a full-span grid (f0 alone .. every patch to f2)."""
    grid = threshold_grid(threshold_ranges(table, "full"), cfg.cascade_steps)
    return [evaluate_cascade(table, t, cost, cfg.samples) for t in grid]


def _point(p: CascadePoint) -> dict:
    return {"thresholds": list(p.thresholds), "iou": p.iou, "gflops_per_image": p.gflops_per_image,
            "patch_share": p.patch_share}


def pareto(rows: list[dict]) -> list[dict]:
    """Rows not beaten on both IoU and GFLOPs, by increasing GFLOPs."""
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (r["gflops_per_image"], -r["iou"])):
        if r["iou"] > best:
            front.append(r)
            best = r["iou"]
    return front


def plot_curves(curves: dict, methods: dict, path: Path, title: str) -> Path:
    """IoU against GFLOPs per image: every curve (Pareto fronts drawn, all points faint) and each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {"paser": ("C0", "o"), "idk_cascade": ("C1", "s"), "random": ("C2", "^"), "oracle": ("C3", "*")}
    for name, (color, marker) in styles.items():
        rows = curves.get(name, [])
        if not rows:
            continue
        ax.scatter([r["gflops_per_image"] for r in rows], [r["iou"] for r in rows], s=8, color=color, alpha=0.3)
        front = pareto(rows)
        ax.plot([r["gflops_per_image"] for r in front], [r["iou"] for r in front], marker=marker, color=color,
                label=f"{name} ({'lambda' if name in ('paser', 'oracle') else 'sweep'})")
    for name, m in methods.items():
        ax.scatter([m["gflops_per_image"]], [m["iou"]], marker="x", color="k", zorder=5)
        ax.annotate(name, (m["gflops_per_image"], m["iou"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image (log)")
    ax.set_ylabel("test mIoU")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
