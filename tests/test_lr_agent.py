import json

import numpy as np
import pytest

from learners.errors import InputError
from learners.lr_agent import ACTIONS, STATES, LRAgent, LRAgentConfig, q_update, reward, trend_state
from learners.training import TrainConfig, train
from learners.unet import UNetConfig, build_unet


@pytest.mark.parametrize(
    "scores,losses,state",
    [
        ([0.5], [1.0], "insufficient_data"),
        ([0.5, 0.6], [1.0, 0.9], "insufficient_data"),
        ([0.5, 0.6, 0.7], [1.0, 0.9, 0.8], "improving"),
        ([0.5, 0.6, 0.6], [1.0, 0.9, 0.9], "improving"),  # flat steps do not break a trend
        ([0.7, 0.6, 0.5], [0.8, 0.9, 1.0], "worsening"),
        ([0.5, 0.5005, 0.5], [1.0, 1.0005, 1.0], "plateau"),  # within tolerance
        ([0.5, 0.6, 0.5, 0.6, 0.5], [1.0, 0.9, 1.0, 0.9, 1.0], "oscillating"),
        ([0.5, 0.6, 0.6, 0.55], [1.0, 0.9, 0.9, 0.9], "mixed"),  # up, flat, down: one flip only
        ([0.9, 0.1, 0.2, 0.3, 0.4, 0.5], [9.0, 1.0, 0.9, 0.8, 0.7, 0.6], "improving"),  # only the last 5 epochs count
    ],
)
def test_trend_states(scores, losses, state):
    assert trend_state(scores, losses) == state


def test_q_update_and_reward_by_hand():
    q = {s: {a: 0.0 for a in ACTIONS} for s in STATES}
    q["plateau"]["decrease"] = 0.5
    q["improving"].update(maintain=0.8, increase=0.3)
    # 0.5 + 0.1 * (1.0 + 0.9 * 0.8 - 0.5) = 0.622
    assert q_update(q, "plateau", "decrease", 1.0, "improving", 0.1, 0.9) == pytest.approx(0.622)
    assert q["plateau"]["decrease"] == pytest.approx(0.622)
    # 10 * 0.02 + 5 * 0.1 + 1 (new best) = 1.7; minus 1 at a bound
    assert reward(0.02, 0.1, True, False) == pytest.approx(1.7)
    assert reward(0.02, 0.1, True, True) == pytest.approx(0.7)
    assert reward(-0.01, -0.2, False, False) == pytest.approx(-1.1)


def _greedy_config(**kw):
    base = dict(base_lr=1e-3, exploration_rate=0.0, min_exploration_rate=0.0, patience=3, cooldown=2)
    return LRAgentConfig(**{**base, **kw})


def _q(best_action="decrease"):
    return {s: {a: (1.0 if a == best_action else 0.0) for a in ACTIONS} for s in STATES}


def test_agent_patience_cooldown_and_q_learning_by_hand():
    agent = LRAgent(_greedy_config(), q_table=_q("decrease"))
    seq = [(0.5, 1.0), (0.6, 0.9), (0.7, 0.8), (0.75, 0.7), (0.8, 0.6), (0.85, 0.5)]
    lrs = [agent.step(s, l) for s, l in seq]
    # patience: no decision for the first 3 epochs; decide at epoch 2; cooldown 2 epochs; decide again at epoch 5
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4])
    assert [(d["epoch"], d["state"], d["action"]) for d in agent.decisions] == [
        (2, "improving", "decrease"),
        (5, "improving", "decrease"),
    ]
    # r = 10 * (0.85 - 0.7) + 5 * (0.8 - 0.5) + 1 (new best) = 4.0
    # Q = 1 + 0.1 * (4.0 + 0.9 * 1.0 - 1) = 1.39
    assert agent.decisions[0]["reward"] == pytest.approx(4.0)
    assert agent.q_table["improving"]["decrease"] == pytest.approx(1.39)
    agent.step(0.85, 0.5)  # cooldown again: nothing learned yet
    assert agent.q_table["improving"]["decrease"] == pytest.approx(1.39)


