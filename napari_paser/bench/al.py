"""`paser bench al`: label efficiency of the region samplers under simulated labeling.

For each seed, one tiny UNet is trained on a random seed set (the first budget), then every
sampler continues from a copy of it (paired comparison: same start, same data), proposing up
to each next budget in one step and retraining (`napari_paser.bench.al_sim`). Reported per sampler
and budget: mIoU mean and std over seeds on the test split; the normalised area under the
mean mIoU-budget curve (trapezoid / budget range, i.e. the average mIoU over the range); the
budget where the mean curve first reaches 95% of the fully supervised mIoU (the same start
trained on every region of the pool for as many steps as the longest AL run); the class
shares of the labeled pixels; and the wall time of a proposal step (computing what the
sampler reads + selecting) and of a retraining.

Verdicts: the comparison is paired per seed (same seed set, same test split), so
each sampler's difference to random is taken seed by seed, at every budget and for the AUC,
and reported with a percentile-bootstrap 95% interval of the mean difference (an interval
excluding 0 is a verdict, one straddling it is not). The headline budget is the sustained one
(from which the mean curve stays above 95% of full supervision), per seed too. Per-class test
IoU is reported, so a sampler that labels more of a rare class is judged by whether that
class improves. A full-supervision run that ends below an AL curve is flagged: its target is loose.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learners.atomic import atomic_write_text
from napari_paser.bench.al_sim import SHIPPED, SimConfig, Split, check_budgets, load_splits, sim_sampler, simulate, start
from napari_paser.errors import PaserInputError
from sampling.regions import RegionPool
from sampling.registry import SAMPLERS


@dataclass(frozen=True)
class ALBenchConfig:
    data: Path
    out: Path
    samplers: tuple[str, ...] = SAMPLERS
    budgets: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    seeds: int = 3
    dqn: Path | None = None
    sim: SimConfig = field(default_factory=SimConfig)
    pool_splits: tuple[str, ...] = ("pretrain", "finetune")
    test_split: str = "test"
    crop: int | None = None
    command: str = ""
    progress: bool = True


def normalised_auc(budgets: Sequence[float], miou: Sequence[float]) -> float:
    """Trapezoid area under mIoU(budget) divided by the budget range: the curve's mean mIoU."""
    b, m = np.asarray(budgets, dtype=np.float64), np.asarray(miou, dtype=np.float64)
    if len(b) < 2 or b[-1] <= b[0]:
        raise PaserInputError("the area under the curve needs at least two increasing budgets")
    return float(np.sum((m[1:] + m[:-1]) / 2 * np.diff(b)) / (b[-1] - b[0]))


def budget_to_reach(budgets: Sequence[int], miou: Sequence[float], target: float) -> int | None:
    """The first budget whose mIoU is at least `target`, or None if the curve never gets there."""
    for b, m in zip(budgets, miou):
        if m >= target:
            return int(b)
    return None


def budget_to_stay(budgets: Sequence[int], miou: Sequence[float], target: float) -> int | None:
    """The first budget from which the curve stays at or above `target` (None if its last point is
    below): a single seed's curve can touch the target early and drop again."""
    below = [i for i, m in enumerate(miou) if m < target]
    if not below:
        return int(budgets[0])
    return None if below[-1] == len(miou) - 1 else int(budgets[below[-1] + 1])


def crossing(budgets: Sequence[float], miou: Sequence[float], target: float) -> float | None:
    """Where the curve first reaches `target`, linearly interpolated between budgets."""
    for i, (b, m) in enumerate(zip(budgets, miou)):
        if m >= target:
            if i == 0:
                return float(b)
            b0, m0 = budgets[i - 1], miou[i - 1]
            return float(b0 + (target - m0) / (m - m0) * (b - b0))
    return None


