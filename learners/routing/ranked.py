"""The uncertainty-ranked routing policy: a patch goes to the largest model when f0's uncertainty score of
it is above a threshold, the threshold set by the share of a volume's patches that may go there. The
score (`patch_score`) is the patch's share of the volume's most uncertain pixels (`TAIL`, the level from
`tail_level`) or, as first built, its mean entropy (config.level None).

Why not only the policy network (`learners.routing.policy.PolicyNet`): trained from a session's
accepted regions (about 50 labeled patches) it did not learn where the larger models pay. On five
SOC benchmark sessions (64 regions, test slices 10 to 40 slices from the labels), ranking the test
patches by f0's patch-mean entropy and sending the top 20% of them to f2 beat the best single model
by +0.4 to +1.1 mIoU points in all five (offline, on their dumped reward tables; through the session
benchmark on three: +0.3, -0.2, +0.7 at 21-28% of f2's FLOPs). The
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
from learners.routing.state import PolicyConfig, pad_to_grid

NEVER = 2.0
"""A threshold no patch reaches: the policy's entropy channel is scaled to [0, 1]."""
SHARPNESS = 50.0
"""Logit slope per unit of patch score (scaled entropy or share of pixels): the routing distribution is nearly one-hot except within a
few hundredths of the threshold, so its argmax is the rule and its probabilities say how close a call was."""


TAIL = 0.1
"""The default share of a volume's pixels whose entropy counts as "very uncertain": a patch's score is its
share of such pixels. Against each patch's mean entropy, on nine SOC benchmark model sets through the real
`Session` (the same models and shares, mIoU at matched compute along each bank): +0.39 points on average at
20% of f2's FLOPs (8 of 9 better, -0.03 to +0.82), +0.28 at 25%, +0.13 at 30%.
The mean is dominated by the thin uncertain rim along every phase boundary, which f0
and f2 both get about right; the tail by the patches where f0 is lost."""
SAMPLE_PIXELS = 1 << 18


def patch_score(state: torch.Tensor, config: PolicyConfig) -> torch.Tensor:
    """(N, P) what a ranked policy ranks each routing patch of a policy state (N, C + 1, H, W) by: its mean
    scaled entropy (config.level None), or the share of its pixels whose scaled entropy exceeds config.level."""
    grid = config.patching.grid(state.shape[-2], state.shape[-1])
    ph, pw = grid.padded_shape()
    x = state[:, -1:] if config.level is None else (state[:, -1:] > config.level).to(state.dtype)
    return F.adaptive_avg_pool2d(pad_to_grid(x, ph, pw), (grid.rows, grid.cols)).flatten(1)


def entropy_sample(state: torch.Tensor) -> np.ndarray:
    """Up to SAMPLE_PIXELS of a policy state's scaled entropy values, evenly strided: concatenated over slices,
    the volume's distribution in a few megabytes (`tail_level`)."""
    values = state[:, -1].flatten().numpy()
    step = max(1, -(-values.size // SAMPLE_PIXELS))
    return values[::step].astype(np.float32)


def tail_level(values: np.ndarray, tail: float) -> float:
    """The scaled entropy above which `tail` of the sampled pixels lie."""
    if not 0.0 < tail < 1.0:
        raise ConfigError(f"the tail share of pixels must lie in (0, 1), got {tail}")
    values = np.asarray(values, np.float64).ravel()
    if not values.size:
        raise ConfigError("no pixels to set an entropy level from")
    return float(np.clip(np.quantile(values, 1.0 - tail), 0.0, 1.0))


class RankedPolicy(nn.Module):
    """Route a patch to f_k for the largest k whose threshold its f0 score (`patch_score`) reaches, else to f0.

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
        e = patch_score(state, self.config)[..., None]  # (N, P, 1)
        steps = SHARPNESS * (e - self.thresholds.to(e))  # > 0 where model k's threshold is reached
        return torch.cat([torch.zeros_like(e), steps.cumsum(-1)], dim=-1)  # (N, P, K)


def share_threshold(entropies: np.ndarray, share: float) -> float:
    """The patch score above which `share` of the given patches lie."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"a share of patches must lie in [0, 1], got {share}")
    values = np.asarray(entropies, np.float64).ravel()
    if share == 0.0 or not len(values):
        return NEVER
    if share == 1.0:
        return -1.0
    return float(np.quantile(values, 1.0 - share))


def from_share(config: PolicyConfig, entropies: np.ndarray, share: float) -> RankedPolicy:
    """The policy sending the `share` most uncertain of `entropies` (patch scores, as `patch_score`) to
    the largest model."""
    tau = share_threshold(entropies, share)
    return RankedPolicy(config).set_thresholds([tau] * (config.n_models - 1))
