"""The DQN agent the package ships: loads safely, and a session uses it with no agent file."""

import numpy as np
import pytest
import torch

from learners.query_network import FORMAT
from sampling import registry
from sampling.base import SamplingError
from sampling.dqn import DQNAgent, DQNSampler, FeatureSpec


def test_shipped_agent_loads_with_weights_only():
    path = registry.SHIPPED_AGENT
    assert path.exists(), "sampling/agents/dqn-agent.pt must ship with the package"
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code in it
    assert payload["format"] == FORMAT
    agent = DQNAgent.load(path)
    meta = agent.meta
    assert {"features", "command", "eval_gains", "chosen", "policy"} <= set(meta)
    assert "--synthetic" in meta["command"]  # reproducible from the package's generator
    assert FeatureSpec.from_dict(meta["features"]).matches(agent.net.config)
    sampler = registry.make_sampler("dqn")
    assert isinstance(sampler, DQNSampler) and sampler.policy == meta["policy"]
    for c in (2, 3, 5):
        sampler.check_classes(c)  # any class count: the features do not depend on it


def test_a_missing_shipped_agent_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "SHIPPED_AGENT", tmp_path / "gone.pt")
    with pytest.raises(SamplingError, match="shipped DQN agent .* is missing.*paser al train-dqn"):
        registry.make_sampler("dqn")


def test_old_class_specific_agents_are_refused_clearly():
    with pytest.raises(SamplingError, match="train it again"):
        FeatureSpec.from_dict({"n_classes": 3, "state_regions": 8, "grid": 4, "bins": 8})


def test_session_proposes_with_the_shipped_agent_and_no_file(tmp_path):
    from learners.generators import collect
    from tests.test_session import TINY, full, image
    from napari_paser.session.core import Session

    session = Session.create(tmp_path / "s", image(), region_size=16)  # 2 slices of 64x64: 32 regions
    session.new_models({"f0": TINY})
    collect(session.compute_maps(samples=2))
    session.accept(0, full(session, 0, 2))
    props = session.propose(3, "dqn", seed=0)  # no dqn_checkpoint: the shipped agent
    ids = [p.region_id for p in props]
    assert len(props) == 3 and len(set(ids)) == 3 and all(p.sampler == "dqn" for p in props)
    assert 0 not in ids and all(np.isfinite(p.score) for p in props)
