"""`paser bench routing`: PaSeR against every baseline on a dataset's test split.

Pipeline, on one run folder from `paser train` (f0, f1, f2 pretrained on the pretrain split):
stage 2 trains the policy on the rl split (by default along the exact expected-reward
gradient; for the ablation, policies from the same initial weights trained by sampled REINFORCE
with and without the mean-reward baseline); stage 3 fine-tunes
copies of f1, f2 with the policy on the finetune split. The fine-tuned set {f0, f1', f2'} is
what every method is evaluated with, so rows differ only in how patches are routed; the
stage-2 policies (every ablation arm) are scored beside them, and the pretrained
models' test IoU is copied from the run's metrics.json, to show what stage 3 changed.
IDK-cascade thresholds are grid-searched on the val split (appendix B4); its IoU-matched
variant (Table 2) is the cheapest setting on the test table reaching PaSeR's test IoU.
PaSeR, the cascades and f0 alone are executed on the test images; methods that only run
models in eval mode are scored on the test `PatchTable` (identical segmentation, one pass of
the large model instead of several). FLOPs come from real forward passes per
patch (`RoutingCost`). Sweeps and the cascade's Pareto curve are scored on the tables too.

Noise (the paper's Table 3): copies of f1', f2' are fine-tuned briefly on clean + noisy
patches of the pretrain split; f0 and the policy are not retrained; every method runs on
the noisy test images with these models and is compared with its clean row.

Splits here are ~50x smaller than the paper's (436/422/422 images), so policy training uses
smaller batches and a larger learning rate than appendix B2 (`--batch-size`, `--rl-lr`),
otherwise the policy would take a handful of Adam steps in total.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from learners.atomic import atomic_write_text
from learners.routing.cascade import (CascadePoint, cascade_flops, cascade_stages, evaluate_cascade, match_iou,
                              oracle_actions, pareto_front, random_actions, run_cascade, search_thresholds,
                              threshold_grid, threshold_ranges)
from learners.checkpoint import load_checkpoint
from learners.routing.policy import PolicyConfig, PolicyNet
from learners.routing.reward import PatchTable, image_rewards
from learners.routing.router import (RoutingCost, RoutingResult, build_patch_table, execute_routing, model_costs,
                             policy_probabilities, route, table_summary)
from learners.generators import drain
from learners.routing.bank import iter_bank_training
from learners.routing.training import (FinetuneConfig, PolicyEpoch, RLConfig, RoutingData, finetune,
                                      iter_policy_training)
from learners.training import TrainConfig, train
from napari_paser.data.dataset import normalise, read_dataset, robust_range
from napari_paser.data.degrade import salt_and_pepper
from napari_paser.errors import PaserInputError
from napari_paser.jobs.policy import policy_tick
from learners.routing import GRID

ROLES = ("f0", "f1", "f2")
N_PATCHES = GRID[0] * GRID[1]
METHODS = ("f0", "f0_mc", "f1", "f2", "idk_cascade", "idk_cascade_iou_match", "random", "paser", "oracle")
METHOD_LABELS = {"f0": "f0 (one pass)", "f0_mc": "f0 (MC mean, as PaSeR computes it)"}
"""f0 alone two ways: one deterministic pass (the cheapest f0), and the mean of its MC-dropout passes,
which is what PaSeR's f0 patches are; routing is credited only for what it adds over the second."""
SWEEP_LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
RANDOM_STEP = 0.25  # simplex grid of the random policy's routing probabilities


