"""The session's retraining under each learning-rate schedule (issue 15, the learning-rate agent):
does `Session.retrain` with scheduler "agent" help against "fixed" and "cosine"?

Drives the real labeling loop of `bench_coldstart.py` (its `Loop`: a real `Session` started with
the shipped weights, proposals by TAUDIS on the maps of every pool slice, each proposed 32x32
region accepted with its ground truth, every 5th held out, `Session.retrain` after each batch
with the guard and the warm lr) on SOC slices degraded with `--preset`, central `--crop` square,
`--pool` slices per seed from the non-test slices (same draw as the cold-start benchmark), and
only the retrain config's `scheduler` differs between runs of a seed (`RETRAIN_CONFIG` with
scheduler=S, seed=seed). With "agent" the session keeps the Q-learning agent's table across its
retrains (`session.state.lr_agents`), as it does for a person.

Reported per scheduler and labeled-pixel budget: test mIoU (mean, std, per seed), the mean over
budgets, and the paired per-seed difference to "fixed" (at each budget and for the mean over
budgets) with a percentile-bootstrap 95% interval (`napari_paser.bench.al.bootstrap_ci`); the
retrains whose weights the guard rejected; the agent's decisions; wall seconds per run.
The proposals follow each run's own model, so the labeled sets differ between schedulers after
the first retrain: the comparison is of the whole loop, as a person would run it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_retrain_scheduler.py [--schedulers fixed,cosine,agent]
        [--seeds 3] [--preset lowres-varying] [--crop 192] [--pool 6] [--budgets 1024,3072,12288,49152]
        [--seed-list 3,4] [--out benchmarks/results/retrain-scheduler.json]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_retrain_scheduler.py --merge A.json B.json --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, SOC
from labeling_loop import Loop, load, miou
from learners.atomic import atomic_write_text
from learners.inference import predict_classes
from napari_paser.bench.al import bootstrap_ci, verdict
from napari_paser.data.dataset import normalise
from napari_paser.session.training import RETRAIN_CONFIG


def run(preset: str, seed: int, scheduler: str, images, labels, splits, args) -> dict:
    """One labeling loop through a real Session, retraining with `scheduler`; test mIoU per budget."""
    rng = np.random.default_rng(seed)  # the cold-start benchmark's pool draw
    test = splits["test"]
    others = [i for i in range(len(images)) if i not in test]
    pool = sorted(rng.choice(others, args.pool, replace=False).tolist())
    with tempfile.TemporaryDirectory() as tmp:
        loop = Loop(Path(tmp) / "s", images[pool], labels[pool], 32, args.sampler, False, seed)
        loop.cfg = replace(RETRAIN_CONFIG, seed=seed, scheduler=scheduler)
        s = loop.s
        test_norm = normalise(images[test], s.state.image["lo"], s.state.image["hi"])
        out = {"test_miou": [], "val_miou": [], "pixels": [], "decisions": [], "messages": []}
        t0 = time.time()
        for budget in args.budgets:
            loop.label_until(budget)
            out["pixels"].append(loop.labeled())
            out["test_miou"].append(round(miou(predict_classes(s.models["f0"], test_norm), labels[test]), 4))
            out["val_miou"].append(s.state.curve[-1].val_miou if s.state.curve else None)
            out["messages"].append(loop.last_message)
            agent = s.state.lr_agents.get("f0")
            out["decisions"].append(agent["decisions"] if agent else [])
            print(f"  {preset} seed {seed} {scheduler:7s} {loop.labeled():7d} px: test {out['test_miou'][-1]:.4f}"
                  f"  [{loop.last_message}]", flush=True)
        out["retrains_kept_previous"] = [loop.kept, loop.retrains]
        out["seconds"] = round(time.time() - t0, 1)
        if "f0" in s.state.lr_agents:
            out["q_table"] = s.state.lr_agents["f0"]["q_table"]
    return out


def summarise(runs: dict, schedulers: list[str], budgets: list[int]) -> dict:
    """Per scheduler: mean/std/per-seed test mIoU per budget, mean over budgets; paired differences to
    "fixed" (or the first scheduler) with bootstrap 95% intervals."""
    base = "fixed" if "fixed" in schedulers else schedulers[0]
    seeds = sorted(set.intersection(*(set(runs[s]) for s in schedulers)), key=int)
    table = {}
    for name in schedulers:
        m = np.array([runs[name][k]["test_miou"] for k in seeds])
        table[name] = {"test_miou_mean": m.mean(0).round(4).tolist(), "test_miou_std": m.std(0).round(4).tolist(),
                       "test_miou_per_seed": m.tolist(), "mean_over_budgets": round(float(m.mean()), 4),
                       "seconds_per_run": round(float(np.mean([runs[name][k]["seconds"] for k in seeds])), 1),
                       "kept_previous": [runs[name][k]["retrains_kept_previous"] for k in seeds]}
        if name == base:
            continue
        b = np.array([runs[base][k]["test_miou"] for k in seeds])
        at = [bootstrap_ci(m[:, i] - b[:, i]) for i in range(len(budgets))]
        over = bootstrap_ci((m - b).mean(1))
        for ci in (*at, over):
            ci["verdict"] = verdict(ci)
        table[name][f"vs_{base}"] = {"at_budget": at, "mean_over_budgets": over,
                                     "wins": int(np.sum((m - b).mean(1) > 0)), "seeds": len(seeds)}
    return {"seeds": seeds, "baseline": base, "schedulers": table}


def format_table(summary: dict, budgets: list[int]) -> str:
    base = summary["baseline"]
    lines = [f"{'scheduler':<9}" + "".join(f"{b:>9}" for b in budgets) + f"{'mean':>8}  {'mean - ' + base + ' [95% CI]':<30}"]
    for name, s in summary["schedulers"].items():
        d = s.get(f"vs_{base}")
        diff = "" if d is None else (f"{d['mean_over_budgets']['mean']:+.4f} [{d['mean_over_budgets']['lo']:+.4f},"
                                     f"{d['mean_over_budgets']['hi']:+.4f}] {d['mean_over_budgets']['verdict']}")
        lines.append(f"{name:<9}" + "".join(f"{v:>9.4f}" for v in s["test_miou_mean"])
                     + f"{s['mean_over_budgets']:>8.4f}  {diff}")
    return "\n".join(lines)


def merge(files: list[Path], out: Path) -> int:
    """Runs of separate processes (other seeds, same settings) joined, their summary recomputed."""
    parts = [json.loads(f.read_text()) for f in files]
    keys = ("preset", "crop", "pool_slices", "sampler", "budgets_pixels", "schedulers", "retrain_config")
    for part, f in zip(parts[1:], files[1:]):
        if any(part[k] != parts[0][k] for k in keys):
            raise SystemExit(f"{f} was run with other settings than {files[0]}: not merged")
    result = {**parts[0], "runs": {name: {} for name in parts[0]["schedulers"]}, "merged_from": [str(f) for f in files],
              "wall_seconds": round(sum(p["wall_seconds"] for p in parts), 1),
              "load_average_start_end": [p["load_average_start_end"] for p in parts]}
    for part in parts:
        for name, runs in part["runs"].items():
            result["runs"][name].update(runs)
    result["summary"] = summarise(result["runs"], result["schedulers"], result["budgets_pixels"])
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(format_table(result["summary"], result["budgets_pixels"]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedulers", default="fixed,cosine,agent")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--preset", default="lowres-varying")
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--pool", type=int, default=6)
    parser.add_argument("--sampler", default="taudis")
    parser.add_argument("--budgets", default="1024,3072,12288,49152")
    parser.add_argument("--seed-list", help="run these seeds only (e.g. 3,4); then --merge with the other runs")
    parser.add_argument("--merge", nargs="+", type=Path, help="join result files of the same settings into --out")
    parser.add_argument("--out", type=Path, default=RESULTS / "retrain-scheduler.json")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    schedulers = args.schedulers.split(",")
    seeds = [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    if not (SOC / "images.tif").is_file():
        print(f"no SOC data at {SOC}: this benchmark needs the real slices", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    images, labels, splits = load(args.preset, args.crop)
    runs: dict[str, dict] = {name: {} for name in schedulers}
    t0 = time.time()
    load_start = os.getloadavg()
    for seed in seeds:  # seed-major, so a stopped run still pairs every scheduler on its seeds
        for name in schedulers:
            runs[name][str(seed)] = run(args.preset, seed, name, images, labels, splits, args)
            done = [n for n in schedulers if str(seed) in runs[n]]
            summary = summarise(runs, done, args.budgets) if len(done) == len(schedulers) else None
            result = {"command": " ".join(["benchmarks/bench_retrain_scheduler.py", *sys.argv[1:]]),
                      "data": str(SOC), "preset": args.preset, "crop": args.crop, "pool_slices": args.pool,
                      "sampler": args.sampler, "budgets_pixels": args.budgets, "schedulers": schedulers,
                      "retrain_config": asdict(RETRAIN_CONFIG), "summary": summary, "runs": runs,
                      "machine": f"{platform.machine()}, torch {torch.get_num_threads()} thread(s)",
                      "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
                      "wall_seconds": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                         time.gmtime())}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(format_table(summarise(runs, schedulers, args.budgets), args.budgets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
