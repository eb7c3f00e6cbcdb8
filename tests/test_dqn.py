import numpy as np
import pytest
import torch

from learners.errors import CheckpointError, InputError
from learners.query_network import QueryNetConfig, QueryNetwork
from sampling.dqn import (
    DQNAgent,
    DQNConfig,
    DQNSampler,
    FeatureSpec,
    choose_state_set,
    draw_pools,
    kl_histogram,
    play_episode,
    pooled_entropy,
    region_class_fractions,
    ReplayBuffer,
    Transition,
)
from sampling.regions import RegionPool


def test_replay_buffer_is_fifo_and_seeded():
    buf = ReplayBuffer(3)
    for r in range(5):
        buf.push(Transition(np.zeros((1, 1)), np.zeros((1, 2)), float(r), done=True))
    assert len(buf) == 3
    a = [t.reward for t in buf.sample(3, np.random.default_rng(0))]
    assert sorted(a) == [2.0, 3.0, 4.0]
    assert a == [t.reward for t in buf.sample(3, np.random.default_rng(0))]
    assert len(buf.sample(10, np.random.default_rng(1))) == 3


def test_transitions_are_checked():
    with pytest.raises(InputError, match="next_state"):
        Transition(np.zeros((1, 1)), np.zeros((2, 2)), 1.0)
    with pytest.raises(InputError, match="next pools"):
        Transition(np.zeros((1, 1)), np.zeros((2, 2)), 1.0, np.zeros((1, 1)), [np.zeros((3, 2))])


def test_query_network_shapes_and_gate():
    net = QueryNetwork(QueryNetConfig(state_regions=3, state_features=5, action_features=7, sim_features=4)).eval()
    q = net(torch.rand(6, 3, 5), torch.rand(6, 7))
    assert q.shape == (6,)
    no_gate = QueryNetwork(QueryNetConfig(3, 5, 7, 0)).eval()
    assert no_gate(torch.rand(2, 3, 5), torch.rand(2, 7)).shape == (2,)


def _agent(seed=0, **kw):
    return DQNAgent(QueryNetConfig(1, 2, 5, 2, width=16), DQNConfig(gamma=0.9, **kw), seed=seed)


def test_double_dqn_target_selects_with_target_and_values_with_query_network():
    agent = _agent()
    rng = np.random.default_rng(0)
    state, nxt = rng.random((1, 2)), rng.random((1, 2))
    pools = [rng.random((6, 5)), rng.random((4, 5))]
    for _ in range(50):  # perturb the target until it prefers another candidate than the query network
        with torch.no_grad():
            for p in agent.target.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        if agent.q_values(nxt, pools[0], agent.target).argmax() != agent.q_values(nxt, pools[0]).argmax():
            break
    t = Transition(state, rng.random((2, 5)), 0.3, nxt, pools)
    expected = []
    for pool in pools:
        best = agent.q_values(nxt, pool, agent.target).argmax()
        expected.append(0.3 + 0.9 * agent.q_values(nxt, pool[best : best + 1])[0])
    y = agent.targets([t, Transition(state, rng.random((2, 5)), -1.0, done=True)])
    assert y[:2] == pytest.approx(expected, rel=1e-5)
    assert y[0] != pytest.approx(0.3 + 0.9 * agent.q_values(nxt, pools[0]).max())  # not plain max over the query net
    assert y[2:].tolist() == [-1.0, -1.0]  # terminal: the reward alone, no next state needed