def test_rate_is_clamped_and_pushing_into_a_bound_is_penalised():
    agent = LRAgent(_greedy_config(base_lr=2e-4, min_lr=1e-4, patience=1, cooldown=0), q_table=_q("decrease"))
    lrs = [agent.step(0.5, 1.0) for _ in range(3)]
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4])
    # second decision judges the first: flat metrics, no new best, rate at min_lr -> reward -1
    assert agent.decisions[0]["reward"] == pytest.approx(-1.0)
    agent = LRAgent(_greedy_config(base_lr=9e-3, max_lr=1e-2, patience=1, cooldown=0), q_table=_q("increase"))
    assert agent.step(0.5, 1.0) == pytest.approx(1e-2)


def test_exploration_decays_and_is_deterministic_for_a_seed():
    cfg = LRAgentConfig(base_lr=1e-3, exploration_rate=0.9, exploration_decay=0.5, min_exploration_rate=0.1,
                        patience=1, cooldown=0)
    rng = np.random.default_rng(0)
    metrics = list(zip(rng.random(30), rng.random(30)))
    runs = []
    for _ in range(2):
        agent = LRAgent(cfg, seed=7)
        runs.append([agent.step(s, l) for s, l in metrics])
    assert runs[0] == runs[1]
    assert agent.exploration_rate == pytest.approx(0.1)
    assert len({d["action"] for d in agent.decisions}) > 1


def test_q_table_round_trips_through_json():
    agent = LRAgent(_greedy_config(patience=1, cooldown=0), seed=3)
    for s, l in [(0.5, 1.0), (0.6, 0.8), (0.7, 0.7), (0.6, 0.9)]:
        agent.step(s, l)
    agent.finish()
    data = json.loads(json.dumps(agent.to_dict()))
    again = LRAgent.from_dict(data)
    assert again.q_table == agent.q_table and again.config == agent.config
    assert again.exploration_rate == agent.exploration_rate
    with pytest.raises(InputError, match="Q-table"):
        LRAgent(q_table={"plateau": {}})
    with pytest.raises(InputError, match="min_lr"):
        LRAgentConfig(base_lr=1.0)


def _toy(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, size // 8, size // 8)) * 3).astype(np.uint8).repeat(8, 1).repeat(8, 2)
    images = (labels / 2 + rng.normal(0, 0.1, labels.shape)).astype(np.float32)
    return images, labels


def test_agent_scheduler_drives_training_and_returns_its_q_table():
    x, y = _toy()
    model = build_unet(UNetConfig(base=4, depth=2))
    agent = LRAgent(_greedy_config(patience=1, cooldown=0, max_lr=1e-2), q_table=_q("decrease"))
    cfg = TrainConfig(epochs=3, batch_size=2, lr=1e-3, scheduler="agent", patience=10)
    result = train(model, x[:2], y[:2], x[2:], y[2:], cfg, progress=False, lr_agent=agent)
    assert [h.lr for h in result.history] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert set(result.lr_agent["q_table"]) == set(STATES)
    assert [d["epoch"] for d in result.lr_agent["decisions"]] == [0, 1, 2]
    assert all("reward" in d for d in result.lr_agent["decisions"])  # the last one judged at the end of the run
    json.dumps(result.lr_agent)


def test_fresh_agent_scheduler_is_deterministic():
    x, y = _toy()
    runs = []
    for _ in range(2):
        model = build_unet(UNetConfig(base=4, depth=2))
        cfg = TrainConfig(epochs=2, batch_size=2, lr=1e-3, scheduler="agent", seed=1)
        runs.append(train(model, x[:2], y[:2], x[2:], y[2:], cfg, progress=False).lr_agent)
    assert runs[0] == runs[1] and runs[0]["config"]["base_lr"] == 1e-3
