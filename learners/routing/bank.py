"""A bank of routing policies trained at several cost weights lambda: the live accuracy/cost knob.

The policy's trade-off is fixed when it is trained (lambda enters only the reward), so a
control that "re-routes live" needs one policy per setting. Stage 2 runs only the small
policy on a patch table computed once (`learners.routing.training.prepare_routing_data`), so
training a handful of policies costs little more than one. The bank lives in a run folder
as `policies/lambda-<L>.pt` (one `save_policy` checkpoint each, lambda in its meta); a
control picks the policy whose lambda is nearest to the one asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from learners.errors import CheckpointError, InputError
from learners.routing.policy import PolicyConfig, PolicyNet, load_policy, save_policy
from learners.routing.training import PolicyEpoch, RLConfig, RoutingData, iter_policy_training

BANK_DIR = "policies"
_NAME = re.compile(r"^lambda-(\d+(?:\.\d+)?)\.pt$")


def bank_file(lam: float) -> str:
    """File name of the bank's policy for `lam` (three decimals: 0.05 -> lambda-0.050.pt)."""
    return f"lambda-{lam:.3f}.pt"


def check_lambdas(lambdas: Sequence[float]) -> list[float]:
    """Sorted distinct lambdas in [0, 1]; anything else is an InputError naming the value."""
    out = sorted({round(float(lam), 3) for lam in lambdas})
    if not out:
        raise InputError("give at least one lambda, e.g. 0,0.1,0.3,0.5")
    bad = [lam for lam in out if not 0.0 <= lam <= 1.0]
    if bad:
        raise InputError(f"lambda must lie in [0, 1] (0: accuracy only, 1: cost only), got {bad}")
    return out


@dataclass
class PolicyBank:
    """Policies keyed by the lambda they were trained with; `chosen`: the member routing defaults to, when
    something measured picked one (a session's held-out table), else the middle one."""

    policies: dict[float, PolicyNet] = field(default_factory=dict)
    chosen: float | None = None

    def __len__(self) -> int:
        return len(self.policies)

    @property
    def lambdas(self) -> list[float]:
        return sorted(self.policies)

    @property
    def knob(self) -> str:
        """What the keys are: "share" (ranked policies: the share of patches sent to the largest model,
        `learners.routing.ranked`) or "lambda" (policies trained with that cost weight)."""
        kinds = {getattr(p.config, "kind", "network") for p in self.policies.values()}
        return "share" if kinds == {"ranked"} else "lambda"

    @property
    def default_lambda(self) -> float:
        """The member routing uses when no lambda is asked for: `chosen` when it is a member, else the middle
        one (the upper of two)."""
        if not self.policies:
            raise InputError("the policy bank is empty: train it with `paser policy` first")
        if self.chosen is not None and round(self.chosen, 3) in self.policies:
            return round(self.chosen, 3)
        return self.lambdas[len(self) // 2]

    def nearest(self, lam: float) -> tuple[float, PolicyNet]:
        """The trained lambda closest to `lam` (the lower one on a tie) and its policy."""
        if not self.policies:
            raise InputError("the policy bank is empty: train it with `paser policy` first")
        best = min(self.lambdas, key=lambda key: (round(abs(key - lam), 9), key))
        return best, self.policies[best]

    def pick(self, lam: float | None, default: tuple[float | None, PolicyNet] | None = None
             ) -> tuple[float | None, PolicyNet] | None:
        """What to route with: the member nearest to `lam` when one is asked for, else `default`
        (a run's policy.pt with its lambda, if known), else `default_lambda`'s; None if there is none."""
        if lam is not None and self.policies:
            return self.nearest(lam)
        if default is not None:
            return default
        return self.nearest(self.default_lambda) if self.policies else None


def save_bank(folder: str | Path, bank: PolicyBank, meta: dict | None = None) -> list[Path]:
    """Write every policy of `bank` into `folder/policies/` (atomic, one file per lambda)."""
    out = Path(folder) / BANK_DIR
    return [save_policy(out / bank_file(lam), policy, {**(meta or {}), "lambda": lam})
            for lam, policy in sorted(bank.policies.items())]


def load_bank(folder: str | Path) -> PolicyBank:
    """The bank in `folder/policies/` (empty when there is none); a broken file is a CheckpointError."""
    bank = PolicyBank()
    root = Path(folder) / BANK_DIR
    if not root.is_dir():
        return bank
    for path in sorted(root.glob("lambda-*.pt")):
        match = _NAME.match(path.name)
        if match is None:
            continue
        ckpt = load_policy(path)
        lam = float(ckpt.meta.get("lambda", match.group(1)))
        if round(lam, 3) != round(float(match.group(1)), 3):
            raise CheckpointError(f"{path} was trained with lambda {lam}, not the {match.group(1)} its name says: "
                                  "retrain the bank with `paser policy` or rename the file")
        bank.policies[round(lam, 3)] = ckpt.policy
    return bank


def iter_bank_training(
    data: RoutingData,
    lambdas: Sequence[float],
    policy: PolicyConfig | Callable[[], PolicyNet],
    config: RLConfig = RLConfig(),
    should_stop: Callable[[], bool] | None = None,
    on_trained: Callable[[float, PolicyNet], None] | None = None,
) -> Generator[PolicyEpoch, None, PolicyBank]:
    """Stage 2 once per lambda on the same prepared split; yields every epoch, returns the bank.

    The one implementation of routing-policy training: `paser policy` (a run folder's bank), a
    session's network router and the routing benchmark (stage 2 and its lambda sweep) all train
    through it, each on the `RoutingData` it prepares (`prepare_routing_data` for images with labels).
    Each member starts from the same initial weights, so the bank's members differ only by their
    lambda: a `PolicyConfig` is drawn afresh from `config.seed` for each one, a callable is called
    once per member. `on_trained(lam, policy)` runs as each one finishes (save it there: a cancelled
    run keeps the policies already trained). A policy cut short by `should_stop` is not added.
    """
    make_policy = seeded_policy(policy, config.seed) if isinstance(policy, PolicyConfig) else policy
    bank = PolicyBank()
    for lam in check_lambdas(lambdas):
        member = make_policy()
        cfg = replace(config, lam=lam)
        history = yield from iter_policy_training(member, data, cfg, should_stop)
        if len(history) < cfg.epochs:
            break
        bank.policies[lam] = member
        if on_trained is not None:
            on_trained(lam, member)
    return bank


def seeded_policy(config: PolicyConfig, seed: int) -> Callable[[], PolicyNet]:
    """A maker of new policies of `config` whose initial weights are drawn from `seed` (the same each call)."""

    def make() -> PolicyNet:
        torch.manual_seed(seed)
        return PolicyNet(config)

    return make
