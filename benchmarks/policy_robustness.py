"""How well does stage 2 (policy training) find the best routing at every cost weight lambda?

The live lambda slider is only useful if the policy bank follows the accuracy-cost trade-off
at every lambda, not just in a narrow band. For each training setting and each lambda this
trains a policy on the rl split's patch table (the run's models frozen, as `paser policy`
does) and scores its argmax routing on the rl and test tables beside the oracle router (the
best action per patch, knowing the labels): reward (Eq. 2), mIoU, GFLOPs per image and patch
shares. The headline per setting is the mean over lambdas of the test reward as a fraction of
the oracle's, and how many lambdas end on a single model for every patch.

    .venv/bin/python benchmarks/policy_robustness.py --data runs/soc-shading/data --run runs/soc-shading/run \\
        --out benchmarks/results/policy-robustness-soc.json

Settings (`--settings`, comma-separated names of `SETTINGS`): `reinforce` is stage 2 as
Algorithm 1 has it (one sampled routing per slice, leave-one-out batch-mean baseline, the
policy's own log-probability also for explored actions); `reinforce-rloo` draws 8 routings per
slice, each patch's baseline the mean of its other routings; `expected` follows the exact
gradient of the expected reward from the patch table (`learners.routing.training.expected_step`);
`expected-flips` adds mirror augmentation.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from learners.routing.cascade import oracle_actions
from learners.routing.router import RoutingCost, build_patch_table, model_costs
from learners.routing.training import RLConfig, RoutingData, train_policy
from napari_paser.bench.routing.methods import policy_actions, table_row
from napari_paser.bench.routing.stages import new_policy
from napari_paser.data.dataset import normalise, read_dataset, robust_range
from napari_paser.jobs.policy import load_run_models
from learners.routing import GRID
from napari_paser.jobs.train import split_arrays

SETTINGS = {
    "reinforce": dict(gradient="reinforce", rollouts=1, flips=False),
    "reinforce-rloo": dict(gradient="reinforce", rollouts=8, flips=False),
    "expected": dict(gradient="expected", flips=False),
    "expected-flips": dict(gradient="expected", flips=True),
}
LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)


def tables(models, ds, x, samples: int, seed: int) -> dict:
    """{split: (RoutingData, PatchTable)} for rl and test, each model run once."""
    out = {}
    for split in ("rl", "test"):
        sx, sy = split_arrays(ds, [split], x)
        with torch.no_grad():
            table, state = build_patch_table(models, sx, sy, GRID, samples, seed)
        out[split] = (RoutingData.from_table(state, table, model_costs(models)), table)
    return out


def score(policy, data: RoutingData, table, lam: float, flops: tuple[RoutingCost, RoutingCost]) -> tuple[dict, dict]:
    """(policy row, oracle row) of one split at one lambda; flops = (with a policy, without)."""
    costs = data.costs.numpy()
    row = table_row(table, policy_actions(policy, data.state), flops[0], True, True, costs, lam)
    oracle = table_row(table, oracle_actions(table, costs, lam), flops[1], False, False, costs, lam)
    return row, oracle


def run(args) -> dict:
    ds = read_dataset(args.data)
    x = normalise(ds.images, *robust_range(ds.images))
    models = load_run_models(Path(args.run), ds.n_classes)
    torch.set_num_threads(args.threads)
    started = time.time()
    split_tables = tables(models, ds, x, args.samples, args.seed)
    shape = tuple(x.shape[-2:])
    flops = (RoutingCost.of(models, *shape, GRID, args.samples, new_policy(ds.n_classes, args.seed)),
             RoutingCost.of(models, *shape, GRID, args.samples))  # counted once: the same for every policy
    base = RLConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    results: dict = {"settings": {}}
    for name in args.settings:
        rows = []
        for lam in args.lambdas:
            t0 = time.time()
            policy = new_policy(ds.n_classes, args.seed)
            train_policy(policy, split_tables["rl"][0], replace(base, lam=lam, **SETTINGS[name]))
            row = {"lambda": lam, "seconds": round(time.time() - t0, 1)}
            for split, (data, table) in split_tables.items():
                mine, oracle = score(policy, data, table, lam, flops)
                row[split] = {"paser": mine, "oracle": oracle}
            rows.append(row)
            print(format_row(name, row), flush=True)
        results["settings"][name] = {"config": {**SETTINGS[name]}, "rows": rows, **headline(rows)}
    results.update(dataset=str(args.data), run=str(args.run), lambdas=list(args.lambdas),
                   rl=dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
                   command=" ".join(shlex.quote(a) for a in sys.argv), date=date.today().isoformat(),
                   machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                   seconds=round(time.time() - started, 1))
    return results


def headline(rows: list[dict]) -> dict:
    """Mean fraction of the oracle's test reward, and the lambdas where every patch got one model.

    The reward at lambda 1 is the cost alone (f0 everywhere is optimal and scores the same for
    any router keeping f0), so fractions are taken where the oracle's reward is positive.
    """
    fractions, constant = [], []
    for row in rows:
        mine, oracle = row["test"]["paser"], row["test"]["oracle"]
        if oracle["reward"] > 1e-9:
            fractions.append(mine["reward"] / oracle["reward"])
        if max(mine["patch_share"].values()) == 1.0 and max(oracle["patch_share"].values()) < 1.0:
            constant.append(row["lambda"])
    return {"mean_fraction_of_oracle_reward": float(np.mean(fractions)) if fractions else None,
            "single_model_where_oracle_mixes": constant}


def format_row(name: str, row: dict) -> str:
    t, o = row["test"]["paser"], row["test"]["oracle"]
    share = "/".join(f"{v:.2f}" for v in t["patch_share"].values())
    oshare = "/".join(f"{v:.2f}" for v in o["patch_share"].values())
    return (f"{name:>11} lam {row['lambda']:<5} test reward {t['reward']:+.3f} (oracle {o['reward']:+.3f}) "
            f"mIoU {t['iou']:.3f} (oracle {o['iou']:.3f}) GFLOPs {t['gflops_per_image']:6.1f} "
            f"shares {share} (oracle {oshare}) rl reward {row['rl']['paser']['reward']:+.3f} "
            f"(oracle {row['rl']['oracle']['reward']:+.3f}) {row['seconds']}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--settings", type=lambda s: s.split(","), default=list(SETTINGS))
    parser.add_argument("--lambdas", type=lambda s: [float(v) for v in s.split(",")], default=list(LAMBDAS))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    results = run(args)
    for name, res in results["settings"].items():
        print(f"{name}: mean fraction of the oracle's test reward {res['mean_fraction_of_oracle_reward']:.3f}; "
              f"one model everywhere where the oracle mixes at lambda {res['single_model_where_oracle_mixes']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
