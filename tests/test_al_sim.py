import numpy as np
import pytest

import napari_paser.bench.al_sim as al_sim
from learners.errors import InputError
from learners.training import IGNORE_INDEX
from napari_paser.bench.al_sim import (
    SegmentationGame,
    SimConfig,
    Split,
    check_budgets,
    labeled_class_counts,
    sim_sampler,
    simulate,
    start,
    train_dqn,
    training_set,
)
from napari_paser.errors import PaserInputError
from napari_paser.data.synth import synth_volume
from sampling.base import Selection
from sampling.dqn import DQNAgent, DQNSampler, FeatureSpec, play_episode
from sampling.regions import RegionPool
from sampling.uncertainty import RandomSampler

CFG = SimConfig(region=32, train_steps=2, seed_steps=2, batch_size=2, samples=2, pool_size=3, state_regions=4)


@pytest.fixture(scope="module")
def splits():
    """6 pool slices and 2 test slices of 64x64: 24 regions of 32x32."""
    img, lab = synth_volume(8, 64, seed=0, correlation_length=4)
    return Split(img[:6], lab[:6]), Split(img[6:], lab[6:])


def _union_mask(pool: RegionPool, ids) -> np.ndarray:
    mask = np.zeros(pool.shape, bool)
    for r in pool.regions(np.asarray(ids)):
        mask[r.slices] = True
    return mask


class Recording(RandomSampler):
    """Random sampler that remembers the candidates it was offered."""

    def __init__(self):
        self.offered = []

    def _select(self, candidates, k, rng, **needs) -> Selection:
        self.offered.append(candidates.copy())
        return super()._select(candidates, k, rng, **needs)


@pytest.mark.parametrize("name", ["random", "entropy", "bald", "taudis"])
def test_labeled_set_grows_by_k_without_duplicates(splits, name):
    data, test = splits
    learner = start(data, 3, CFG, 4, seed=0)
    seed_ids = set(learner.pool.labeled_ids.tolist())
    trace = simulate(learner, sim_sampler(name, CFG), name, test, [4, 7, 10], np.random.default_rng(0))
    assert [len(c) for c in trace.chosen] == [3, 3]
    added = [i for c in trace.chosen for i in c]
    assert len(set(added)) == 6 and not set(added) & seed_ids
    assert set(learner.pool.labeled_ids.tolist()) == seed_ids | set(added)
    assert trace.budgets == [4, 7, 10] and len(trace.miou) == 3 and all(0 <= m <= 1 for m in trace.miou)
    assert [sum(c) for c in trace.class_counts] == [4 * 32 * 32, 7 * 32 * 32, 10 * 32 * 32]


def test_accepted_regions_are_never_proposed_again(splits):
    data, test = splits
    learner = start(data, 3, CFG, 4, seed=1)
    sampler = Recording()
    trace = simulate(learner, sampler, "random", test, [4, 8, 12, 16], np.random.default_rng(0))
    labeled = set(start(data, 3, CFG, 4, seed=1).pool.labeled_ids.tolist())
    for offered, chosen in zip(sampler.offered, trace.chosen):
        assert not labeled & set(offered.tolist())  # labeled regions are not candidates
        assert len(offered) == 24 - len(labeled)
        labeled |= set(chosen)


def test_training_set_is_exactly_the_union_of_labeled_regions(splits):
    data, _ = splits
    pool = RegionPool(data.images.shape, 32)
    ids = np.array([0, 5, 6, 17])  # slices 0, 1, 1, 4
    pool.mark_labeled(ids)
    x, y = training_set(pool, data.images, data.labels)
    assert len(x) == 3 and np.array_equal(x, data.images[[0, 1, 4]])
    union = _union_mask(pool, ids)[[0, 1, 4]]
    assert np.array_equal(y != IGNORE_INDEX, union)
    assert np.array_equal(y[union], data.labels[[0, 1, 4]][union])
    assert labeled_class_counts(pool, data.labels, 3).sum() == 4 * 32 * 32


