"""What the session's router training is set to do and what it returns: the bank's default keys (cost
weights, shares), the routed models' retraining, `RouterConfig`, `RouterResult`, and what the router's jobs
work on (`RouterParts`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from learners.routing.bank import PolicyBank
from learners.routing.ranked import TAIL
from learners.training import TrainConfig
from napari_paser.errors import PaserInputError
from napari_paser.session.maps import MapsCache
from napari_paser.session.models import BANK_ROLE, POLICY, ModelSet, bank_role  # noqa: F401 (the router's names)
from napari_paser.session.store import Store
from napari_paser.session.training import RETRAIN_CONFIG, RetrainResult, check_focus

ROUTER_LAMBDAS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)
"""The bank's cost weights, where the decisions live: Eq. 2 pays (1 - lambda) * (IoU gain) against
lambda * C(f_k), C the parameter share, so a larger model pays on a patch only while lambda <
gain / (gain + C). Per-patch gains on real slices are 0.5 to 5 IoU points and a 4.3M-parameter f2
next to a 17k f0 and a 1.1M f1 has C = 0.80: every member from 0.1 up routed f0 everywhere (on the SOC
benchmark the members 0.1, 0.3 and 1 were identical)."""
ROUTER_SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
"""The ranked bank's shares of patches sent to the largest model (`learners.routing.ranked`). Its default
member is the held-out regions' best (`default_share`): 0 when f0 alone scores at least as well as every
share that routes there: a fixed share would send patches to an f2 that the session's own held-out
regions put below f0; where f2 pays, the best share is kept."""
ROUTED_RETRAIN = replace(RETRAIN_CONFIG, epochs=12)
"""Training of the routed larger models: 900 steps, three times f0's retrain (which runs after every batch of
regions, so f0 has had many). With f0's 300 steps, f2 (4.3M parameters) stays below what it reaches with
three times as many on the same labels."""
POLICIES = ("ranked", "network")
POOL_SLICES = 32  # slices of the session whose f0 entropy sets the ranked policies' thresholds
ROUTER_FILE = "router.json"


class RouterParts(Protocol):
    """What the router's jobs work on: the session's store, model set and maps cache (a `Router`, or a
    `Session`, which holds the same three)."""

    @property
    def store(self) -> Store: ...

    @property
    def model_set(self) -> ModelSet: ...

    @property
    def maps_cache(self) -> MapsCache: ...


@dataclass(frozen=True)
class RouterConfig:
    """What `train_router` does: the kind of policies and their bank (shares or lambdas), stage 2 settings
    of the network, whether f1..fm retrain first."""

    policy: str = "ranked"  # "ranked": f0 entropy thresholds per share (`learners.routing.ranked`); "network":
    # PaSeR's policy network per lambda, trained on the cross-fitted reward table
    shares: tuple[float, ...] = ROUTER_SHARES
    tail: float = TAIL  # ranked: a patch's score is its share of the session's `tail` most uncertain pixels (0: its
    # mean entropy; `learners.routing.ranked`)
    lambdas: tuple[float, ...] = ROUTER_LAMBDAS
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3  # 3e-3 (`paser policy`'s default) stuck on f2 everywhere in tests/test_router_session.py
    width: int = 16
    samples: int = 5
    halo: int | None = None  # context pixels around each patch for f1..fm; None: a quarter of the patch side
    cross_fit: int = 2  # folds of models that never saw the regions they score (0 or 1, or train_models=False: the
    # session's own models score them)
    train_models: bool = True
    model_config: TrainConfig | None = None  # None: ROUTED_RETRAIN
    first_bank: bool = True  # with train_models (ranked): make and install a bank with the current models first
    # (seconds), so routing works while the larger model retrains; the bank is made again when it lands
    focus: float = 0.0  # > 0: the routed models train where f0 is unsure (`session.training.uncertainty_focus`); off by
    # default: it makes f2 worse where f0 is sure without making routing better
    refresh: bool = True  # repeat the last proposal request (the routing sampler reads f1/f2); maps are f0's: current
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise PaserInputError(f"unknown router policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.samples < 1 or self.width < 1:
            raise PaserInputError("router training needs positive epochs, batch size, learning rate, width and samples")
        if not 0.0 <= self.tail < 1.0:
            raise PaserInputError(f"the tail share of pixels must lie in [0, 1) (0: mean entropy), got {self.tail}")
        check_focus(self.focus)
        if self.halo is not None and self.halo < 0:
            raise PaserInputError(f"the routing halo must be >= 0 pixels, got {self.halo}")

    def halo_for(self, patch: tuple[int, int]) -> int:
        return max(patch) // 4 if self.halo is None else int(self.halo)


@dataclass
class RouterResult:
    cancelled: bool
    bank: PolicyBank = field(default_factory=PolicyBank)
    summary: dict = field(default_factory=dict)
    retrain: RetrainResult | None = None
    retrain_cancelled: bool = False  # the larger model's retraining was cancelled after the first bank was made


def routed_larger(roles: Sequence[str], policy: str) -> list[str]:
    """The larger models a bank of `policy` routes to, so the ones `train_router` retrains: a ranked bank
    sends patches only to the largest (`learners.routing.ranked.from_share`), the network to any."""
    larger = [r for r in roles if r != "f0"]
    return larger[-1:] if policy == "ranked" else larger
