"""`paser policy`: train PaSeR routing policies (stage 2) for a run folder, one per cost weight.

Scores the run's frozen f0, f1, f2 once on the dataset's "rl" split, trains a policy for each
lambda on that table (`learners.routing.bank.iter_bank_training`, the routing-policy training a
session's router and the routing benchmark share), and writes them into the run
folder as the policy bank `policies/lambda-<L>.pt`, plus `policy.pt` (the one at the default
lambda, what `paser`'s plugin loads for routing) and `policies/bank.json`: each policy's
patch shares, mIoU and GFLOPs per image on the "val" split, beside the largest model alone.
Each policy is saved as soon as it is trained, so an interrupted run keeps the finished ones; an
older bank in the run folder is replaced.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learners.atomic import atomic_write_text
from learners.checkpoint import load_checkpoint
from learners.generators import drain
from learners.routing.policy import PolicyConfig, PolicyNet, save_policy
from learners.routing.bank import BANK_DIR, PolicyBank, check_lambdas, iter_bank_training, save_bank
from learners.routing.router import RoutingCost, build_patch_table, policy_probabilities, table_summary
from learners.routing.training import RLConfig, prepare_routing_data
from napari_paser.data.dataset import normalise, read_dataset, robust_range
from napari_paser.errors import PaserInputError
from learners.grid import Patching
from learners.routing import GRID
from napari_paser.jobs.train import split_arrays

DEFAULT_LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
DEFAULT_LAMBDA = 0.3


def load_run_models(run: Path, n_classes: int) -> list[torch.nn.Module]:
    """f0, f1, ... of a `paser train` run (at least f0 and f1), checked against the dataset's classes."""
    roles = []
    for k in range(10):
        if not (run / f"f{k}.pt").is_file():
            break
        roles.append(f"f{k}")
    if len(roles) < 2:
        raise PaserInputError(f"{run} needs f0.pt and at least f1.pt to route between models; "
                              "train them with `paser train --data DIR --out RUN`")
    models = [load_checkpoint(run / f"{r}.pt").model.eval() for r in roles]
    found = {m.config.n_classes for m in models}
    if found != {n_classes}:
        raise PaserInputError(f"the models in {run} predict {sorted(found)} classes but the dataset has {n_classes}: "
                              "train the policy on the dataset the run was trained on")
    return models


def evaluate_bank(bank: PolicyBank, models, images: np.ndarray, labels: np.ndarray, samples: int, seed: int) -> dict:
    """Each policy's routing of `images` scored on a patch table (no routed passes): mIoU, GFLOPs, shares."""
    patching = next(iter(bank.policies.values())).config.patching  # one bank, one patching
    table, state = build_patch_table(models, images, labels, patching, samples, seed)
    h, w = images.shape[-2:]
    rows = {}
    for lam, policy in sorted(bank.policies.items()):
        cost = RoutingCost.of(models, h, w, patching, samples, policy)
        actions = policy_probabilities(policy, state).argmax(-1).numpy()
        rows[f"{lam:.3f}"] = table_summary(table, actions, cost.for_table(actions, True, True))
    cost = RoutingCost.of(models, h, w, patching, samples)
    last = np.full(table.iou.shape[:2], len(models) - 1)
    largest = table_summary(table, last, cost.for_table(last, False))
    return {"policies": rows, f"f{len(models) - 1}_alone": largest}


