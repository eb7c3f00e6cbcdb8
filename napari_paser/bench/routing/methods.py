"""Every method of the routing benchmark on the test split with the fine-tuned models: the rows,
the patch tables they are scored on, the cascade thresholds (appendix B4) and the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from learners.routing import GRID
from learners.routing.cascade import (CascadePoint, cascade_flops, cascade_stages, match_iou, oracle_actions,
                                      random_actions, run_cascade, search_thresholds)
from learners.routing.policy import PolicyNet
from learners.routing.reward import PatchTable, image_rewards
from learners.routing.router import (RoutingCost, RoutingResult, build_patch_table, execute_routing, model_costs,
                                     policy_probabilities, route, table_summary)
from napari_paser.bench.routing.config import RoutingBenchConfig, Inputs, METHODS, N_PATCHES
from napari_paser.bench.routing.stages import StageBar, Trained


def policy_actions(policy: PolicyNet, state) -> np.ndarray:
    """(N, P) argmax routing of a policy on a prepared f0 state."""
    return policy_probabilities(policy, state).argmax(-1).numpy()


def mean_reward(table: PatchTable, actions: np.ndarray, costs: np.ndarray, lam: float) -> float:
    """Mean image reward R (Eq. 2) of a routing map, scored on a patch table."""
    a = torch.as_tensor(np.asarray(actions).reshape(len(actions), -1))
    return float(image_rewards(a, torch.as_tensor(np.nan_to_num(table.iou)), torch.as_tensor(costs), lam).mean())


def result_row(result: RoutingResult, labels: np.ndarray, n_classes: int, table: PatchTable, costs: np.ndarray,
               lam: float) -> dict:
    """`RoutingResult.summary` plus the routing map's reward and the share of patches sent upward."""
    row = result.summary(labels, n_classes)
    row["reward"] = mean_reward(table, result.routing, costs, lam)
    row["share_upward"] = 1.0 - row["patch_share"]["f0"]
    return row


def table_row(table: PatchTable, actions: np.ndarray, cost: RoutingCost, f0_always: bool, policy: bool,
              costs: np.ndarray, lam: float) -> dict:
    """A result row scored on a table (no model runs); FLOPs as `execute_routing` would spend."""
    row = table_summary(table, actions, cost.for_table(actions, f0_always, policy))
    row["reward"] = mean_reward(table, actions, costs, lam)
    row["share_upward"] = 1.0 - row["patch_share"]["f0"]
    return row


def gflops_at_iou(front: Sequence[CascadePoint], iou: float) -> float | None:
    """GFLOPs the Pareto curve needs to reach `iou`, linearly interpolated; None if it never does."""
    for i, p in enumerate(front):
        if p.iou >= iou:
            if i == 0:
                return p.gflops_per_image
            q = front[i - 1]
            t = (iou - q.iou) / (p.iou - q.iou)
            return q.gflops_per_image + t * (p.gflops_per_image - q.gflops_per_image)
    return None


@dataclass
class Tables:
    """Patch tables of one image set: eval-mode f1/f2 (routers) and MC f1 (cascade)."""

    plain: PatchTable
    cascade: PatchTable
    state: object


def make_tables(models, x, y, cfg: RoutingBenchConfig) -> Tables:
    """Both tables with one pass of the large model: the cascade table reuses the plain f2 column."""
    plain, state = build_patch_table(models, x, y, GRID, cfg.samples, cfg.seed)
    casc, _ = build_patch_table(models[:-1], x, y, GRID, cfg.samples, cfg.seed, state=state, mc_models=(1,))
    confusion = np.concatenate([casc.confusion, plain.confusion[:, :, -1:]], axis=2)
    entropy = np.concatenate([casc.entropy, plain.entropy[:, :, -1:]], axis=2)
    return Tables(plain, PatchTable(confusion, entropy), state)


@dataclass
class Routers:
    """Everything that decides routing, fixed before the test split is touched (except the IoU match)."""

    policy: PolicyNet
    thresholds: tuple[float, ...]
    match_thresholds: tuple[float, ...]
    match_found: bool


