"""Stages 2 and 3 of the routing benchmark: the policy trained on the rl split (with the ablation
arms from the same initial weights) by the routing-policy training `paser policy` and a session's
router use (`learners.routing.bank.iter_bank_training`), then f1, f2 fine-tuned with it on the
finetune split.
"""

from __future__ import annotations

from collections.abc import Sequence
import copy
from dataclasses import dataclass, replace

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from learners.generators import drain
from learners.routing import GRID
from learners.routing.bank import iter_bank_training, seeded_policy
from learners.routing.policy import PolicyConfig, PolicyNet
from learners.routing.training import FinetuneConfig, PolicyEpoch, RoutingData, finetune, prepare_routing_data
from napari_paser.bench.routing.config import RoutingBenchConfig, Inputs, ROLES
from napari_paser.jobs.policy import policy_tick


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


def train_stage2(data: RoutingData, n_classes: int, cfg: RoutingBenchConfig, bar: tqdm | None = None,
                 **overrides) -> tuple[PolicyNet, list[PolicyEpoch]]:
    """Stage 2 on a prepared split at the benchmark's lambda (RLConfig `overrides`), ticking `bar` per
    epoch: the policy (from `policy_config`'s initial weights at the benchmark's seed) and its history."""
    rl = replace(cfg.rl_config(), **overrides)
    history: list[PolicyEpoch] = []
    bank = _ticking(iter_bank_training(data, [rl.lam], policy_config(n_classes), rl), bar, history.append)
    return bank.policies[bank.lambdas[0]], history


def _ticking(gen, bar: tqdm | None, also=None):
    """Run a generator of policy epochs to its return value, ticking `bar` once per epoch (and passing
    each epoch to `also`)."""

    def tick(epoch: PolicyEpoch) -> None:
        if bar is not None:
            policy_tick(bar, epoch)
        if also is not None:
            also(epoch)

    return drain(gen, tick)


def history_summary(history: list[PolicyEpoch]) -> dict:
    """Final and per-epoch rewards of a policy training run, and when it converged."""
    greedy = [h.greedy_reward for h in history]
    sampled = [h.mean_reward for h in history]
    return {"epochs": len(history), "final_greedy_reward": greedy[-1], "final_sampled_reward": sampled[-1],
            "epochs_to_converge": epochs_to_converge(greedy),
            "sampled_reward_std_last_half": float(np.std(sampled[len(sampled) // 2:])),
            "final_share": dict(zip(ROLES, map(float, history[-1].share))),
            "greedy_reward_history": [round(g, 4) for g in greedy]}


def policy_config(n_classes: int) -> PolicyConfig:
    """The benchmark's policy: PaSeR's network over f0..f2 on the paper's patch grid."""
    return PolicyConfig(n_classes=n_classes, n_models=len(ROLES), grid=GRID)


def new_policy(n_classes: int, seed: int) -> PolicyNet:
    """The benchmark's policy with the initial weights stage 2 starts from at `seed`."""
    return seeded_policy(policy_config(n_classes), seed)()


@dataclass
class StageBar:
    """One tqdm bar over all stages; `tick` names the stage and advances."""

    bar: tqdm

    def tick(self, stage: str) -> None:
        self.bar.set_description(stage, refresh=False)
        self.bar.update(1)


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


def train_stages(inp: Inputs, cfg: RoutingBenchConfig, prog: StageBar) -> Trained:
    """Stage 2 (the benchmark's setting, then each ablation arm from the same initial weights),
    then stage 3 on copies of f1, f2."""
    pretrained = inp.models
    rx, ry = inp.splits["rl"]
    prog.tick("stage 2 data")
    rl_data = prepare_routing_data(pretrained, rx, ry, GRID, cfg.samples, cfg.seed)
    arms = {}
    for name, overrides in STAGE2_ARMS.items():
        prog.bar.set_description(f"stage 2 ({name})")
        arms[name] = train_stage2(rl_data, inp.n_classes, cfg, prog.bar, **overrides)
    prog.bar.set_description(f"stage 2 ({cfg.gradient})")
    policy, hist = train_stage2(rl_data, inp.n_classes, cfg, prog.bar)
    stage2_policy = copy.deepcopy(policy)
    prog.tick("stage 3")
    models = [pretrained[0]] + [copy.deepcopy(m) for m in pretrained[1:]]
    fx, fy = inp.splits["finetune"]
    ft_cfg = FinetuneConfig(epochs=cfg.epochs_ft, batch_size=cfg.batch_size, lr=cfg.rl_lr, lam=cfg.lam, seed=cfg.seed,
                            train_models=cfg.ft_models, rollouts=cfg.rollouts, flips=cfg.flips,
                            gradient=cfg.gradient)
    ft = finetune(models, policy, fx, fy, ft_cfg, samples=cfg.samples, seed=cfg.seed)
    return Trained(models, policy, stage2_policy, hist, arms, ft, rl_data)
