"""The uncertainty-ranked routing policy: f0's patch-mean entropy against thresholds set by a share."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learners.errors import ConfigError
from learners.routing.bank import PolicyBank, load_bank, save_bank
from learners.routing.policy import PolicyConfig, PolicyNet, load_policy, policy_state, save_policy
from learners.routing.ranked import (NEVER, RankedPolicy, entropy_sample, from_share, patch_score, share_threshold,
                                     tail_level)
from learners.routing.router import F0State, policy_probabilities

CFG = PolicyConfig(n_classes=3, n_models=3, patch=(16, 16), kind="ranked")


def state_of(patch_entropy_grid: np.ndarray, patch: int = 16) -> F0State:
    """One slice whose entropy is constant on each 16 px patch (nats), prediction all class 0."""
    ent = np.kron(patch_entropy_grid, np.ones((patch, patch)))
    return F0State(torch.zeros((1, *ent.shape), dtype=torch.uint8), torch.from_numpy(ent[None].astype(np.float32)), 3, 2)


def test_share_threshold_leaves_that_share_of_patches_above_it():
    values = np.random.default_rng(0).random(1000)
    for share in (0.05, 0.2, 0.5):
        assert abs(np.mean(values > share_threshold(values, share)) - share) <= 0.002
    assert share_threshold(values, 0.0) == NEVER and (values > share_threshold(values, 1.0)).all()
    with pytest.raises(ConfigError, match="share"):
        share_threshold(values, 1.5)


def test_ranked_policy_sends_the_most_uncertain_patches_to_the_largest_model():
    grid = np.array([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7], [0.8, 0.9, 1.0, 1.05]])  # nats
    state = state_of(grid)
    scaled = patch_score(state.policy_input(), CFG)[0].numpy()
    np.testing.assert_allclose(scaled, np.clip(grid.ravel() / math.log(3), 0, 1), rtol=1e-5)
    policy = from_share(CFG, scaled, 0.25)  # the top 3 of 12 patches
    actions = policy_probabilities(policy, state).argmax(-1)[0].numpy()
    np.testing.assert_array_equal(actions, np.where(np.arange(12) >= 9, 2, 0))  # f1 skipped: one threshold for both
    assert (policy_probabilities(from_share(CFG, scaled, 0.0), state).argmax(-1) == 0).all()
    assert (policy_probabilities(from_share(CFG, scaled, 1.0), state).argmax(-1) == 2).all()


def test_ordinal_thresholds_route_a_middle_band_to_f1_and_refuse_a_smaller_model_for_harder_patches():
    policy = RankedPolicy(CFG).set_thresholds([0.3, 0.7])
    grid = np.array([[0.1, 0.5, 0.9, 0.2]]) * math.log(3)  # scaled 0.1, 0.5, 0.9, 0.2
    actions = policy_probabilities(policy, state_of(grid)).argmax(-1)[0].numpy()
    np.testing.assert_array_equal(actions, [0, 1, 2, 0])
    with pytest.raises(ConfigError, match="non-decreasing"):
        RankedPolicy(CFG).set_thresholds([0.7, 0.3])
    with pytest.raises(ConfigError, match="kind='ranked'"):
        RankedPolicy(PolicyConfig(patch=(16, 16)))


def test_one_ranked_policy_routes_slices_of_any_size_in_patches_of_its_size():
    policy = RankedPolicy(CFG).set_thresholds([0.5, 0.5])
    for h, w in ((48, 64), (40, 56), (16, 16)):
        ent = torch.zeros((1, h, w))
        ent[:, :16, :16] = math.log(3)  # the top-left patch is as unsure as it gets
        probs = policy_probabilities(policy, F0State(torch.zeros((1, h, w), dtype=torch.uint8), ent, 3, 2))
        rows, cols = -(-h // 16), -(-w // 16)
        assert probs.shape == (1, rows * cols, 3)
        assert probs.argmax(-1)[0].tolist() == [2] + [0] * (rows * cols - 1)


def test_ranked_policies_round_trip_through_checkpoints_and_the_bank(tmp_path):
    policy = RankedPolicy(CFG).set_thresholds([0.25, 0.4])
    save_policy(tmp_path / "p.pt", policy, {"lambda": 0.2})
    back = load_policy(tmp_path / "p.pt")
    assert isinstance(back.policy, RankedPolicy) and back.config == CFG
    assert back.policy.thresholds.tolist() == pytest.approx([0.25, 0.4])
    x = policy_state(torch.zeros((1, 32, 32), dtype=torch.long), torch.rand((1, 32, 32)), 3)
    torch.testing.assert_close(back.policy(x), policy(x))
    bank = PolicyBank({0.1: from_share(CFG, np.linspace(0, 1, 50), 0.1), 0.3: from_share(CFG, np.linspace(0, 1, 50), 0.3)})
    assert bank.knob == "share"
    save_bank(tmp_path, bank)
    again = load_bank(tmp_path)
    assert again.knob == "share" and again.lambdas == [0.1, 0.3]
    assert again.policies[0.3].thresholds[-1] < again.policies[0.1].thresholds[-1]
    assert PolicyBank({0.1: PolicyNet(PolicyConfig(patch=(16, 16)))}).knob == "lambda"


def test_a_tail_score_ranks_a_patch_with_a_very_uncertain_spot_above_one_moderately_unsure_everywhere():
    """Patch 0: 10% of its pixels at the largest entropy, the rest certain (mean 0.1); patch 1: 0.3 everywhere.
    The mean entropy ranks patch 1 first, the share of pixels above a level of 0.5 ranks patch 0 first."""
    ent = np.zeros((16, 32), np.float32)
    ent[:, 16:] = 0.3 * math.log(3)
    ent[:4, :6] = math.log(3)  # 24 of 256 pixels
    state = F0State(torch.zeros((1, 16, 32), dtype=torch.uint8), torch.from_numpy(ent[None]), 3, 2).policy_input()
    mean = patch_score(state, CFG)[0].numpy()
    tail = patch_score(state, PolicyConfig(n_classes=3, n_models=3, patch=(16, 16), kind="ranked", level=0.5))[0].numpy()
    assert mean[1] > mean[0] and mean == pytest.approx([24 / 256, 0.3], abs=1e-4)
    assert tail.tolist() == pytest.approx([24 / 256, 0.0])
    with pytest.raises(ValueError, match="level"):
        PolicyConfig(kind="ranked", level=1.5)


def test_tail_level_leaves_that_share_of_the_pixels_above_it():
    values = np.linspace(0, 1, 1_000_001, dtype=np.float32)
    state = torch.zeros((1, 4, 1, values.size))
    state[0, -1, 0] = torch.from_numpy(values)
    sample = entropy_sample(state)  # a strided quarter of the million values
    assert sample.size <= 2**18 and sample.min() < 1e-5 and sample.max() > 0.999
    for tail in (0.02, 0.1, 0.3):
        assert abs(np.mean(values > tail_level(sample, tail)) - tail) < 1e-3
    with pytest.raises(ValueError, match="tail"):
        tail_level(sample, 0.0)


def test_a_tail_ranked_policy_keeps_its_level_through_a_checkpoint(tmp_path):
    cfg = PolicyConfig(n_classes=3, n_models=3, patch=(16, 16), kind="ranked", level=0.42)
    policy = RankedPolicy(cfg).set_thresholds([0.1, 0.1])
    save_policy(tmp_path / "p.pt", policy)
    back = load_policy(tmp_path / "p.pt")
    assert back.config.level == pytest.approx(0.42)
    save_policy(tmp_path / "m.pt", RankedPolicy(CFG))
    assert load_policy(tmp_path / "m.pt").config.level is None
    written = {name: torch.load(tmp_path / name, weights_only=True)["version"] for name in ("p.pt", "m.pt")}
    assert written == {"p.pt": 5, "m.pt": 4}  # a reader of version 4 refuses the tail policy, reads the other
