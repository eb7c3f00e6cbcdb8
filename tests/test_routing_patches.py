"""Routing at a fixed patch size in pixels: one policy routes slices of any size at the same granularity."""

import numpy as np
import pytest
import torch

from learners.errors import ConfigError, InputError
from learners.grid import Grid, Patching
from learners.routing.policy import PolicyConfig, PolicyNet, load_policy, save_policy
from learners.routing.router import F0State, RoutingCost, check_policy, make_grid, policy_probabilities, route
from learners.routing.training import RLConfig, RoutingData, train_policy
from learners.unet import UNet, UNetConfig


def tiny_models(seed=0):
    torch.manual_seed(seed)
    return [UNet(UNetConfig(n_classes=3, base=b, depth=2, dropout=d)) for b, d in ((4, 0.2), (4, 0.0), (8, 0.0))]


def test_patching_grid_edges_are_partial_cells_and_count_mode_is_the_paper_grid():
    size = Patching(size=(16, 16))
    assert (size.grid(40, 24).rows, size.grid(40, 24).cols) == (3, 2)
    assert size.grid(40, 24).box(5) == (32, 16, 8, 8)  # clipped last row and column
    assert len(size.grid(10, 10)) == 1  # smaller than a patch: one padded patch
    assert Patching.of((4, 4)).grid(100, 60) == Grid.divide(100, 60, 4, 4)
    assert Patching.of(32) == Patching(size=(32, 32))
    with pytest.raises(ConfigError):
        Patching(size=(8, 8), count=(4, 4))
    with pytest.raises(InputError):
        make_grid((3, 3), (4, 4))


def test_one_policy_pools_to_as_many_patches_as_each_slice_has():
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, patch=(16, 16), width=4))
    for (h, w), n_patches in {(32, 32): 4, (40, 24): 6, (10, 10): 1, (64, 48): 12}.items():
        assert policy(torch.rand(2, 4, h, w)).shape == (2, n_patches, 3)
    with pytest.raises(InputError):  # a policy built for 16 px patches is not a 4x4-grid one
        check_policy(tiny_models(), policy, (4, 4))


def test_patch_policy_checkpoint_round_trip_keeps_the_patch_size(tmp_path):
    policy = PolicyNet(PolicyConfig(patch=(24, 16), width=4))
    torch.nn.init.normal_(policy.head.weight)
    loaded = load_policy(save_policy(tmp_path / "p.pt", policy))
    assert loaded.config.patch == (24, 16) and loaded.config.patching == Patching(size=(24, 16))
    x = torch.rand(1, 4, 50, 70)
    assert torch.equal(loaded.policy(x), policy(x))
    grid_policy = load_policy(save_policy(tmp_path / "g.pt", PolicyNet(PolicyConfig(width=4))))
    assert grid_policy.config.patching == Patching(count=(4, 4))


def hard_state(n, rows, cols, patch, seed):
    """f0 states whose entropy is high on a random set of patches (the ones where f2 pays)."""
    g = torch.Generator().manual_seed(seed)
    hard = torch.rand((n, rows, cols), generator=g) < 0.4
    entropy = hard.float().repeat_interleave(patch, 1).repeat_interleave(patch, 2) * 0.9
    return F0State(torch.zeros(entropy.shape, dtype=torch.uint8), entropy, 3, 5), hard.reshape(n, -1)


def test_a_policy_trained_on_one_slice_size_routes_slices_of_other_sizes_patch_by_patch():
    patch = 16
    state, hard = hard_state(12, 2, 2, patch, 0)  # trained on 32x32 slices
    ious = np.full((12, 4, 3), 0.8)
    ious[..., 2] = np.where(hard.numpy(), 1.0, 0.8)
    data = RoutingData(state, torch.as_tensor(ious, dtype=torch.float32), torch.tensor([0.1, 0.3, 0.6]))
    policy = PolicyNet(PolicyConfig(width=8, patch=(patch, patch)))
    train_policy(policy, data, RLConfig(epochs=60, batch_size=4, lr=0.02, lam=0.2))
    big, big_hard = hard_state(3, 5, 3, patch, 1)  # 80x48 slices, 15 patches each
    chosen = policy_probabilities(policy, big).argmax(-1)
    assert chosen.shape == (3, 15)
    assert (chosen == torch.where(big_hard, 2, 0)).float().mean() > 0.9


def test_route_uses_the_same_patch_cost_whatever_the_slice_size():
    models = tiny_models()
    policy = PolicyNet(PolicyConfig(width=4, patch=(16, 16)))
    torch.manual_seed(0)
    torch.nn.init.normal_(policy.head.weight, std=3.0)
    rng = np.random.default_rng(0)
    small, large = rng.random((2, 32, 32), np.float32), rng.random((1, 48, 40), np.float32)
    res_small, res_large = route(models, policy, small, samples=2), route(models, policy, large, samples=2)
    assert res_small.routing.shape == (2, 2, 2) and res_large.routing.shape == (1, 3, 3)
    assert res_large.segmentation.shape == (1, 48, 40)
    assert RoutingCost.of(models, 32, 32, policy.config.patching).patch == \
        RoutingCost.of(models, 48, 40, policy.config.patching).patch
    assert RoutingCost.of(models, 32, 32, (2, 2)).patch != RoutingCost.of(models, 64, 64, (2, 2)).patch
