"""What every routing policy reads, and how it cuts it into patches: the policy's state (f0's one-hot
prediction and its scaled entropy, `policy_state`), its config (`PolicyConfig`: the routing patches and
the kind of policy) and the padding that lines pooled cells up with grid patches (`pad_to_grid`).

The policy network (`learners.routing.policy`) and the uncertainty-ranked rule (`learners.routing.ranked`)
both build on this module; `learners.routing.policy` re-exports its names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from learners.errors import ConfigError
from learners.grid import GRID, Patching

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
    if prediction.numel() and int(prediction.max()) >= n_classes:
        raise ValueError(f"f0's prediction holds class {int(prediction.max())} but there are {n_classes} classes")
    out = torch.empty((prediction.shape[0], n_classes + 1, *prediction.shape[1:]), dtype=torch.float32,
                      device=prediction.device)
    classes = torch.arange(n_classes, dtype=prediction.dtype, device=prediction.device)
    torch.eq(prediction[:, None], classes[None, :, None, None], out=out[:, :n_classes])  # one-hot, no int64 copy
    torch.clamp(entropy.to(torch.float32) / math.log(n_classes), 0, 1, out=out[:, n_classes])
    return out