def run_methods(models, routers: Routers, x, y, tables: Tables, cfg: RoutingBenchConfig, n_classes: int,
                tick: Callable[[str], None]) -> dict[str, dict]:
    """Every method on images x (labels y): rows of the results table.

    PaSeR, the two cascades and f0 alone are executed on the images (their f0 passes and
    stage decisions are their own; with `fast` the cascades are scored on the cascade table).
    f1, f2 alone, the random policy and the oracle run the segmentation models in eval mode
    only, so their stitched segmentation is exactly the one their routing map picks from the
    patch table; scoring them there saves full passes of the large model. FLOPs are the same
    per-patch counts either way ("evaluated" says which).
    """
    costs = model_costs(models)
    n, s = len(x), cfg.samples
    cost = RoutingCost.of(models, *np.shape(x)[-2:], GRID, s)

    def executed(res: RoutingResult) -> dict:
        return {**result_row(res, y, n_classes, tables.plain, costs, cfg.lam), "evaluated": "executed"}

    def scored(actions: np.ndarray) -> dict:
        return {**table_row(tables.plain, actions, cost, False, False, costs, cfg.lam), "evaluated": "patch table"}

    tick("f0")  # f0 alone needs no entropy: one deterministic pass
    out = {"f0": executed(execute_routing(models, x, np.zeros((n, N_PATCHES), int), samples=0, seed=cfg.seed))}
    tick("f0_mc")  # f0 as PaSeR's f0 patches are: the mean of its MC passes
    out["f0_mc"] = executed(execute_routing(models, x, np.zeros((n, N_PATCHES), int), samples=s, seed=cfg.seed))
    out["f1"], out["f2"] = scored(np.full((n, N_PATCHES), 1)), scored(np.full((n, N_PATCHES), 2))
    def cascade(thresholds: tuple[float, ...]) -> dict:
        if not cfg.fast:
            return {**executed(run_cascade(models, x, thresholds, samples=s, seed=cfg.seed)),
                    "thresholds": list(thresholds)}
        stages = cascade_stages(tables.cascade.entropy, thresholds)
        row = table_summary(tables.cascade, stages, cascade_flops(stages, cost, s))
        return {**row, "reward": mean_reward(tables.plain, stages, costs, cfg.lam),
                "share_upward": 1.0 - row["patch_share"]["f0"], "evaluated": "patch table",
                "thresholds": list(thresholds)}

    tick("idk_cascade")
    out["idk_cascade"] = cascade(routers.thresholds)
    tick("idk_cascade_iou_match")
    out["idk_cascade_iou_match"] = {**cascade(routers.match_thresholds), "matched": routers.match_found}
    out["random"] = scored(random_actions(n, N_PATCHES, len(models), None, cfg.seed))
    tick("paser")
    out["paser"] = executed(route(models, routers.policy, x, samples=s, seed=cfg.seed))
    out["oracle"] = scored(oracle_actions(tables.plain, costs, cfg.lam))
    return {name: out[name] for name in METHODS}


def fit_routers(tr: Trained, inp: Inputs, test: Tables, cfg: RoutingBenchConfig, prog: StageBar) -> tuple[Routers, dict]:
    """Cascade thresholds on val (B4), and the cheapest cascade on the test table reaching PaSeR's IoU."""
    prog.tick("cascade search (val)")
    vx, vy = inp.splits["val"]
    h, w = vx.shape[-2:]
    cost = RoutingCost.of(tr.models, h, w, GRID, cfg.samples)
    costs = model_costs(tr.models)
    val_table, _ = build_patch_table(tr.models, vx, vy, GRID, cfg.samples, cfg.seed, mc_models=(1,), with_nll=True)
    search = search_thresholds(val_table, cost, costs, steps=5, stage_samples=cfg.samples)
    pcost = RoutingCost.of(tr.models, h, w, GRID, cfg.samples, tr.policy)
    paser = table_row(test.plain, policy_actions(tr.policy, test.state), pcost, True, True, costs, cfg.lam)
    match = match_iou(test.cascade, cost, paser["iou"], steps=cfg.cascade_steps, stage_samples=cfg.samples)
    info = {"best_thresholds": list(search.best.thresholds), "val_iou": search.best.iou,
            "val_loss": search.best.loss, "lambda_idk": 0.01}
    return Routers(tr.policy, search.best.thresholds, match.point.thresholds, match.matched), info


def stage2_rows(tr: Trained, test: Tables, cfg: RoutingBenchConfig) -> dict[str, dict]:
    """The stage-2 policies (PaSeR's and the ablation arms') on the final models' test table."""
    h, w = test.state.prediction.shape[-2:]
    costs = model_costs(tr.models)
    cost = RoutingCost.of(tr.models, h, w, GRID, cfg.samples, tr.policy)
    return {name: table_row(test.plain, policy_actions(p, test.state), cost, True, True, costs, cfg.lam)
            for name, p in [("paser", tr.stage2_policy)] + [(n, a) for n, (a, _) in tr.arms.items()]}


def compare(methods: dict, front: list[CascadePoint]) -> dict:
    """The issue's targets: PaSeR vs f2 alone, the cascade's cost at PaSeR's IoU, the oracle gap."""
    p, f2, o = methods["paser"], methods["f2"], methods["oracle"]
    need = gflops_at_iou(front, p["iou"])
    return {
        "paser_iou_over_f2": p["iou"] / f2["iou"],
        "paser_gflops_over_f2": p["gflops_per_image"] / f2["gflops_per_image"],
        "cascade_gflops_at_paser_iou": need,
        "cascade_gflops_at_paser_iou_over_paser": None if need is None else need / p["gflops_per_image"],
        "cascade_max_iou": max((q.iou for q in front), default=None),
        "paser_minus_f0_mc_iou": p["iou"] - methods["f0_mc"]["iou"],
        "oracle_minus_paser_iou": o["iou"] - p["iou"],
        "oracle_minus_paser_reward": o["reward"] - p["reward"],
        "oracle_gflops_over_paser": o["gflops_per_image"] / p["gflops_per_image"],
    }
