"""Reproduce benchmarks/results/al-{soc,imbalanced}-15.json (issue 15): make the datasets, train a
DQN agent on each, run `paser bench al` with random, BALD, TAUDIS, the shipped DQN agent and the
agent trained on that data, paired over --seeds seeds.

Datasets are written under --work (default /tmp/paser-al15; SOC data never enters the repo):
- soc: ../shared/data/soc_pristine degraded `lowres-varying` (seed 0)
- imbalanced: synth_volume(24, 128, fractions 0.02/0.38/0.6, seed 0, correlation_length 8), `lowres`
CPU-sized: central --crop crop of each slice, 16x16 regions, 20 optimiser steps per retraining,
3 MC samples. The agent: 8 teacher episodes, 300 imitation steps, --episodes DQN episodes,
6 evaluation episodes each of DQN, imitation and teacher on the val split.

    .venv/bin/python benchmarks/bench_al.py [--only soc,imbalanced] [--seeds 10] [--episodes 50] [--crop 64]
    .venv/bin/python benchmarks/bench_al.py --merge A.json B.json OUT.json
    .venv/bin/python benchmarks/bench_al.py --pair-taudis RESULTS.json

`--merge` joins two `paser bench al` runs of the same data, budgets and settings but different
samplers (on a shared CPU the heuristics and the DQN agents were run as two invocations):
B's samplers are compared with A's random seed by seed over the seeds both ran. The runs
are deterministic per seed; the merge checks that every seed starts from the same mIoU.
Every DQN sampler is also paired with TAUDIS (`vs_taudis`; `--pair-taudis` adds it to older results).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import RESULTS, SOC, require
from napari_paser.data.degrade import degrade_folder
from napari_paser.data.synth import write_synthetic

PRESET = {"soc": "lowres-varying", "imbalanced": "lowres"}
SIM = ["--region", "16", "--train-steps", "20", "--seed-steps", "60", "--samples", "3"]
AGENT = ["--train-steps", "10", "--seed-steps", "40", "--steps", "5", "--k", "4", "--n-seed", "4",
         "--teacher-episodes", "8", "--imitation-steps", "300", "--eval-episodes", "6"]
BUDGETS = "4,8,12,16,24,32,48"


def prepare(name: str, work: Path) -> Path:
    """The degraded dataset folder for `name`."""
    out = work / f"{name}_{PRESET[name]}"
    if (out / "images.tif").exists():
        return out
    if name == "soc":
        source = require(SOC)
    else:
        source = write_synthetic(work / f"{name}_clean", 24, 128, fractions=(0.02, 0.38, 0.6), seed=0,
                                 correlation_length=8)
    degrade_folder(source, out, PRESET[name], seed=0)
    return out


def merge(a_path: Path, b_path: Path, out: Path) -> dict:
    """A's results with B's samplers added, each paired with A's random over the common seeds."""
    from learners.atomic import atomic_write_text
    from napari_paser.bench.al import paired_differences, stored_traces, vs_taudis

    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    n = min(a["seeds"], b["seeds"])
    rand = a["samplers"]["random"]
    if b["samplers"].get("random", rand)["miou_per_seed"][:n] != rand["miou_per_seed"][:n]:
        raise SystemExit(f"random's curves differ between {a_path} and {b_path}: not the same settings")
    for name, s in b["samplers"].items():
        if name == "random":
            continue
        starts = [m[0] for m in s["miou_per_seed"][:n]]
        if starts != [m[0] for m in rand["miou_per_seed"][:n]] or s["budgets"] != rand["budgets"]:
            raise SystemExit(f"{b_path} is not paired with {a_path}: different seed sets or budgets")
        a["samplers"][name] = s
        a["vs_random"][name] = paired_differences(stored_traces(s, n), stored_traces(rand, n), a["rare_class"])
    earlier = a.get("merged_from", [])
    a["merged_from"] = [*(earlier if isinstance(earlier, list) else [earlier]),
                        {"A": str(a_path), "B": str(b_path), "B_command": b["command"], "B_seeds": b["seeds"],
                         "B_wall_seconds": b["wall_seconds"], "B_samplers": [n for n in b["samplers"] if n != "random"]}]
    a["agent_train_seconds"] = {**a.get("agent_train_seconds", {}), **b.get("agent_train_seconds", {})}
    a["dqn_agent"] = b["dqn_agent"] or a.get("dqn_agent")
    a["vs_taudis"] = vs_taudis(a["samplers"], a["rare_class"])
    best_end = max(s["miou_mean"][-1] for s in a["samplers"].values())
    a["loose_target"] = bool(a["full_supervision_miou"] < best_end)
    atomic_write_text(out, json.dumps(a, indent=1) + "\n")
    return a


def pair_taudis(path: Path) -> dict:
    """`path`'s results with "vs_taudis" (re)computed from its per-seed curves, written in place."""
    from learners.atomic import atomic_write_text
    from napari_paser.bench.al import vs_taudis

    results = json.loads(path.read_text())
    results["vs_taudis"] = vs_taudis(results["samplers"], results["rare_class"])
    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="soc,imbalanced")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--crop", default="64")
    parser.add_argument("--work", type=Path, default=Path("/tmp/paser-al15"))
    parser.add_argument("--merge", nargs=3, type=Path, metavar=("A", "B", "OUT"))
    parser.add_argument("--pair-taudis", type=Path, metavar="RESULTS",
                        help="add each DQN sampler's paired differences to TAUDIS to a results JSON, print its table")
    args = parser.parse_args()
    if args.merge or args.pair_taudis:
        from napari_paser.bench.al import format_table

        print(format_table(merge(*args.merge) if args.merge else pair_taudis(args.pair_taudis)))
        return 0
    paser = [sys.executable, "-m", "napari_paser.cli"]
    crop = ["--crop", args.crop]
    for name in args.only.split(","):
        data = prepare(name, args.work)
        agent = args.work / f"{name}-dqn.pt"
        subprocess.run(paser + ["al", "train-dqn", "--data", str(data), "--out", str(agent), "--region", "16",
                                "--samples", "3", "--episodes", str(args.episodes)] + AGENT + crop, check=True)
        subprocess.run(paser + ["bench", "al", "--data", str(data), "--samplers", "random,bald,taudis,dqn:shipped,dqn",
                                "--budgets", BUDGETS, "--seeds", str(args.seeds), "--dqn", str(agent),
                                "--out", str(RESULTS / f"al-{name}-15.json")] + SIM + crop, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