def test_retraining_sees_only_the_chosen_regions(splits, monkeypatch):
    data, test = splits
    seen = []
    real_train = al_sim.train

    def spy(model, x, y, **kw):
        seen.append((x, y, kw["config"].lr))
        return real_train(model, x, y, **kw)

    monkeypatch.setattr(al_sim, "train", spy)
    learner = start(data, 3, CFG, 4, seed=2)
    trace = simulate(learner, sim_sampler("entropy", CFG), "entropy", test, [4, 6], np.random.default_rng(0))
    x, y, _ = seen[-1]
    assert len(x) == CFG.train_steps * CFG.batch_size  # a fixed number of steps
    assert [lr for *_, lr in seen] == [CFG.lr, CFG.warm_lr]  # from scratch on the seed set, then warm
    union = _union_mask(learner.pool, learner.pool.labeled_ids)
    for xi, yi in zip(x, y):  # every sample is a slice with a labeled region, labeled exactly there
        z = next(z for z in range(len(data.images)) if np.array_equal(data.images[z], xi))
        assert union[z].any() and np.array_equal(yi != IGNORE_INDEX, union[z])
        assert np.array_equal(yi[union[z]], data.labels[z][union[z]])
    assert len(trace.chosen[0]) == 2


def test_simulation_is_deterministic_for_a_seed(splits):
    data, test = splits
    runs = []
    for _ in range(2):
        learner = start(data, 3, CFG, 4, seed=3)
        runs.append(simulate(learner, sim_sampler("bald", CFG), "bald", test, [4, 6, 8], np.random.default_rng(5)))
    assert runs[0].chosen == runs[1].chosen and runs[0].miou == runs[1].miou


def test_game_rewards_and_trained_agent_drive_the_dqn_sampler(splits, tmp_path):
    data, test = splits
    game = SegmentationGame(data, test, 3, CFG, n_seed=4, seed=0)
    m0 = game.reset(np.random.default_rng(0))
    assert m0 == pytest.approx(100 * game.learner.miou(test))  # the first reward's baseline, not 0
    spec = FeatureSpec(grid=2, bins=4)
    agent = DQNAgent(spec.net_config(16))
    rewards = play_episode(agent, game, spec, 2, 2, np.random.default_rng(0), epsilon=1.0, pool_size=3)
    assert len(game.learner.pool.labeled_ids) == 8 and len(rewards) == 2
    assert rewards[0] == pytest.approx(agent.buffer._items[0].reward)
    assert game.reset(np.random.default_rng(0)) == m0 and len(game.learner.pool.labeled_ids) == 4  # episodes restart

    path = tmp_path / "agent.pt"
    cfg = al_sim.DQNTrainConfig(episodes=2, steps=1, k=2, n_seed=4, updates_per_episode=1, grid=2, bins=4, width=16,
                                teacher_episodes=1, imitation_steps=3, eval_episodes=1)
    info = train_dqn(data, test, 3, path, CFG, cfg, progress=False)
    assert len(info["episode_rewards"]) == 3 and info["sim"]["region"] == 32  # 1 teacher + 2 DQN episodes
    assert set(info["eval_gains"]) == {"dqn", "imitation", "teacher"} and info["chosen"] in info["eval_gains"]
    best = max(np.mean(info["eval_gains"][n]) for n in ("dqn", "imitation"))
    assert (info["chosen"] == "teacher") == (best < np.mean(info["eval_gains"]["teacher"]))  # never below the teacher
    sampler = sim_sampler("dqn", CFG, path)
    assert isinstance(sampler, DQNSampler) and sampler.policy == info["policy"]
    learner = start(data, 3, CFG, 4, seed=0)
    trace = simulate(learner, sampler, "dqn", test, [4, 7], np.random.default_rng(0))
    assert len(set(trace.chosen[0])) == 3
    assert len(trace.class_iou) == 2 and np.nanmean(trace.class_iou[-1]) == pytest.approx(trace.miou[-1], abs=1e-4)
    other = sim_sampler("dqn", SimConfig(region=16, state_regions=4), path)  # features fit any region size
    assert isinstance(other, DQNSampler)


def test_user_errors_are_clear(splits):
    with pytest.raises(InputError, match="query-network"):
        sim_sampler("dqn", CFG, "missing.pt")
    with pytest.raises(InputError, match="unknown sampler"):
        sim_sampler("coreset", CFG)
    with pytest.raises(PaserInputError, match="increasing"):
        check_budgets([8, 8, 16], 100)
    with pytest.raises(PaserInputError, match="below the pool"):
        check_budgets([8, 100], 100)
    data, test = splits
    learner = start(data, 3, CFG, 4, seed=0)
    with pytest.raises(PaserInputError, match="first budget"):
        simulate(learner, RandomSampler(), "random", test, [5, 8], np.random.default_rng(0))
