"""The PaSeR policy network f_RL and its explore/exploit mixing (Eq. 4).

f_RL sees the whole image through f0's eyes (one-hot prediction plus MC-dropout entropy) and
outputs, for every patch of the routing grid, logits of a categorical distribution over the
models {f0, ..., fm}. Three stride-2 convolutions give it context beyond its own patch; the
input is reflect-padded to whole grid cells (as `learners.grid.Grid.extract` pads patches)
and the features are average-pooled to the grid, so each output cell summarises its patch
(exactly when the patch side is a multiple of 8, approximately otherwise). The routing grid is
either a patch size in pixels (`PolicyConfig.patch`: the network is convolutional and pools to
however many patches the slice has, so one policy routes slices of any size) or a fixed
rows x cols count (`PolicyConfig.grid`, the paper's 4x4). The last layer
starts at zero so an untrained policy is uniform (and its argmax is f0 everywhere). With 3
classes, 3 models and width 16 it has 14,739 parameters (the paper's has 14,736).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from learners.checkpoint import load_module, save_payload
from learners.errors import ConfigError
from learners.routing.ranked import RankedPolicy
from learners.routing.state import KINDS, PolicyConfig, pad_to_grid, policy_state  # noqa: F401 (re-exported)

FORMAT = "napari-paser/policy"
VERSION = 5
"""2 added `patch` (routing patches of a size in pixels), 3 `halo` (context around each patch), 4 `kind`
(the uncertainty-ranked policy, `learners.routing.ranked`), 5 `level` (a ranked policy scoring a patch by
its share of pixels above an entropy level); an older reader would misread such a policy (as a 4x4-grid
one, without the halo its larger models were scored with, as a network, or by its mean entropy), so only
those are written with the newer version (see `save_policy`)."""


class ChannelNorm(nn.Module):
    """LayerNorm over the channels at each position: keeps REINFORCE from blowing the features up.

    Without it the policy collapsed onto f0 even on patches where f2 paid (Adam learning rates
    1e-4 to 2e-2 in tests/test_router.py's set-up): the unnormalised features grew until the
    softmax saturated on the action that is best on average.
    Unlike BatchNorm it behaves the same in training and inference; unlike GroupNorm over the
    image it keeps an image that is hard everywhere distinguishable from one easy everywhere.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PolicyNet(nn.Module):
    """(N, C + 1, H, W) state -> (N, P, m + 1) logits, P = rows * cols of the slice's grid (row-major)."""

    def __init__(self, config: PolicyConfig = PolicyConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, stride=2, padding=1), ChannelNorm(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), ChannelNorm(2 * w), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), ChannelNorm(2 * w), nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(2 * w, config.n_models, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        grid = self.config.patching.grid(state.shape[-2], state.shape[-1])
        ph, pw = grid.padded_shape()
        x = pad_to_grid(state, ph, pw)
        x = F.adaptive_avg_pool2d(self._features(x), (grid.rows, grid.cols))
        return self.head(x).flatten(2).transpose(1, 2)  # (N, P, K)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """`features` of x; a large input without gradients in strips of STRIP_ROWS rows, each with a
        STRIP_HALO-row margin above and below whose outputs are dropped: a feature row reads input rows
        8j-7..8j+7, and only a strip's first feature row sees the zero padding at its cut, so the result is
        the whole pass's, while the convolutions' buffers stay one strip's size (a 2048^2 slice's whole pass
        held about 400 MB)."""
        h = x.shape[-2]
        if torch.is_grad_enabled() or h * x.shape[-1] <= STRIP_PIXELS or h <= STRIP_ROWS:
            return self.features(x)
        parts = []
        for y0 in range(0, h, STRIP_ROWS):
            y1 = min(h, y0 + STRIP_ROWS)
            a, b = max(0, y0 - STRIP_HALO), min(h, y1 + STRIP_HALO)
            top = (y0 - a) // 8
            parts.append(self.features(x[..., a:b, :])[..., top:top + -(-(y1 - y0) // 8), :])
        return torch.cat(parts, -2)


STRIP_PIXELS = 1024 * 1024
"""Inputs above this many pixels go through the policy's convolutions in strips (`PolicyNet._features`)."""
STRIP_ROWS, STRIP_HALO = 256, 16
"""Rows per strip and the margin read above and below it: multiples of the features' stride 8."""


def mix_uniform(probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4 as a distribution: follow the policy with probability alpha, else a uniform choice.

    Sampling a patch's action from alpha * s_RL + (1 - alpha) * s_U is the same as flipping the
    alpha coin per patch and then sampling from s_RL or s_U.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha * probs + (1.0 - alpha) / probs.shape[-1]


def linear_schedule(start: float, end: float, step: int, steps: int) -> float:
    """Value at `step` of `steps` on a straight line from start (step 0) to end (last step)."""
    if steps <= 1:
        return end
    t = min(max(step, 0), steps - 1) / (steps - 1)
    return start + t * (end - start)


ALPHA_RL = (0.7, 0.95)
"""Explore/exploit alpha from the first to the last epoch of RL training (appendix B2)."""
ALPHA_FINETUNE = (0.95, 1.0)
"""The same during joint fine-tuning."""


def build_policy(config: PolicyConfig) -> nn.Module:
    """An untrained policy of `config`'s kind: the network, or the ranked rule (thresholds unset)."""
    if config.kind == "ranked":
        return RankedPolicy(config)
    return PolicyNet(config)


@dataclass
class PolicyCheckpoint:
    policy: PolicyNet
    config: PolicyConfig
    meta: dict = field(default_factory=dict)
    path: Path | None = None


def save_policy(path: str | Path, policy: PolicyNet, meta: dict | None = None) -> Path:
    """Write the policy's weights, config and plain-value `meta` atomically."""
    cfg = policy.config
    version = (5 if cfg.level is not None else 4 if cfg.kind != "network" else 3 if cfg.halo
               else 2 if cfg.patch is not None else 1)
    return save_payload(path, FORMAT, policy, policy.config.to_dict(), meta, version=version)


def load_policy(path: str | Path) -> PolicyCheckpoint:
    """Rebuild a policy saved by `save_policy`; every fault becomes a `CheckpointError`."""
    policy, config, meta = load_module(path, FORMAT, "policy checkpoint", "train the router first",
                                       PolicyConfig.from_dict, build_policy, version=VERSION)
    return PolicyCheckpoint(policy, config, meta, Path(path))
