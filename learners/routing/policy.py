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

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from learners.routing import GRID
from learners.errors import ConfigError
from learners.checkpoint import load_module, save_payload
from learners.grid import Patching

FORMAT = "napari-paser/policy"
VERSION = 5
"""2 added `patch` (routing patches of a size in pixels), 3 `halo` (context around each patch), 4 `kind`
(the uncertainty-ranked policy, `learners.routing.ranked`), 5 `level` (a ranked policy scoring a patch by
its share of pixels above an entropy level); an older reader would misread such a policy (as a 4x4-grid
one, without the halo its larger models were scored with, as a network, or by its mean entropy), so only
those are written with the newer version (see `save_policy`)."""
KINDS = ("network", "ranked")


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to rebuild a policy network; stored in its checkpoint."""

    n_classes: int = 3
    n_models: int = 3
    grid: tuple[int, int] = GRID  # rows x cols per image, used when `patch` is None
    width: int = 16
    patch: tuple[int, int] | None = None  # patch size in pixels (overrides `grid`)
    halo: int = 0  # pixels of context f1..fm see around each patch (`learners.grid.Grid.context_patches`)
    kind: str = "network"  # or "ranked": f0's patch entropy against thresholds (`learners.routing.ranked`)
    level: float | None = None  # ranked: None scores a patch by its mean scaled entropy, a level in [0, 1] by the
    # share of its pixels above it (`learners.routing.ranked.patch_score`)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"invalid policy config {self}: kind must be one of {', '.join(KINDS)}")
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if self.patch is not None:
            object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
            if len(self.patch) != 2 or min(self.patch) < 1:
                raise ConfigError(f"invalid policy config {self}: the patch size must be two positive integers")
        if self.halo < 0:
            raise ConfigError(f"invalid policy config {self}: the halo must be >= 0 pixels")
        if self.level is not None and not 0.0 <= self.level <= 1.0:
            raise ConfigError(f"invalid policy config {self}: the entropy level must lie in [0, 1]")
        if self.n_classes < 2 or self.n_models < 2 or self.width < 1 or min(self.grid) < 1:
            raise ConfigError(f"invalid policy config {self}: need n_classes >= 2, n_models >= 2, "
                             "width >= 1 and a grid of at least 1x1")

    @property
    def in_channels(self) -> int:
        return self.n_classes + 1

    @property
    def patching(self) -> Patching:
        """How this policy cuts a slice into patches."""
        if self.patch is not None:
            return Patching(size=self.patch, halo=self.halo)
        return Patching(count=self.grid, halo=self.halo)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["patch"] = None if self.patch is None else list(self.patch)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


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
        x = F.adaptive_avg_pool2d(self.features(x), (grid.rows, grid.cols))
        return self.head(x).flatten(2).transpose(1, 2)  # (N, P, K)


def pad_to_grid(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad the bottom/right like `Grid.extract` does, so pooled cells match grid patches."""
    pad = (0, width - x.shape[-1], 0, height - x.shape[-2])
    if not any(pad):
        return x
    mode = "reflect" if pad[1] < x.shape[-1] and pad[3] < x.shape[-2] else "replicate"
    return F.pad(x, pad, mode=mode)


def policy_state(prediction: torch.Tensor, entropy: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The policy's input (N, C + 1, H, W): one-hot of f0's prediction and its entropy / log C.

    prediction (N, H, W) class indices of f0 (MC mean), entropy (N, H, W) in nats; scaling by
    the maximum entropy log C puts both parts in [0, 1] whatever the number of classes.
    """
    one_hot = F.one_hot(prediction.long(), n_classes).permute(0, 3, 1, 2).to(torch.float32)
    scaled = (entropy.to(torch.float32) / math.log(n_classes)).clamp(0, 1)
    return torch.cat([one_hot, scaled[:, None]], dim=1)


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
        from learners.routing.ranked import RankedPolicy  # it builds on this module

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
