"""The uncertainty-ranked routing policy: a patch goes to the largest model when f0's mean entropy on it
is above a threshold, the threshold set by the share of a volume's patches that may go there.

Why not only the policy network (`learners.routing.policy.PolicyNet`): trained from a session's
accepted regions (about 50 labeled patches) it did not learn where the larger models pay. On five
SOC benchmark sessions (64 regions, test slices 10 to 40 slices from the labels), ranking the test
patches by f0's patch-mean entropy and sending the top 20% of them to f2 beat the best single model
by +0.4 to +1.1 mIoU points in all five (offline, on their dumped reward tables; through the session
benchmark on three: +0.3, -0.2, +0.7 at 21-28% of f2's FLOPs; BENCHMARKS.md, session 10). The
network's own ranking of the same patches (top 20% by p(f2)) was 0.3 to 2.8 points below the
entropy's in four of the five (equal in one), and a threshold fitted by Eq. 2 on the labeled regions
(cross-fitted and held out) ranged from -1.3 to +0.9 points against the best single model: the
labeled regions' per-model IoU levels disagree with the test slices' (f2 the worst model on one
run's held-out regions and the best on its test slices), while the ranking by uncertainty holds. A
second tier to f1 (the next 20% of patches) lost 0.1 to 0.5 points in four of five runs, so the
middle models are skipped.

So the labels are not trusted to set the level, and the share is the compute knob: the threshold is
the (1 - share) quantile of the patch-mean entropy over a sample of the session's own slices. A volume
f0 is less sure about sends more than `share` of its patches up, one it knows sends fewer.

The policy is a module with the network's interface (state in, per-patch logits out, `config`), so
routing, the bank, checkpoints, the GUI overlay and `paser route` take it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learners.errors import ConfigError
from learners.routing.policy import PolicyConfig, pad_to_grid

NEVER = 2.0
"""A threshold no patch reaches: the policy's entropy channel is scaled to [0, 1]."""
SHARPNESS = 50.0
"""Logit slope per unit of scaled entropy: the routing distribution is nearly one-hot except within a
few hundredths of the threshold, so its argmax is the rule and its probabilities say how close a call was."""


def patch_entropy(state: torch.Tensor, config: PolicyConfig) -> torch.Tensor:
    """(N, P) mean scaled entropy of each routing patch of a policy state (N, C + 1, H, W)."""
    grid = config.patching.grid(state.shape[-2], state.shape[-1])
    ph, pw = grid.padded_shape()
    x = pad_to_grid(state[:, -1:], ph, pw)
    return F.adaptive_avg_pool2d(x, (grid.rows, grid.cols)).flatten(1)


class RankedPolicy(nn.Module):
    """Route a patch to f_k for the largest k whose threshold its mean f0 entropy reaches, else to f0.

    Thresholds are non-decreasing in k (an ordinal rule: a harder patch never goes to a smaller model);
    `from_share` gives every larger model the same threshold, so only the largest is used.
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        if config.kind != "ranked":
            raise ConfigError(f"a ranked policy needs kind='ranked', got {config.kind!r}")
        self.config = config
        self.register_buffer("thresholds", torch.full((config.n_models - 1,), NEVER))

    def set_thresholds(self, thresholds: Sequence[float]) -> RankedPolicy:
        t = torch.as_tensor(list(thresholds), dtype=torch.float32)
        if t.shape != self.thresholds.shape or bool((t[1:] < t[:-1]).any()):
            raise ConfigError(f"need {len(self.thresholds)} non-decreasing thresholds, got {list(thresholds)}")
        self.thresholds.copy_(t)
        return self

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        e = patch_entropy(state, self.config)[..., None]  # (N, P, 1)
        steps = SHARPNESS * (e - self.thresholds.to(e))  # > 0 where model k's threshold is reached
        return torch.cat([torch.zeros_like(e), steps.cumsum(-1)], dim=-1)  # (N, P, K)


def share_threshold(entropies: np.ndarray, share: float) -> float:
    """The patch-mean entropy above which `share` of the given patches lie."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"a share of patches must lie in [0, 1], got {share}")
    values = np.asarray(entropies, np.float64).ravel()
    if share == 0.0 or not len(values):
        return NEVER
    if share == 1.0:
        return -1.0
    return float(np.quantile(values, 1.0 - share))


def from_share(config: PolicyConfig, entropies: np.ndarray, share: float) -> RankedPolicy:
    """The policy sending the `share` most uncertain of `entropies` (patch means, as `patch_entropy`) to
    the largest model."""
    tau = share_threshold(entropies, share)
    return RankedPolicy(config).set_thresholds([tau] * (config.n_models - 1))
