"""Samplers for a session by name, and the inputs each one reads (`needs`).

Kept apart from `session.py` so the Session only asks "k regions with sampler X" and this
module knows that TAUDIS wants region embeddings and the DQN sampler a trained agent, a
fixed state set and the labeled classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from learners.errors import InputError
from learners.unet import UNet
from sampling.base import Sampler
from sampling.regions import RegionPool
from sampling.uncertainty import BaldSampler, EntropySampler, RandomSampler

SAMPLERS = ("random", "entropy", "bald", "taudis", "dqn")
"""Sampler names a session accepts; every one but "random" reads f0's maps."""


def make_sampler(name: str, dqn_checkpoint: str | Path | None = None, **options) -> Sampler:
    """A sampler by name; TAUDIS takes alpha/beta/sigma/measure, DQN a saved agent (`dqn_checkpoint`)."""
    from napari_paser.errors import PaserInputError

    if name not in SAMPLERS:
        raise PaserInputError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if name == "random":
        return RandomSampler()
    if name == "entropy":
        return EntropySampler()
    if name == "bald":
        return BaldSampler()
    if name == "taudis":
        from sampling.taudis import TaudisSampler

        return TaudisSampler(**options)
    return _dqn_sampler(dqn_checkpoint, options.get("pool_size", 10))


def _dqn_sampler(path: str | Path | None, pool_size: int) -> Sampler:
    from learners.query_network import DQNAgent
    from napari_paser.errors import PaserInputError
    from sampling.dqn import DQNSampler, FeatureSpec

    if path is None:
        raise PaserInputError("the DQN sampler needs a trained agent: pass dqn_checkpoint= (a query-network .pt file)")
    agent = DQNAgent.load(path)
    if "features" not in agent.meta:
        raise PaserInputError(f"{path} has no feature sizes in its meta ('features'); save the agent with them")
    return DQNSampler(agent, FeatureSpec.from_dict(agent.meta["features"]), pool_size=pool_size)


def dqn_state_ids(pool: RegionPool, allowed: np.ndarray, n: int) -> np.ndarray:
    """The DQN's fixed state set: n regions drawn with a fixed seed among `allowed` ids."""
    if allowed.size < n:
        raise InputError(f"the DQN agent needs a state set of {n} regions; compute maps on more slices first")
    return np.sort(np.random.default_rng(0).choice(allowed, n, replace=False))


@torch.no_grad()
def slice_embeddings(model: UNet, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(cells, F) region embeddings of one slice: f0's decoder features averaged per region."""
    was = model.training
    model.eval()
    try:
        feats = model.features(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None])[0].numpy()
    finally:
        model.train(was)
    return RegionPool(image.shape, size).embed(feats)