def test_target_network_syncs_every_n_updates():
    agent = _agent(target_sync=3, batch_size=2, lr=0.1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        agent.buffer.push(Transition(rng.random((1, 2)), rng.random((1, 5)), 1.0, done=True))
    assert agent.learn(rng) is not None
    same = lambda: all(torch.equal(a, b) for a, b in zip(agent.net.state_dict().values(), agent.target.state_dict().values()))
    assert not same()
    agent.learn(rng), agent.learn(rng)
    assert same()
    assert _agent(batch_size=8).learn(rng) is None  # empty buffer: no update


# --- the toy MDP: "charge" (reward 0) enables one "cash" worth 1 instead of 0.2; "noise" does nothing.
# Horizon 4, gamma 0.9. Optimal: charge when uncharged (2+ steps left), cash when charged: return 2.0;
# the greedy "always cash" policy gets 0.8. Only bootstrapped targets reveal the value of charging.
H, TYPES = 4, np.eye(3)


def _toy_pool(rng):
    t = rng.permutation([0, 1, 2, 2])
    return np.hstack([TYPES[t], np.ones((4, 1)), np.zeros((4, 1))]), t


def _toy_state(charged, left):
    return np.array([[float(charged), left / H]])


def _toy_episode(agent, rng, eps, learn=True):
    charged, total = False, 0.0
    pool, types = _toy_pool(rng)
    for left in range(H, 0, -1):
        s = _toy_state(charged, left)
        (i,), _ = agent.act(s, [pool], eps, rng)
        r = (1.0 if charged else 0.2) if types[i] == 1 else 0.0
        charged = {0: True, 1: False}.get(int(types[i]), charged)
        total += r
        nxt, ntypes = _toy_pool(rng)
        done = left == 1
        agent.buffer.push(Transition(s, pool[i : i + 1], r, None if done else _toy_state(charged, left - 1),
                                     None if done else [nxt], done))
        if learn:
            agent.learn(rng)
        pool, types = nxt, ntypes
    return total


def test_agent_learns_the_toy_mdp_optimal_policy():
    rng = np.random.default_rng(0)
    agent = _agent()
    for e in range(120):
        _toy_episode(agent, rng, max(0.05, 1 - e / 60))
    actions = np.hstack([TYPES, np.ones((3, 1)), np.zeros((3, 1))])
    for left in (2, 3, 4):
        assert agent.q_values(_toy_state(False, left), actions).argmax() == 0  # charge
    for left in (1, 2, 3, 4):
        assert agent.q_values(_toy_state(True, left), actions).argmax() == 1  # cash
    assert np.mean([_toy_episode(agent, rng, 0.0, learn=False) for _ in range(10)]) == pytest.approx(2.0)


def test_save_and_load_round_trip(tmp_path):
    agent = _agent(seed=3)
    path = agent.save(tmp_path / "agent.pt", meta={"dataset": "toy"})
    again = DQNAgent.load(path)
    x = np.random.default_rng(0).random((5, 5))
    assert np.allclose(agent.q_values(np.ones((1, 2)), x), again.q_values(np.ones((1, 2)), x))
    assert again.meta == {"dataset": "toy"}
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="query-network"):
        DQNAgent.load(tmp_path / "bad.pt")


# --- features