@dataclass(frozen=True)
class BenchConfig:
    """Options of one benchmark run (the CLI flags)."""

    data: Path
    run: Path
    out: Path
    lam: float = 0.5
    noise: str = "sp:0.01"
    sweep: bool = False
    epochs_rl: int = 100
    epochs_ft: int = 10
    ft_models: bool = True  # False: stage 3 tunes the policy only (f1..fm stay as pretrained)
    epochs_noise: int = 2
    noise_steps: int = 25  # patch batches (of 16) per noise fine-tuning epoch: bounds the large model's cost
    batch_size: int = 4
    rl_lr: float = 3e-3
    rollouts: int = 1  # REINFORCE: routings per slice and step (> 1: per-patch leave-one-out baseline)
    flips: bool = False  # mirror augmentation of policy training
    gradient: str = "expected"  # stage 2 (and policy-only stage 3): "expected" or "reinforce"
    samples: int = 5
    seed: int = 0
    sweep_lambdas: tuple[float, ...] = SWEEP_LAMBDAS
    cascade_steps: int = 11
    threads: int | None = None  # torch threads; 1 is fastest for the small policy on a busy machine
    fast: bool = False  # score the cascades on the patch table too (same decisions up to MC-dropout seeds)
    progress: bool = True

    def command(self) -> str:
        """The `paser bench routing` command line that reproduces this run."""
        flags = {"--lambda": self.lam, "--noise": self.noise, "--epochs-rl": self.epochs_rl,
                 "--epochs-ft": self.epochs_ft, "--epochs-noise": self.epochs_noise,
                 "--noise-steps": self.noise_steps, "--batch-size": self.batch_size,
                 "--rl-lr": self.rl_lr, "--gradient": self.gradient, "--rollouts": self.rollouts,
                 "--samples": self.samples, "--seed": self.seed}
        parts = ["paser bench routing", f"--data {self.data}", f"--run {self.run}", f"--out {self.out}"]
        if not self.ft_models:
            parts.append("--policy-only-ft")
        if self.flips:
            parts.append("--flips")
        if self.sweep:
            flags["--sweep-lambdas"] = ",".join(map(str, self.sweep_lambdas))
        if self.threads:
            flags["--threads"] = self.threads
        parts += [f"{k} {v}" for k, v in flags.items()]
        parts += [f for f, on in (("--sweep", self.sweep), ("--fast", self.fast)) if on]
        return " ".join(parts)

    def rl_config(self) -> RLConfig:
        """Stage 2 settings at the benchmark's lambda."""
        return RLConfig(epochs=self.epochs_rl, batch_size=self.batch_size, lr=self.rl_lr, lam=self.lam,
                        rollouts=self.rollouts, flips=self.flips, gradient=self.gradient, seed=self.seed)

    def check(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise PaserInputError(f"--lambda must lie in [0, 1], got {self.lam}")
        if min(self.epochs_rl, self.epochs_ft, self.epochs_noise, self.noise_steps, self.batch_size,
               self.rollouts) < 1:
            raise PaserInputError("--epochs-rl, --epochs-ft, --epochs-noise, --noise-steps, --batch-size and "
                                  "--rollouts must be at least 1")
        if not self.sweep_lambdas or not all(0.0 <= v <= 1.0 for v in self.sweep_lambdas):
            raise PaserInputError(f"--sweep-lambdas must be values in [0, 1], got {self.sweep_lambdas}")
        if self.threads is not None and self.threads < 1:
            raise PaserInputError(f"--threads must be at least 1, got {self.threads}")
        if self.samples < 1:
            raise PaserInputError(f"--samples must be at least 1 (f0's entropy needs MC passes), got {self.samples}")
        parse_noise(self.noise)


def parse_noise(text: str) -> float:
    """'sp:0.01' -> 0.01, the salt-and-pepper fraction (the only noise the paper's Table 3 uses)."""
    kind, _, value = text.partition(":")
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if kind.strip().lower() != "sp" or not 0.0 < amount <= 1.0:
        raise PaserInputError(f"--noise {text!r}: use sp:FRACTION, e.g. sp:0.01 for 1% salt-and-pepper pixels")
    return amount


# ----------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The dataset's splits (normalised) and the run's pretrained models."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    models: list[nn.Module]
    n_classes: int
    normalisation: dict
    dataset: str


def load_inputs(cfg: BenchConfig) -> Inputs:
    """Read the dataset and f0/f1/f2; normalise by the dataset's robust range (as `paser train` did)."""
    ds = read_dataset(cfg.data)
    missing = [s for s in ("pretrain", "rl", "finetune", "val", "test") if not ds.split.get(s)]
    if missing:
        raise PaserInputError(f"{cfg.data}: splits {missing} are empty; the benchmark needs at least 5 slices")
    models = [load_checkpoint(Path(cfg.run) / f"{r}.pt") for r in ROLES]
    classes = {c.config.n_classes for c in models}
    if classes != {ds.n_classes}:
        raise PaserInputError(f"the models in {cfg.run} predict {sorted(classes)} classes but {cfg.data} has "
                              f"{ds.n_classes}; benchmark a run trained on this dataset")
    lo, hi = robust_range(ds.images)
    x = normalise(ds.images, lo, hi)
    splits = {name: (x[idx], ds.labels[idx]) for name, idx in ds.split.items()}
    trained = models[0].meta.get("normalisation", {})
    norm = {"lo": lo, "hi": hi, "checkpoint_lo": trained.get("lo"), "checkpoint_hi": trained.get("hi")}
    return Inputs(splits, [c.model for c in models], ds.n_classes, norm, str(cfg.data))


# ----------------------------------------------------------------------------- policy training


def epochs_to_converge(values: Sequence[float], tol: float = 0.05) -> int:
    """First epoch (1-based) from which the curve stays within tol * its range of its final value."""
    v = np.asarray(values, dtype=np.float64)
    span = float(v.max() - v.min()) if v.size else 0.0
    if span == 0.0:
        return 1
    off = np.abs(v - v[-1]) > tol * span
    return int(np.flatnonzero(off).max()) + 2 if off.any() else 1


STAGE2_ARMS = {"reinforce": dict(gradient="reinforce", baseline=True),
               "reinforce_no_baseline": dict(gradient="reinforce", baseline=False)}
"""The ablation arms of stage 2 beside the benchmark's own setting (`--gradient`)."""


def train_stage2(policy: PolicyNet, data: RoutingData, cfg: BenchConfig, bar: tqdm | None = None,
                 **overrides) -> list[PolicyEpoch]:
    """Stage 2 on a prepared split at the benchmark's lambda (RLConfig `overrides`), ticking `bar` per epoch."""
    rl = replace(cfg.rl_config(), **overrides)
    return _ticking(iter_policy_training(policy, data, rl), bar)


def _ticking(gen, bar: tqdm | None):
    """Run a generator of policy epochs to its return value, ticking `bar` once per epoch."""
    return drain(gen, None if bar is None else lambda epoch: policy_tick(bar, epoch))


def history_summary(history: list[PolicyEpoch]) -> dict:
    """Final and per-epoch rewards of a policy training run, and when it converged."""
    greedy = [h.greedy_reward for h in history]
    sampled = [h.mean_reward for h in history]
    return {"epochs": len(history), "final_greedy_reward": greedy[-1], "final_sampled_reward": sampled[-1],
            "epochs_to_converge": epochs_to_converge(greedy),
            "sampled_reward_std_last_half": float(np.std(sampled[len(sampled) // 2:])),
            "final_share": dict(zip(ROLES, map(float, history[-1].share))),
            "greedy_reward_history": [round(g, 4) for g in greedy]}


def routing_data(models, x, y, cfg: BenchConfig) -> RoutingData:
    """A split prepared for stage 2 (every frozen model scored on every patch once)."""
    table, state = build_patch_table(models, x, y, GRID, cfg.samples, cfg.seed)
    return RoutingData.from_table(state, table, model_costs(models))


def new_policy(n_classes: int, seed: int) -> PolicyNet:
    torch.manual_seed(seed)
    return PolicyNet(PolicyConfig(n_classes=n_classes, n_models=len(ROLES), grid=GRID))


# ----------------------------------------------------------------------------- evaluation helpers


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


# ----------------------------------------------------------------------------- the methods


@dataclass
class Tables:
    """Patch tables of one image set: eval-mode f1/f2 (routers) and MC f1 (cascade)."""

    plain: PatchTable
    cascade: PatchTable
    state: object


def make_tables(models, x, y, cfg: BenchConfig) -> Tables:
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


def run_methods(models, routers: Routers, x, y, tables: Tables, cfg: BenchConfig, n_classes: int,
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


# ----------------------------------------------------------------------------- noise


def noisy_copy(images: np.ndarray, amount: float, seed: int) -> np.ndarray:
    return salt_and_pepper(images, amount, np.random.default_rng(seed))


def noise_models(models, inp: Inputs, amount: float, cfg: BenchConfig) -> list[nn.Module]:
    """f0 unchanged; copies of f1, f2 fine-tuned on clean + noisy pretrain patches (Table 3).

    No validation pass (it would cost as much as the training): the last weights are kept.
    """
    px, py = inp.splits["pretrain"]
    tx = np.concatenate([px, noisy_copy(px, amount, cfg.seed + 11)])
    tc = TrainConfig(epochs=cfg.epochs_noise, batch_size=16, lr=5e-4, patience=cfg.epochs_noise,
                     max_steps_per_epoch=cfg.noise_steps, seed=cfg.seed)
    out = [models[0]]
    for k in range(1, len(models)):
        m = copy.deepcopy(models[k])
        train(m, tx, np.concatenate([py, py]), None, None, tc, grid=GRID, progress=cfg.progress,
              desc=f"noise fine-tune f{k}")
        out.append(m)
    return out


def noise_block(models, routers: Routers, inp: Inputs, clean: dict, cfg: BenchConfig, tick) -> dict:
    """Every method on noisy test images with the noise-trained f1, f2, against its clean row.

    As in the paper's Table 3 the clean reference is the main table (models before the noise
    fine-tuning); PaSeR's clean routing does not depend on f1, f2 at all.
    """
    amount = parse_noise(cfg.noise)
    nmodels = noise_models(models, inp, amount, cfg)
    x, y = inp.splits["test"]
    xn = noisy_copy(x, amount, cfg.seed + 13)
    tick("noisy test tables")
    noisy = run_methods(nmodels, routers, xn, y, make_tables(nmodels, xn, y, cfg), cfg, inp.n_classes, tick)
    methods = {}
    for name in METHODS:
        c, z = clean[name], noisy[name]
        methods[name] = {"iou": z["iou"], "iou_clean": c["iou"], "iou_drop": c["iou"] - z["iou"],
                         "relative_drop": (c["iou"] - z["iou"]) / c["iou"] if c["iou"] else None,
                         "share_upward_clean": c["share_upward"], "share_upward": z["share_upward"],
                         "gflops_per_image": z["gflops_per_image"], "patch_share": z["patch_share"],
                         "evaluated": z["evaluated"]}
    return {"noise": cfg.noise, "setup": "f1, f2 fine-tuned on clean + noisy pretrain patches "
            f"({cfg.epochs_noise} x {cfg.noise_steps} batches of 16); f0 and the policy not retrained",
            "methods": methods}


# ----------------------------------------------------------------------------- sweeps


def sweep_curves(models, inp: Inputs, rl_data: RoutingData, test: Tables, cfg: BenchConfig, bar: tqdm) -> dict:
    """Accuracy-cost curves on the final models' test tables: PaSeR over lambda (a stage-2 policy
    per lambda, trained on the rl split's table, which is all stage 2 sees; no stage 3 per lambda),
    the cascade over thresholds, the random policy over routing probabilities, the oracle over lambda."""
    costs = model_costs(models)
    h, w = inp.splits["test"][0].shape[-2:]
    policy0 = new_policy(inp.n_classes, cfg.seed)
    cost = RoutingCost.of(models, h, w, GRID, cfg.samples, policy0)
    rl = cfg.rl_config()
    bank = _ticking(iter_bank_training(rl_data, cfg.sweep_lambdas, lambda: copy.deepcopy(policy0), rl), bar)
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


def random_curve(table: PatchTable, cost: RoutingCost, costs: np.ndarray, cfg: BenchConfig) -> list[dict]:
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


def cascade_points(table: PatchTable, cost: RoutingCost, cfg: BenchConfig) -> list[CascadePoint]:
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


# ----------------------------------------------------------------------------- the benchmark


@dataclass
class Progress:
    """One tqdm bar over all stages; `tick` names the stage and advances."""

    bar: tqdm

    def tick(self, stage: str) -> None:
        self.bar.set_description(stage, refresh=False)
        self.bar.update(1)


def total_ticks(cfg: BenchConfig) -> int:
    n = (1 + len(STAGE2_ARMS)) * cfg.epochs_rl + 4 + 5 + 6  # stage 2 arms, stages/tables/search, methods, noise
    return n + (len(cfg.sweep_lambdas) * cfg.epochs_rl if cfg.sweep else 0)


@dataclass
class Trained:
    """Stages 2 and 3: the final models and policy, and what the ablation and history need."""

    models: list[nn.Module]
    policy: PolicyNet
    stage2_policy: PolicyNet
    history: list[PolicyEpoch]
    arms: dict[str, tuple[PolicyNet, list[PolicyEpoch]]]  # stage-2 ablation: name -> (policy, history)
    finetune: object
    rl_data: RoutingData


def train_router(inp: Inputs, cfg: BenchConfig, prog: Progress) -> Trained:
    """Stage 2 (the benchmark's setting, then each ablation arm from the same initial weights),
    then stage 3 on copies of f1, f2."""
    pretrained = inp.models
    rx, ry = inp.splits["rl"]
    prog.tick("stage 2 data")
    rl_data = routing_data(pretrained, rx, ry, cfg)
    policy = new_policy(inp.n_classes, cfg.seed)
    arms = {}
    for name, overrides in STAGE2_ARMS.items():
        arm = copy.deepcopy(policy)
        prog.bar.set_description(f"stage 2 ({name})")
        arms[name] = (arm, train_stage2(arm, rl_data, cfg, prog.bar, **overrides))
    prog.bar.set_description(f"stage 2 ({cfg.gradient})")
    hist = train_stage2(policy, rl_data, cfg, prog.bar)
    stage2_policy = copy.deepcopy(policy)
    prog.tick("stage 3")
    models = [pretrained[0]] + [copy.deepcopy(m) for m in pretrained[1:]]
    fx, fy = inp.splits["finetune"]
    ft_cfg = FinetuneConfig(epochs=cfg.epochs_ft, batch_size=cfg.batch_size, lr=cfg.rl_lr, lam=cfg.lam, seed=cfg.seed,
                            train_models=cfg.ft_models, rollouts=cfg.rollouts, flips=cfg.flips,
                            gradient=cfg.gradient)
    ft = finetune(models, policy, fx, fy, ft_cfg, samples=cfg.samples, seed=cfg.seed)
    return Trained(models, policy, stage2_policy, hist, arms, ft, rl_data)


def fit_routers(tr: Trained, inp: Inputs, test: Tables, cfg: BenchConfig, prog: Progress) -> tuple[Routers, dict]:
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


def run_bench(cfg: BenchConfig) -> dict:
    """The whole benchmark; writes cfg.out (JSON, and a PNG beside it with --sweep); returns the results."""
    cfg.check()
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    inp = load_inputs(cfg)
    x, y = inp.splits["test"]
    with tqdm(total=total_ticks(cfg), disable=not cfg.progress, dynamic_ncols=True) as bar:
        prog = Progress(bar)
        tr = train_router(inp, cfg, prog)
        prog.tick("test tables")
        test = make_tables(tr.models, x, y, cfg)
        routers, idk = fit_routers(tr, inp, test, cfg, prog)
        methods = run_methods(tr.models, routers, x, y, test, cfg, inp.n_classes, prog.tick)
        s2 = stage2_rows(tr, test, cfg)
        cost = RoutingCost.of(tr.models, *x.shape[-2:], GRID, cfg.samples)
        comparison = compare(methods, pareto_front(cascade_points(test.cascade, cost, cfg)))
        noise = noise_block(tr.models, routers, inp, methods, cfg, prog.tick)
        curves = sweep_curves(tr.models, inp, tr.rl_data, test, cfg, bar) if cfg.sweep else None
    results = {
        "dataset": inp.dataset, "command": cfg.command(), "run": str(cfg.run),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": machine(),
        "provenance": provenance(cfg),
        "normalisation": inp.normalisation,
        "split_sizes": {k: len(v[0]) for k, v in inp.splits.items()},
        "image_size": list(x.shape[-2:]),
        "params": {r: int(sum(p.numel() for p in m.parameters())) for r, m in zip(ROLES, tr.models)},
        "cost_shares": dict(zip(ROLES, map(float, model_costs(tr.models)))),
        "methods": methods,
        "method_labels": METHOD_LABELS,
        "comparison": comparison,
        "stage2": {"paser": {"gradient": cfg.gradient, **history_summary(tr.history), "test": s2["paser"]},
                   **{name: {**history_summary(hist), "test": s2[name]} for name, (_, hist) in tr.arms.items()}},
        "stage3": {"epochs": len(tr.finetune.history), "patches_trained": tr.finetune.patches_trained,
                   "final_greedy_reward": tr.finetune.history[-1].greedy_reward if tr.finetune.history else None},
        "pretrained_test_iou": pretrained_models(cfg),
        "idk_search": idk,
        "noise": noise,
        "seconds": round(time.time() - started, 1),
    }
    return write_results(results, curves, cfg, methods)


def write_results(results: dict, curves: dict | None, cfg: BenchConfig, methods: dict) -> dict:
    """The JSON (NaN as null), and with curves the PNG beside it."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if curves is not None:
        results["curves"] = curves
        results["comparison"]["along_sweep"] = cascade_cost_along_sweep(curves)
        png = out.with_suffix(".png")
        plot_curves(curves, methods, png, f"{Path(results['dataset']).name}: test mIoU vs GFLOPs (lambda={cfg.lam})")
        results["plot"] = str(png)
    atomic_write_text(out, json.dumps(_clean(results), indent=2))
    return results


def provenance(cfg: BenchConfig) -> dict:
    """How the data and the models were made, from the files `paser data degrade` and `paser train` leave."""
    out = {}
    for key, path in (("degradation", Path(cfg.data) / "degradation.json"), ("train", Path(cfg.run) / "run.json")):
        try:
            out[key] = json.loads(path.read_text())
        except (OSError, ValueError):
            out[key] = None
    return out


def machine() -> dict:
    """Where the numbers were measured (BENCHMARKS.md names the machine of every figure)."""
    import os
    import platform

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def stage2_rows(tr: Trained, test: Tables, cfg: BenchConfig) -> dict[str, dict]:
    """The stage-2 policies (PaSeR's and the ablation arms') on the final models' test table."""
    h, w = test.state.prediction.shape[-2:]
    costs = model_costs(tr.models)
    cost = RoutingCost.of(tr.models, h, w, GRID, cfg.samples, tr.policy)
    return {name: table_row(test.plain, policy_actions(p, test.state), cost, True, True, costs, cfg.lam)
            for name, p in [("paser", tr.stage2_policy)] + [(n, a) for n, (a, _) in tr.arms.items()]}


def pretrained_models(cfg: BenchConfig) -> dict:
    """Test mIoU of the models before stage 3, as `paser train` measured them (metrics.json)."""
    try:
        metrics = json.loads((Path(cfg.run) / "metrics.json").read_text())
        return {r: metrics["models"][r]["iou"] for r in ROLES}
    except (OSError, ValueError, KeyError):
        return {}


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


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def format_table(results: dict) -> str:
    """The printed results table: one row per method, noise columns beside it."""
    noise = results["noise"]["methods"]
    head = (f"{'method':<23}{'mIoU':>7}{'GFLOPs':>9}{'IoU/GF':>8}{'f0':>6}{'f1':>6}{'f2':>6}"
            f"{'reward':>8}{'noisy':>7}{'drop':>7}{'up c/n':>12}")
    rows = [head]
    for name in METHODS:
        m, z = results["methods"][name], noise[name]
        s = m["patch_share"]
        rows.append(f"{name:<23}{m['iou']:>7.3f}{m['gflops_per_image']:>9.3f}{m['iou_per_gflop']:>8.3f}"
                    f"{s['f0']:>6.2f}{s['f1']:>6.2f}{s['f2']:>6.2f}{m['reward']:>8.3f}{z['iou']:>7.3f}"
                    f"{z['iou_drop']:>7.3f}{z['share_upward_clean']:>6.2f}/{z['share_upward']:.2f}")
    rows.append("; ".join(f"{k}: {v}" for k, v in METHOD_LABELS.items()))
    c = results["comparison"]
    need = c["cascade_gflops_at_paser_iou_over_paser"]
    rows.append(f"PaSeR/f2: IoU {c['paser_iou_over_f2']:.1%}, GFLOPs {c['paser_gflops_over_f2']:.1%}; cascade at "
                f"PaSeR's IoU: {'unreachable' if need is None else f'{need:.2f}x'} PaSeR's GFLOPs; "
                f"oracle - PaSeR: IoU {c['oracle_minus_paser_iou']:+.3f}, reward {c['oracle_minus_paser_reward']:+.3f}")
    for name, arm in results["stage2"].items():
        label = f"{name} ({arm['gradient']})" if "gradient" in arm else name
        rows.append(f"stage 2 {label}: greedy rl R "
                    f"{arm['final_greedy_reward']:.3f}, converged at epoch {arm['epochs_to_converge']}; test mIoU "
                    f"{arm['test']['iou']:.3f}, reward {arm['test']['reward']:.3f}, shares "
                    + "/".join(f"{v:.2f}" for v in arm["test"]["patch_share"].values()))
    return "\n".join(rows)