def bootstrap_ci(values: Sequence[float], n_boot: int = 4000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of `values` (paired per-seed differences) and its percentile-bootstrap interval.

    Resamples the seeds with replacement `n_boot` times; the interval is the (1 - level) / 2
    and (1 + level) / 2 quantiles of the resampled means. One value gives a zero-width interval.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": round(float(v.mean()), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4), "n": int(v.size)}


def verdict(ci: dict) -> str:
    """'better' / 'worse' when the interval excludes 0, else 'tie'."""
    if ci["mean"] is None:
        return "n/a"
    return "better" if ci["lo"] > 0 else "worse" if ci["hi"] < 0 else "tie"


def paired_differences(traces: list, baseline: list, rare: int) -> dict:
    """Per-seed differences of a sampler to the baseline (same seeds, in order): mIoU at each budget,
    AUC, and the rare class's final IoU, each with its bootstrap interval and verdict."""
    a, b = np.array([t.miou for t in traces]), np.array([t.miou for t in baseline])
    budgets = traces[0].budgets
    auc = [normalised_auc(budgets, x) - normalised_auc(budgets, y) for x, y in zip(a, b)]
    rare_d = [t.class_iou[-1][rare] - u.class_iou[-1][rare] for t, u in zip(traces, baseline)]
    at = [bootstrap_ci(a[:, i] - b[:, i]) for i in range(len(budgets))]
    out = {"auc": bootstrap_ci(auc), "miou_at_budget": at, "rare_class_iou_final": bootstrap_ci(rare_d),
           "auc_wins": int(np.sum(np.array(auc) > 0)), "seeds": len(auc)}
    out["auc"]["verdict"] = verdict(out["auc"])
    out["rare_class_iou_final"]["verdict"] = verdict(out["rare_class_iou_final"])
    for ci in at:
        ci["verdict"] = verdict(ci)
    return out


@dataclass(frozen=True)
class StoredTrace:
    """What `paired_differences` reads of one seed's trace, rebuilt from a results JSON."""

    budgets: list
    miou: list
    class_iou: list  # [final per-class IoU]: only the last budget is stored per seed


def stored_traces(summary: dict, n: int) -> list[StoredTrace]:
    """The first n seeds of a sampler's summary (`summarise` output) as traces."""
    return [StoredTrace(summary["budgets"], m, [c]) for m, c in
            zip(summary["miou_per_seed"][:n], summary["class_iou_final_per_seed"][:n])]


def vs_taudis(samplers: dict, rare: int) -> dict:
    """Each DQN sampler's paired per-seed differences to TAUDIS (the question: is the DQN at or above
    TAUDIS?), over the seeds both ran; {} without TAUDIS."""
    if "taudis" not in samplers:
        return {}
    out = {}
    for name, s in samplers.items():
        if name.startswith("dqn"):
            n = min(len(s["miou_per_seed"]), len(samplers["taudis"]["miou_per_seed"]))
            out[name] = paired_differences(stored_traces(s, n), stored_traces(samplers["taudis"], n), rare)
    return out


def full_supervision(base, test: Split, steps: int) -> float:
    """mIoU of the seed-trained model trained further on every region of the pool."""
    learner = base.clone()
    learner.pool.mark_labeled(learner.pool.ids)
    learner.fit(steps)
    return learner.miou(test)


def summarise(traces: list, full: float, n_classes: int, rare: int) -> dict:
    """Mean/std curves, AUC, budget to 95% of full supervision, labeled class shares, per-class
    IoU, timings."""
    budgets = traces[0].budgets
    m = np.array([t.miou for t in traces])
    mean, std = m.mean(0), m.std(0)
    counts = np.array([t.class_counts for t in traces], dtype=np.float64)  # (seeds, budgets, C)
    shares = counts / counts.sum(-1, keepdims=True)
    target = 0.95 * full
    return {
        "budgets": budgets,
        "miou_mean": np.round(mean, 4).tolist(),
        "miou_std": np.round(std, 4).tolist(),
        "miou_per_seed": np.round(m, 4).tolist(),
        "auc": round(normalised_auc(budgets, mean), 4),
        "auc_per_seed": [round(normalised_auc(budgets, r), 4) for r in m],
        "budget_to_95": budget_to_reach(budgets, mean, target),
        "budget_to_95_interpolated": _round(crossing(budgets, mean, target)),
        "budget_to_95_sustained": budget_to_stay(budgets, mean, target),
        "budget_to_95_sustained_per_seed": [budget_to_stay(budgets, r, target) for r in m],
        "labeled_class_fraction": np.round(shares.mean(0), 4).tolist(),  # per budget, per class
        "labeled_class_fraction_final": np.round(shares[:, -1].mean(0), 4).tolist(),
        "rare_class_share_final": round(float(shares[:, -1, rare].mean()), 4),
        "class_iou_mean": np.round(np.nanmean(np.array([t.class_iou for t in traces], dtype=np.float64), 0),
                                   4).tolist(),  # per budget, per class
        "class_iou_final_per_seed": [t.class_iou[-1] for t in traces],
        "propose_seconds_per_step": round(float(np.mean([s for t in traces for s in t.propose_seconds])), 3),
        "train_seconds_per_step": round(float(np.mean([s for t in traces for s in t.train_seconds])), 3),
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run_bench(cfg: ALBenchConfig) -> dict:
    """Run every sampler for every seed; write the JSON (and a PNG beside it); return the results."""
    unknown = [s for s in cfg.samplers if s not in (*SAMPLERS, SHIPPED)]
    if unknown:
        raise PaserInputError(f"unknown sampler(s) {unknown}; choose from {', '.join((*SAMPLERS, SHIPPED))}")
    if cfg.seeds < 1:
        raise PaserInputError("--seeds must be at least 1")
    (pool, test), n_classes = load_splits(cfg.data, [cfg.pool_splits, (cfg.test_split,)], cfg.crop)
    samplers = {name: sim_sampler(name, cfg.sim, cfg.dqn) for name in cfg.samplers}  # fail early on a bad agent
    t_start = time.time()
    probe = RegionPool(pool.images.shape, cfg.sim.region)
    budgets = check_budgets(cfg.budgets, len(probe))
    full_steps = cfg.sim.seed_steps + cfg.sim.train_steps * (len(budgets) - 1)
    traces: dict[str, list] = {name: [] for name in samplers}
    fulls = []
    total = cfg.seeds * (len(samplers) * (len(budgets) - 1))
    bar = tqdm(total=total, desc="bench al", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    for seed in range(cfg.seeds):
        base = start(pool, n_classes, cfg.sim, budgets[0], seed)
        fulls.append(full_supervision(base, test, full_steps))
        for i, (name, sampler) in enumerate(samplers.items()):
            rng = np.random.default_rng([seed, i + 1])
            traces[name].append(simulate(base.clone(), sampler, name, test, budgets, rng, bar))
    bar.close()
    full = float(np.mean(fulls))
    class_fraction = np.bincount(pool.labels.ravel(), minlength=n_classes)[:n_classes] / pool.labels.size
    rare = int(np.argmin(class_fraction))
    summaries = {name: summarise(tr, full, n_classes, rare) for name, tr in traces.items()}
    best_end = max(s["miou_mean"][-1] for s in summaries.values())
    results = {
        "dataset": str(cfg.data),
        "command": cfg.command,
        "machine": f"{platform.node()} {platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "pool": {"splits": list(cfg.pool_splits), "slices": int(pool.images.shape[0]),
                 "slice_shape": list(pool.images.shape[1:]), "regions": len(probe),
                 "class_fraction": np.round(class_fraction, 4).tolist()},
        "test": {"split": cfg.test_split, "slices": int(test.images.shape[0])},
        "seeds": cfg.seeds,
        "budget_unit": "labeled regions, seed set included (the first budget is the random seed set)",
        "sim": asdict(cfg.sim),
        "crop": cfg.crop,
        "dqn_agent": str(cfg.dqn) if cfg.dqn else None,
        "full_supervision_miou": round(full, 4),
        "full_supervision_miou_per_seed": [round(f, 4) for f in fulls],
        "full_supervision_steps": full_steps,
        "target_95": round(0.95 * full, 4),
        "rare_class": rare,
        "loose_target": bool(round(full, 4) < best_end),  # full supervision ends below an AL curve
        "samplers": summaries,
        "vs_random": ({name: paired_differences(tr, traces["random"], rare) for name, tr in traces.items()
                       if name != "random"} if "random" in traces else {}),
        "vs_taudis": vs_taudis(summaries, rare),
        "agent_train_seconds": agent_seconds(samplers),
        "wall_seconds": round(time.time() - t_start, 1),
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    results["plot"] = str(plot(results, cfg.out.with_suffix(".png")))
    atomic_write_text(cfg.out, json.dumps(results, indent=1) + "\n")
    return results


def agent_seconds(samplers: dict) -> dict:
    """Training wall time of each DQN sampler's agent, as its checkpoint recorded it."""
    out = {}
    for name, sampler in samplers.items():
        meta = getattr(getattr(sampler, "agent", None), "meta", None)
        if meta is not None:
            out[name] = (meta.get("seconds") or {}).get("total")
    return out


def plot(results: dict, path: Path) -> Path:
    """mIoU against budget per sampler (mean, shaded +-std) with the 95% target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, s in results["samplers"].items():
        b, m, sd = np.array(s["budgets"]), np.array(s["miou_mean"]), np.array(s["miou_std"])
        ax.plot(b, m, marker="o", ms=3, label=f"{name} (AUC {s['auc']:.3f})")
        ax.fill_between(b, m - sd, m + sd, alpha=0.15)
    ax.axhline(results["full_supervision_miou"], color="k", lw=0.8, label="full supervision")
    ax.axhline(results["target_95"], color="k", lw=0.8, ls="--", label="95% of full")
    ax.set_xlabel("labeled regions")
    ax.set_ylabel("test mIoU")
    ax.set_title(f"{Path(results['dataset']).name}: {results['seeds']} seed(s)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _ci(ci: dict) -> str:
    return "-" if ci["mean"] is None else f"{ci['mean']:+.4f} [{ci['lo']:+.4f},{ci['hi']:+.4f}]"


def format_table(results: dict) -> str:
    """One line per sampler, the sustained budget to 95% first (mean curve, then per seed), then AUC
    and its paired difference to random with the bootstrap 95% interval, final mIoU, the rare
    class's labeled share and final IoU, and a proposal step's time."""
    rare = results.get("rare_class", 0)
    lines = [f"full supervision mIoU {results['full_supervision_miou']:.4f} (95%: {results['target_95']:.4f}); "
             f"{results['seeds']} seeds, paired; rare class {rare}"]
    if results.get("loose_target"):
        lines.append("WARNING: full supervision ends below an AL curve: the 95% target is loose "
                     "(give it more steps: --train-steps)")
    lines.append(f"{'sampler':<12}{'stay95':>7}  {'per seed':<22}{'AUC':>7}  {'AUC - random [95% CI]':<28}"
                 f"{'final':>8}{'rare lab':>9}{'rare IoU':>9}{'propose s':>10}")
    vs = results.get("vs_random", {})
    for name, s in results["samplers"].items():
        stay = "-" if s["budget_to_95_sustained"] is None else str(s["budget_to_95_sustained"])
        per = ",".join("-" if b is None else str(b) for b in s["budget_to_95_sustained_per_seed"])
        diff = f"{_ci(vs[name]['auc'])} {vs[name]['auc']['verdict']}" if name in vs else ""
        rare_iou = s["class_iou_mean"][-1][rare]
        lines.append(f"{name:<12}{stay:>7}  {per:<22}{s['auc']:>7.4f}  {diff:<28}{s['miou_mean'][-1]:>8.4f}"
                     f"{s['rare_class_share_final']:>9.3f}{rare_iou:>9.3f}{s['propose_seconds_per_step']:>10.2f}")
    for name, d in results.get("vs_taudis", {}).items():
        lines.append(f"{name} - taudis, paired over {d['seeds']} seeds: AUC {_ci(d['auc'])} {d['auc']['verdict']}, "
                     f"ahead on {d['auc_wins']} of {d['seeds']}")
    return "\n".join(lines)