def train_policies(
    data: str | Path,
    run: str | Path,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    default: float = DEFAULT_LAMBDA,
    epochs: int = 100,
    batch_size: int = 4,
    lr: float = 3e-3,
    samples: int = 5,
    seed: int = 0,
    rollouts: int = 1,
    flips: bool = False,
    gradient: str = "expected",
    progress: bool = True,
    halo: int = 0,
) -> dict:
    """Train the bank into `run` (see the module doc); return the summary written to bank.json."""
    started, run = time.time(), Path(run)
    lambdas = check_lambdas(lambdas)
    if epochs < 1 or batch_size < 1 or lr <= 0 or samples < 1 or rollouts < 1:
        raise PaserInputError("--epochs, --batch-size, --samples, --rollouts and --lr must be positive")
    ds = read_dataset(data)
    x = normalise(ds.images, *robust_range(ds.images))
    models = load_run_models(run, ds.n_classes)
    rl_x, rl_y = split_arrays(ds, ["rl"], x)  # policies train on rl and are scored on val
    val_x, val_y = split_arrays(ds, ["val"], x)
    torch.manual_seed(seed)
    if progress:
        print(f"scoring {len(models)} models on {len(rl_x)} rl slices ...", flush=True)
    with torch.no_grad():
        routing = prepare_routing_data(models, rl_x, rl_y, Patching(count=GRID, halo=halo), samples, seed)
    config = RLConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, rollouts=rollouts, flips=flips,
                      gradient=gradient)
    meta = {"run": str(run.resolve()), "dataset": str(Path(data).resolve()), "epochs": epochs, "samples": samples,
            "gradient": gradient, "rollouts": rollouts, "flips": flips, "halo": halo}

    policy = PolicyConfig(n_classes=ds.n_classes, n_models=len(models), grid=GRID, halo=halo)

    def saved(lam: float, trained: PolicyNet) -> None:
        save_bank(run, PolicyBank({lam: trained}), meta)

    shutil.rmtree(run / BANK_DIR, ignore_errors=True)  # an older bank would mix in other lambdas or models
    gen = iter_bank_training(routing, lambdas, policy, config, on_trained=saved)
    bank = _drive(gen, len(lambdas) * epochs, progress)
    chosen, _ = bank.nearest(default)
    save_policy(run / "policy.pt", bank.policies[chosen], {**meta, "lambda": chosen})
    if progress:
        print(f"scoring the bank on {len(val_x)} val slices ...", flush=True)
    with torch.no_grad():
        summary = evaluate_bank(bank, models, val_x, val_y, samples, seed)
    summary.update(default_lambda=chosen, lambdas=bank.lambdas, seconds=round(time.time() - started, 1),
                   command=" ".join(shlex.quote(a) for a in sys.argv), **meta)
    atomic_write_text(run / BANK_DIR / "bank.json", json.dumps(summary, indent=2))
    return summary


def _drive(gen, total: int, progress: bool) -> PolicyBank:
    with tqdm(total=total, desc="policies", disable=not progress, unit="epoch") as bar:
        return drain(gen, lambda epoch: policy_tick(bar, epoch))


def policy_tick(bar: tqdm, epoch) -> None:
    """One policy-training epoch on a progress bar: lambda and greedy reward."""
    bar.set_postfix(lam=epoch.lam, reward=f"{epoch.greedy_reward:.3f}", refresh=False)
    bar.update(1)


def format_bank(summary: dict, key: str = "lambda", score: str = "val mIoU", cost: str = "GFLOPs") -> str:
    """A terminal table of bank.json: one row per bank member (`key`: what the members are keyed by)."""
    largest_key = next(k for k in summary if k.endswith("_alone"))
    largest = summary[largest_key]
    rows = [f"{key:>7}{score:>{max(10, len(score) + 2)}}{cost:>{max(9, len(cost) + 2)}}{'vs ' + largest_key[:2]:>8}"
            "  patch shares"]
    for lam, row in summary["policies"].items():
        shares = " ".join(f"{k} {v:.0%}" for k, v in row["patch_share"].items())
        mark = " (policy.pt)" if float(lam) == summary["default_lambda"] else ""
        rows.append(f"{lam:>7}{row['iou']:>10.3f}{row['gflops_per_image']:>9.2f}"
                    f"{row['gflops_per_image'] / largest['gflops_per_image']:>8.0%}  {shares}{mark}")
    rows.append(f"{largest_key:>7}{largest['iou']:>10.3f}{largest['gflops_per_image']:>9.2f}{1:>8.0%}")
    return "\n".join(rows)

