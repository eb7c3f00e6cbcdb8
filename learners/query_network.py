"""The RALIS query network (Casanova et al. 2020, section 3.2, appendix B).

`QueryNetwork` scores one candidate region (an action) in one state: a state path (4 layers)
over the flattened features of the fixed state set and an action path (3 layers) over the
candidate's features are concatenated and fused by one layer into global features, which a
sigmoid gate computed from the candidate's KL-divergence histograms scales elementwise before
a last linear layer gives the Q-value (appendix B, Fig. B.1). Layers are norm -> ReLU ->
Linear, the first layer of each path without the ReLU (it would zero every below-average raw
input). Two departures from the paper, both found on the tests' toy problems:
- by default (`norm="layer"`) only the inputs go through BatchNorm and hidden layers use
  LayerNorm (`norm="batch"` is the paper's BatchNorm everywhere): a hidden activation that is
  constant across a batch, as the state path's is when the state barely changes, is zero under
  batch statistics (gradient step) but its lagging running statistics (acting, TD targets)
  amplify every weight change by 1/sqrt(eps), and the bootstrapped targets diverged.
- the fusion layer has a ReLU: a purely linear fusion makes Q additive in state and action,
  so the best candidate of a pool could never depend on the state.

The agent that trains it (replay, double-DQN targets, imitation of a teacher) is `sampling.dqn.DQNAgent`,
beside the RALIS environment and episode loop it learns in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from learners.errors import InputError

FORMAT = "napari-paser/query-network"
"""The checkpoint format of a trained query network (`sampling.dqn.DQNAgent.save`)."""


@dataclass(frozen=True)
class QueryNetConfig:
    """Input sizes and width; the last `sim_features` action columns are the KL histograms."""

    state_regions: int
    state_features: int
    action_features: int
    sim_features: int
    width: int = 64
    norm: str = "layer"  # "layer" | "batch" (the paper) | "none"

    def __post_init__(self) -> None:
        if min(self.state_regions, self.state_features, self.action_features, self.width) < 1:
            raise InputError("query network sizes must be positive")
        if self.norm not in ("layer", "batch", "none"):
            raise InputError(f"norm must be 'layer', 'batch' or 'none', got {self.norm!r}")
        if not 0 <= self.sim_features <= self.action_features:
            raise InputError("sim_features must lie in 0..action_features")


def _norm(kind: str, n: int, first: bool) -> nn.Module:
    if kind == "batch" or (kind == "layer" and first):
        return nn.BatchNorm1d(n)
    if kind == "layer":
        return nn.LayerNorm(n)
    return nn.Identity()


def _path(n_in: int, width: int, layers: int, norm: str) -> nn.Sequential:
    mods: list[nn.Module] = [_norm(norm, n_in, True), nn.Linear(n_in, width)]
    for _ in range(layers - 1):
        mods += [_norm(norm, width, False), nn.ReLU(), nn.Linear(width, width)]
    return nn.Sequential(*mods)


class QueryNetwork(nn.Module):
    """Q(s, a) for batches of (state, candidate) pairs."""

    def __init__(self, config: QueryNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.state_path = _path(c.state_regions * c.state_features, c.width, 4, c.norm)
        self.action_path = _path(c.action_features, c.width, 3, c.norm)
        self.fuse = nn.Sequential(nn.ReLU(), nn.Linear(2 * c.width, c.width), nn.ReLU())
        gate_in = _norm(c.norm, c.sim_features, True) if c.sim_features else None
        self.gate = nn.Sequential(gate_in, nn.Linear(c.sim_features, c.width)) if c.sim_features else None
        self.out = nn.Linear(c.width, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """state (B, S, F), action (B, A) -> Q (B,)."""
        s = self.state_path(state.flatten(1))
        a = self.action_path(action)
        glob = self.fuse(torch.cat([s, a], 1))
        if self.gate is not None:
            glob = glob * torch.sigmoid(self.gate(action[:, -self.config.sim_features :]))
        return self.out(glob).squeeze(1)