def test_kl_histogram_by_hand():
    d = np.array([[1.0, 0.0], [0.5, 0.5]])
    refs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    h = kl_histogram(d, refs, bins=3, kl_max=3.0)  # bins [0,1) [1,2) [2,3+)
    # KL([1,0] || .) = 0, ln 2, ~13.8 ; KL([.5,.5] || .) = ~6.6, 0, ~6.6
    assert h[0].tolist() == pytest.approx([2 / 3, 0, 1 / 3])
    assert h[1].tolist() == pytest.approx([1 / 3, 0, 2 / 3])
    assert kl_histogram(d, np.zeros((0, 2)), bins=3).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_region_features_by_hand():
    pool = RegionPool((1, 12, 12), 8)  # one full region, three partial ones
    ent = np.zeros((1, 12, 12))
    ent[0, :4, :4] = 1.0
    ent[0, 4:8, 4:8] = np.arange(16).reshape(4, 4)
    f = pooled_entropy(pool, np.array([0, 3]), ent, grid=2).reshape(2, 3, 2, 2)
    assert f[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # top-left block: min, mean, max
    assert f[0, :, 1, 1].tolist() == [0.0, 7.5, 15.0]
    assert f[1, :, 1, 1].tolist() == [0.0, 0.0, 0.0]  # the 4x4 partial region does not reach this block
    classes = np.zeros((1, 12, 12), int)
    classes[0, 8:, 8:] = 1
    assert region_class_fractions(pool, np.array([0, 3]), classes, 2).tolist() == [[1.0, 0.0], [0.0, 1.0]]


# --- the AL game: a rare class; the "model" predicts the truth, mIoU grows with the rare pixels labeled


class RareGame:
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = np.zeros((2, 48, 48), np.int64)
        self.pool = RegionPool(self.labels.shape, 8)  # 72 regions
        rare = rng.choice(len(self.pool), 12, replace=False)
        for r in self.pool.regions(rare):
            self.labels[r.slices] = 1
        self.entropy = rng.random(self.labels.shape) * 0.3
        self.bald = self.entropy / 3
        self.state_ids = choose_state_set(self.pool, self.labels, 2, 4, rng)

    def reset(self, rng):
        self.pool = RegionPool(self.labels.shape, 8)
        self.pool.mark_labeled(self.state_ids)
        self.history = [self.miou()]
        return self.history[0]

    def miou(self):
        lab = self.pool.labeled_ids
        return 0.4 + 0.5 * region_class_fractions(self.pool, lab, self.labels, 2)[:, 1].sum() / 12

    def needs(self):
        return {"pool": self.pool, "prediction": self.labels, "entropy": self.entropy, "bald": self.bald,
                "labels": self.labels, "state_ids": self.state_ids, "n_classes": 2}

    def label(self, ids):
        self.pool.mark_labeled(ids)
        self.history.append(self.miou())
        return self.history[-1]


def _spec():
    return FeatureSpec(grid=2, bins=4, state_regions=4)


def test_first_reward_is_measured_against_the_starting_miou_and_last_step_is_terminal():
    game, spec = RareGame(), _spec()
    agent = DQNAgent(spec.net_config(16), DQNConfig(batch_size=4))
    rewards = play_episode(agent, game, spec, steps=3, k=2, rng=np.random.default_rng(0), epsilon=1.0)
    assert len(rewards) == 3 and len(agent.buffer) == 3
    assert game.history[0] >= 0.4  # a first reward against 0 would be inflated by this much
    assert rewards == pytest.approx(np.diff(game.history).tolist())
    items = list(agent.buffer._items)
    assert [t.done for t in items] == [False, False, True] and items[-1].next_pools is None
    assert items[0].actions.shape == (2, spec.net_config().action_features)


def test_dqn_sampler_learns_to_ask_for_the_rare_class():
    game, spec = RareGame(seed=1), _spec()
    # the teacher (random BALD here) knows nothing of the rare class: pure DQN, no imitation term
    agent = DQNAgent(spec.net_config(32), DQNConfig(gamma=0.5, batch_size=8, imitation_weight=0.0), seed=0)
    rng = np.random.default_rng(0)
    for e in range(60):
        play_episode(agent, game, spec, steps=3, k=2, rng=rng, epsilon=max(0.1, 1 - e / 30), pool_size=6)
    sampler = DQNSampler(agent, spec, pool_size=6)
    hits = []
    for seed in range(10):
        game.reset(rng)
        sel = sampler.select(game.pool.candidates(), 4, np.random.default_rng(seed), **game.needs())
        hits.append(region_class_fractions(game.pool, sel.ids, game.labels, 2)[:, 1].mean())
    rare_share = 12 / len(game.pool)
    assert np.mean(hits) > 2.5 * rare_share  # random picks would hit the rare class 1 / 6 of the time


def test_dqn_sampler_interface():
    game, spec = RareGame(), _spec()
    game.reset(np.random.default_rng(0))
    sampler = DQNSampler(DQNAgent(spec.net_config(16)), spec, pool_size=5)
    cands = game.pool.candidates()
    a = sampler.select(cands, 6, np.random.default_rng(2), **game.needs())
    b = sampler.select(cands, 6, np.random.default_rng(2), **game.needs())
    assert a.ids.size == 6 and np.unique(a.ids).size == 6 and np.array_equal(a.ids, b.ids)
    assert sampler.select(cands[:7], 7, np.random.default_rng(0), **game.needs()).ids.size == 7
    with pytest.raises(InputError, match="only 7 candidates"):
        sampler.select(cands[:7], 8, np.random.default_rng(0), **game.needs())
    with pytest.raises(InputError, match="state set"):
        sampler.select(cands, 2, np.random.default_rng(0), **{**game.needs(), "state_ids": np.arange(0)})
    with pytest.raises(InputError, match="feature sizes"):
        DQNSampler(DQNAgent(FeatureSpec(grid=3, bins=4).net_config(16)), spec)
    assert [p.size for p in draw_pools(np.arange(10), 3, 5, np.random.default_rng(0))] == [3, 3, 3]


def test_saved_agent_and_feature_spec_rebuild_the_same_sampler(tmp_path):
    import json

    game, spec = RareGame(), _spec()
    game.reset(np.random.default_rng(0))
    agent = DQNAgent(spec.net_config(16), seed=4)
    path = agent.save(tmp_path / "dqn.pt", meta={"features": spec.to_dict()})
    loaded = DQNAgent.load(path)
    spec2 = FeatureSpec.from_dict(json.loads(json.dumps(loaded.meta["features"])))
    cands = game.pool.candidates()
    a = DQNSampler(agent, spec, 5).select(cands, 3, np.random.default_rng(1), **game.needs())
    b = DQNSampler(loaded, spec2, 5).select(cands, 3, np.random.default_rng(1), **game.needs())
    assert np.array_equal(a.ids, b.ids) and np.allclose(a.scores, b.scores)


# --- imitation of the teacher heuristic


def test_imitation_loss_by_hand():
    from sampling.dqn import imitation_loss

    t = torch.tensor([3.0, 2.0, 1.0])
    assert float(imitation_loss(torch.tensor([2.0, 1.0, 0.0]), t, 0.1)) == 0.0  # same order, gaps >= margin
    # reversed: pairs (0,1), (0,2), (1,2) violated by 1.1, 2.1, 1.1
    assert float(imitation_loss(torch.tensor([0.0, 1.0, 2.0]), t, 0.1)) == pytest.approx((1.1 + 2.1 + 1.1) / 3)
    assert float(imitation_loss(torch.tensor([0.0, 5.0]), torch.tensor([1.0, 1.0]), 0.1)) == 0.0  # ties: nothing


def test_imitation_pretraining_reproduces_the_teachers_ranking():
    from scipy.stats import spearmanr

    from sampling.dqn import Demo

    rng = np.random.default_rng(0)
    agent = DQNAgent(QueryNetConfig(3, 4, 6, 2, width=32), DQNConfig(lr=3e-3, batch_size=16), seed=0)

    def teacher(a):  # a nonlinear heuristic of the candidate's features, blind to the state
        return a[:, 0] - 0.5 * a[:, 1] ** 2 + 0.3 * a[:, 2] * a[:, 3]

    def pool():
        s, a = rng.random((3, 4)), rng.random((8, 6))
        return s, a, teacher(a)

    for _ in range(200):
        agent.demos.append(Demo(*pool()))
    before = [spearmanr(agent.q_values(s, a), t)[0] for s, a, t in (pool() for _ in range(30))]
    losses = agent.imitate(400, rng)
    assert np.mean(losses[-50:]) < 0.25 * np.mean(losses[:10])
    fresh = [pool() for _ in range(30)]
    rho = [spearmanr(agent.q_values(s, a), t)[0] for s, a, t in fresh]
    top = [agent.q_values(s, a).argmax() == t.argmax() for s, a, t in fresh]
    assert np.mean(rho) > 0.9 and np.mean(rho) > np.mean(before) + 0.3
    assert np.mean(top) >= 0.8  # argmax Q is the teacher's pick in (nearly) every unseen pool
    for a, b in zip(agent.net.state_dict().values(), agent.target.state_dict().values()):
        assert torch.equal(a, b)  # the target starts from the imitated network


def test_teacher_episodes_record_demos_and_the_teacher_policy_picks_bald():
    game, spec = RareGame(), _spec()
    agent = DQNAgent(spec.net_config(16), DQNConfig(batch_size=4))
    play_episode(agent, game, spec, steps=2, k=2, rng=np.random.default_rng(0), epsilon=0.0, policy="teacher",
                 learn=False)
    assert len(agent.demos) == 4 and len(agent.buffer) == 2  # 2 steps x 2 pools
    d = agent.demos[0]
    assert d.actions.shape == (len(d.teacher), spec.net_config().action_features)
    game.reset(np.random.default_rng(0))
    sampler = DQNSampler(agent, spec, pool_size=5, policy="teacher")
    cands = game.pool.candidates()
    sel = sampler.select(cands, 3, np.random.default_rng(1), **game.needs())
    pools = draw_pools(cands, 3, 5, np.random.default_rng(1))
    sums = game.pool.reduce(game.bald, "sum")
    assert sorted(sel.ids.tolist()) == sorted(int(p[np.argmax(sums[p])]) for p in pools)
    n = len(agent.demos)
    play_episode(agent, game, spec, steps=2, k=2, rng=np.random.default_rng(0), epsilon=0.0, learn=False,
                 record=False)
    assert len(agent.demos) == n and len(agent.buffer) == 2  # evaluation leaves the agent untouched


def test_features_do_not_depend_on_the_class_count():
    from sampling.dqn import observe

    spec = _spec()
    sizes = set()
    for c in (2, 3, 5):
        rng = np.random.default_rng(c)
        labels = rng.integers(0, c, (2, 32, 32))
        pool = RegionPool(labels.shape, 8)
        pool.mark_labeled(np.arange(3))
        needs = {"pool": pool, "prediction": labels, "entropy": rng.random(labels.shape), "bald": rng.random(labels.shape),
                 "labels": labels, "state_ids": np.arange(3, 3 + c), "n_classes": c}
        state, actions = observe(spec, needs, rng)
        a = actions(pool.candidates()[:4])
        sizes.add((state.shape, a.shape[1]))
        assert np.isfinite(a).all() and a[:, :4].min() >= 0 and a[:, :4].max() <= 1
    assert sizes == {((3, spec.region_size), spec.net_config().action_features)}
