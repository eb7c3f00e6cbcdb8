import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from learners.errors import InputError
from learners.routing.policy import PolicyConfig, PolicyNet, load_policy, save_policy
from learners.routing.router import (F0State, RoutingCost, build_patch_table, model_costs, policy_probabilities, route,
                             table_summary)
from learners.routing.training import (FinetuneConfig, RLConfig, RoutingData, _leave_one_out, finetune,
                                      expected_step, greedy_outcome, random_flip,
                                      reinforce_step, train_policy,
                                      tvd_finetune_config)
from learners.unet import UNet, UNetConfig


class Recorder(nn.Module):
    """A model that remembers how many images/patches (and of what size) it was run on."""

    def __init__(self, inner: UNet) -> None:
        super().__init__()
        self.inner, self.config, self.seen = inner, inner.config, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return self.inner(x)

    def count(self) -> int:
        return sum(s[0] for s in self.seen)


def tiny_models(dropout=(0.2, 0.0, 0.0), seed=0, bases=(4, 4, 8)):
    torch.manual_seed(seed)
    return [UNet(UNetConfig(n_classes=3, base=b, depth=2, dropout=d)) for b, d in zip(bases, dropout)]


def mixed_policy(seed=0) -> PolicyNet:
    """A policy with random head weights, so its argmax routing differs between patches."""
    torch.manual_seed(seed)
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, grid=(4, 4), width=8))
    nn.init.normal_(policy.head.weight, std=3.0)
    return policy


class PatternPolicy(PolicyNet):
    """A real policy network whose argmax is forced to model p % 3 on patch p (a mixed routing)."""

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        logits = super().forward(state)
        pattern = torch.nn.functional.one_hot(torch.arange(logits.shape[1]) % 3, 3) * 10.0
        return logits + pattern


def synthetic_data(ious: np.ndarray, seed=0, size=32) -> RoutingData:
    """Policy training data with a random f0 state and a given per-patch IoU table (N, P, K)."""
    g = torch.Generator().manual_seed(seed)
    n = ious.shape[0]
    state = F0State(torch.randint(0, 3, (n, size, size), generator=g, dtype=torch.uint8),
                    torch.rand((n, size, size), generator=g), 3, 5)
    return RoutingData(state, torch.as_tensor(ious, dtype=torch.float32), torch.tensor([0.1, 0.3, 0.6]))


def base_ious(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat(rng.uniform(0.4, 0.6, (n, 16, 1)), 3, axis=2)


# ----------------------------------------------------------------------------- REINFORCE


@pytest.mark.parametrize("credit", ["patch", "image"])
def test_policy_gradient_step_raises_probability_of_rewarded_action(credit):
    ious = base_ious()
    ious[..., 2] += 0.3  # f2 is clearly better everywhere
    data = synthetic_data(ious)
    policy = PolicyNet(PolicyConfig(width=8))
    before = policy_probabilities(policy, data.state)[..., 2].mean()
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    reinforce_step(policy, opt, data.state.policy_input(), data.ious, data.costs, lam=0.0, alpha=0.9,
                   credit=credit, generator=gen)
    after = policy_probabilities(policy, data.state)[..., 2].mean()
    assert after > before + 0.01


def test_lambda_one_converges_to_f0_everywhere():
    ious = base_ious()
    ious[..., 2] += 0.3
    data = synthetic_data(ious)
    policy = PolicyNet(PolicyConfig(width=8))
    history = train_policy(policy, data, RLConfig(epochs=40, batch_size=4, lr=0.02, lam=1.0))
    assert history[-1].share.tolist() == [1.0, 0.0, 0.0]
    assert policy_probabilities(policy, data.state)[..., 0].min() > 0.9
    assert history[-1].greedy_reward == pytest.approx(-16 * 0.1, abs=1e-5)


def test_lambda_zero_routes_upward_to_a_clearly_better_model():
    ious = base_ious()
    ious[..., 1] += 0.1
    ious[..., 2] += 0.3
    data = synthetic_data(ious)
    policy = PolicyNet(PolicyConfig(width=8))
    history = train_policy(policy, data, RLConfig(epochs=40, batch_size=4, lr=0.02, lam=0.0))
    assert history[-1].share.tolist() == [0.0, 0.0, 1.0]
    assert history[-1].greedy_reward == pytest.approx(16 * 0.3, abs=1e-5)
    assert history[0].alpha == pytest.approx(0.7) and history[-1].alpha == pytest.approx(0.95)


@pytest.mark.parametrize("options", [dict(gradient="expected"), dict(gradient="reinforce"),
                                     dict(gradient="expected", flips=True),
                                     dict(gradient="reinforce", rollouts=8, flips=True)])
def test_policy_learns_to_route_only_the_uncertain_patches(options):
    """f2 helps only where f0's entropy is high: a cost-aware policy must read its input."""
    n, size = 16, 32
    g = torch.Generator().manual_seed(1)
    hard = torch.rand((n, 4, 4), generator=g) < 0.4
    entropy = hard.float().repeat_interleave(8, 1).repeat_interleave(8, 2) * 0.9
    state = F0State(torch.zeros((n, size, size), dtype=torch.uint8), entropy, 3, 5)
    ious = np.full((n, 16, 3), 0.8)
    ious[..., 2] = np.where(hard.reshape(n, 16).numpy(), 1.0, 0.8)
    data = RoutingData(state, torch.as_tensor(ious, dtype=torch.float32), torch.tensor([0.1, 0.3, 0.6]))
    policy = PolicyNet(PolicyConfig(width=8))
    lam = 0.2  # gain 0.8 * 0.2 = 0.16 beats the extra cost 0.2 * 0.5 = 0.1 only on hard patches
    train_policy(policy, data, RLConfig(epochs=60, batch_size=4, lr=0.02, lam=lam, **options))
    chosen = policy_probabilities(policy, data.state).argmax(-1)
    assert (chosen == torch.where(hard.reshape(n, 16), 2, 0)).float().mean() > 0.95


def test_expected_gradient_routes_up_where_the_medium_model_helps_although_it_hurts_on_average():
    """The SOC situation: f1 gains on some patches and loses more on the others, f2 is dear.
    The best routing is per patch; the expected-reward gradient must find it."""
    n, size = 16, 32
    g = torch.Generator().manual_seed(4)
    helps = torch.rand((n, 4, 4), generator=g) < 0.4
    entropy = helps.float().repeat_interleave(8, 1).repeat_interleave(8, 2) * 0.6 + 0.1
    state = F0State(torch.zeros((n, size, size), dtype=torch.uint8), entropy, 3, 5)
    ious = np.full((n, 16, 3), 0.8)
    ious[..., 1] = np.where(helps.reshape(n, 16).numpy(), 0.9, 0.68)  # mean gain of f1 below zero
    ious[..., 2] = ious[..., 1] + 0.01
    data = RoutingData(state, torch.as_tensor(ious, dtype=torch.float32), torch.tensor([0.001, 0.06, 0.94]))
    assert (data.ious[..., 1] - data.ious[..., 0]).mean() < 0
    policy = PolicyNet(PolicyConfig(width=8))
    train_policy(policy, data, RLConfig(epochs=60, batch_size=4, lr=0.01, lam=0.1, gradient="expected"))
    chosen = policy_probabilities(policy, data.state).argmax(-1)
    assert (chosen == torch.where(helps.reshape(n, 16), 1, 0)).float().mean() > 0.95


def test_expected_step_follows_the_exact_gradient_of_the_expected_reward():
    ious = base_ious(n=2)
    ious[..., 1] += 0.2
    data = synthetic_data(ious)
    policy = mixed_policy()
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    stats = expected_step(policy, opt, data.state.policy_input(), data.ious, data.costs, lam=0.3)
    probs = policy_probabilities(policy, data.state).double()
    table = 0.7 * (data.ious.double() - data.ious[..., :1].double()) - 0.3 * data.costs.double()
    assert stats.mean_reward == pytest.approx(float((probs * table).sum((-1, -2)).mean()), rel=1e-5)
    assert stats.share.sum() == pytest.approx(1.0)
    assert policy.head.bias.grad[1] < 0  # minimising -E[R]: the better f1 gets a negative loss gradient


def test_leave_one_out_baselines_by_hand():
    r = torch.tensor([[1.0, 4.0], [3.0, 0.0]])  # (rollouts, patches)
    assert _leave_one_out(r, 0).tolist() == [[3.0, 0.0], [1.0, 4.0]]  # the other rollout of the same patch
    assert _leave_one_out(r).flatten().tolist() == pytest.approx([7 / 3, 4 / 3, 5 / 3, 8 / 3])  # mean of the other three
    assert _leave_one_out(torch.tensor([[2.0, 5.0]]), 0).tolist() == [[0.0, 0.0]]


def test_rollouts_give_each_patch_its_own_baseline():
    """A patch where every model scores the same has nothing to teach. With rollouts its
    baseline is its own mean reward, so it adds no gradient; with one rollout and the batch
    mean as baseline, the rewarded patches beside it push its logits at random."""
    ious = np.full((2, 16, 3), 0.5)
    ious[:, 8:, 2] = 1.0  # f2 gains 0.5 on the lower half of the grid; the upper half is flat
    data = synthetic_data(ious)
    flat_grad = {}
    for rollouts in (1, 16):
        policy = PolicyNet(PolicyConfig(width=8))
        logits = {}

        def keep(module, inputs, out):
            out.retain_grad()
            logits["out"] = out

        policy.head.register_forward_hook(keep)
        opt = torch.optim.SGD(policy.parameters(), lr=0.0)
        reinforce_step(policy, opt, data.state.policy_input(), data.ious, torch.zeros(3), lam=0.0, alpha=1.0,
                       generator=torch.Generator().manual_seed(3), rollouts=rollouts)
        grad = logits["out"].grad.flatten(2)  # (N, K, P)
        flat_grad[rollouts] = grad[..., :8].abs().max().item()
        assert grad[..., 8:].abs().max() > 1e-3  # the rewarded patches do teach
    assert flat_grad[16] < 1e-7
    assert flat_grad[1] > 1e-3


def test_random_flip_mirrors_the_patch_table_with_the_image():
    """A patch's reward must follow its pixels: after any flip, the marked cells are still the rewarded ones."""
    n, size = 2, 32
    g = torch.Generator().manual_seed(2)
    marked = torch.rand((n, 4, 4), generator=g) < 0.4
    entropy = marked.float().repeat_interleave(8, 1).repeat_interleave(8, 2)
    state = F0State(torch.zeros((n, size, size), dtype=torch.uint8), entropy, 3, 5)
    ious = torch.zeros((n, 16, 3))
    ious[..., 2] = marked.reshape(n, 16).float()
    seen = set()
    for seed in range(12):
        states, table = random_flip(state.policy_input(), ious, (4, 4), torch.Generator().manual_seed(seed))
        cell_entropy = states[:, -1].reshape(n, 4, 8, 4, 8).mean((2, 4)).reshape(n, 16)
        assert torch.equal(cell_entropy > 0.5, table[..., 2] > 0.5)
        seen.add(torch.equal(states, state.policy_input()))
    assert seen == {True, False}  # some draws flip, some do not


def test_rl_config_validates():
    with pytest.raises(ValueError):
        RLConfig(lam=1.5)
    with pytest.raises(ValueError):
        RLConfig(credit="pixel")
    with pytest.raises(ValueError):
        RLConfig(rollouts=0)
    with pytest.raises(ValueError):
        FinetuneConfig(tvd_threshold=0.0)


# ----------------------------------------------------------------------------- routed inference


def test_routed_inference_runs_only_the_selected_models_and_counts_their_flops():
    models = [Recorder(m) for m in tiny_models()]
    policy = PatternPolicy(PolicyConfig(width=8))
    images = np.random.default_rng(0).random((5, 30, 34)).astype(np.float32)  # not a multiple of 4
    cost = RoutingCost.of(models, 30, 34, (4, 4), 3, policy)  # warms the FLOP cache
    for m in models:
        m.seen.clear()
    with FlopCounterMode(display=False) as counter:
        result = route(models, policy, images, samples=3, chunk=2)
    assert result.segmentation.shape == (5, 30, 34) and result.routing.shape == (5, 4, 4)
    assert result.entropy.shape == (5, 30, 34) and result.probabilities.shape == (5, 4, 4, 3)
    counts = np.bincount(result.routing.ravel(), minlength=3)
    assert (result.routing.reshape(5, 16) == np.arange(16) % 3).all()
    assert models[0].count() == 5 * 3  # f0: 3 MC passes per slice, whole slices
    assert all(s[-2:] == (30, 34) for s in models[0].seen)
    for k in (1, 2):  # the larger models saw exactly their patches, one batch per chunk at most
        assert models[k].count() == counts[k]
        assert all(s[-2:] == (8, 9) for s in models[k].seen)
        assert len(models[k].seen) <= 3
    assert result.flops == {"f0": 5 * 3 * cost.f0_image, "policy": 5 * cost.policy_image,
                            "f1": counts[1] * cost.patch[1], "f2": counts[2] * cost.patch[2]}
    assert result.total_flops == counter.get_total_flops()
    share = result.patch_share()
    assert sum(share.values()) == pytest.approx(1.0) and share["f1"] == counts[1] / 80


def test_routed_segmentation_matches_the_patch_table():
    models = tiny_models(dropout=(0.0, 0.0, 0.0))  # deterministic: routing and table see the same outputs
    policy = PatternPolicy(PolicyConfig(width=8))
    rng = np.random.default_rng(1)
    images = rng.random((3, 32, 36)).astype(np.float32)
    labels = rng.integers(0, 3, (3, 32, 36))
    result = route(models, policy, images, samples=2)
    table, _ = build_patch_table(models, images, labels, (4, 4), samples=2)
    actions = result.routing.reshape(3, 16)
    assert result.summary(labels, 3)["iou"] == pytest.approx(table.miou(actions))
    cost = RoutingCost.of(models, 32, 36, (4, 4), 2, policy)
    assert result.flops == cost.for_table(actions, f0_always=True, policy=True)
    summary = result.summary(labels, 3)
    assert set(summary) == {"iou", "gflops_per_image", "iou_per_gflop", "patch_share"}
    from_table = table_summary(table, actions, cost.for_table(actions, f0_always=True, policy=True))
    assert from_table.pop("patch_share") == summary.pop("patch_share")
    assert from_table == pytest.approx(summary)
    assert summary["gflops_per_image"] == pytest.approx(result.total_flops / 3 / 1e9)


def test_route_takes_a_single_slice_and_a_saved_policy(tmp_path):
    models = tiny_models()
    policy = mixed_policy(2)
    image = np.random.default_rng(2).random((24, 28)).astype(np.float32)
    loaded = load_policy(save_policy(tmp_path / "policy.pt", policy)).policy
    a, b = route(models, policy, image, samples=2), route(models, loaded, image, samples=2)
    assert a.segmentation.shape == (1, 24, 28)
    assert (a.routing == b.routing).all() and (a.segmentation == b.segmentation).all()


def test_untrained_policy_keeps_everything_on_f0():
    models = tiny_models()
    result = route(models, PolicyNet(PolicyConfig(width=4)), np.zeros((2, 16, 16), np.float32), samples=2)
    assert result.patch_share() == {"f0": 1.0, "f1": 0.0, "f2": 0.0}
    assert result.flops["f1"] == result.flops["f2"] == 0


def test_route_rejects_mismatched_inputs():
    models = tiny_models()
    with pytest.raises(InputError):
        route(models[:2], mixed_policy(), np.zeros((16, 16), np.float32))
    with pytest.raises(InputError):
        route(models, mixed_policy(), np.zeros((3, 16), np.float32))
    with pytest.raises(InputError):
        route(models, PolicyNet(PolicyConfig(grid=(8, 8))), np.zeros((1, 6, 6), np.float32))
    with pytest.raises(InputError):
        route(models, PolicyNet(PolicyConfig(n_classes=2)), np.zeros((1, 16, 16), np.float32))


# ----------------------------------------------------------------------------- fine-tuning


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def test_finetuning_trains_each_model_only_on_its_routed_patches():
    models = tiny_models()
    rng = np.random.default_rng(3)
    images = rng.random((4, 32, 32)).astype(np.float32)
    labels = (images > 0.5).astype(np.int64)
    policy = PolicyNet(PolicyConfig(width=4))
    with torch.no_grad():
        policy.head.bias.copy_(torch.tensor([0.0, -30.0, 0.0]))  # never f1
    before = [_params(m) for m in models]
    cfg = FinetuneConfig(epochs=2, batch_size=2, patch_batch_size=8, lr=1e-3, model_lr=1e-2, lam=0.5,
                         alpha=(1.0, 1.0))
    result = finetune(models, policy, images, labels, cfg, samples=2)
    assert result.patches_trained["f1"] == 0 and result.patches_trained["f2"] > 0
    assert torch.equal(_params(models[0]), before[0])  # f0 stays fixed
    assert torch.equal(_params(models[1]), before[1])
    assert not torch.equal(_params(models[2]), before[2])
    assert len(result.history) == 2 and not result.reached_threshold


def test_tvd_mode_raises_lambda_until_the_policy_drifts_to_the_threshold():
    ious = base_ious(seed=4)
    ious[..., 2] += 0.2
    data = synthetic_data(ious, seed=4)
    policy = PolicyNet(PolicyConfig(width=8))
    train_policy(policy, data, RLConfig(epochs=30, batch_size=4, lr=0.02, lam=0.0))
    assert greedy_outcome(policy, data, 0.0)[1][2] == 1.0
    start = policy_probabilities(policy, data.state)
    cfg = tvd_finetune_config(0.1, epochs=50, batch_size=4, lr=0.02, train_models=False)
    result = finetune(tiny_models(), policy, np.zeros((8, 32, 32), np.float32), np.zeros((8, 32, 32)), cfg,
                      data=data)
    assert result.reached_threshold
    assert len(result.history) < 50
    assert result.tvd >= 0.1
    from learners.routing.reward import total_variation
    assert total_variation(policy_probabilities(policy, data.state), start) == pytest.approx(result.tvd)
    lams = [e.lam for e in result.history]
    assert lams[0] == 0.0 and all(b > a for a, b in zip(lams, lams[1:]))


def test_prepared_routing_data_uses_eq3_costs():
    models = tiny_models()
    costs = model_costs(models)
    assert costs.sum() == pytest.approx(1.0) and costs[2] > costs[1] == pytest.approx(costs[0])


def test_single_model_baselines_through_the_same_executor():
    from learners.inference import predict_classes
    from learners.routing.router import execute_routing
    models = tiny_models()
    images = np.random.default_rng(5).random((2, 30, 34)).astype(np.float32)
    cost = RoutingCost.of(models, 30, 34, (4, 4), samples=0)
    f0_alone = execute_routing(models, images, np.zeros((2, 16), int), samples=0)  # one eval pass
    assert (f0_alone.segmentation == predict_classes(models[0], images)).all()
    assert f0_alone.flops == {"f0": 2 * cost.f0_image, "policy": 0, "f1": 0, "f2": 0}
    f2_alone = execute_routing(models, images, np.full((2, 16), 2))
    assert (f2_alone.segmentation == predict_classes(models[2], images, grid=(4, 4))).all()
    assert f2_alone.flops == {"f0": 0, "policy": 0, "f1": 0, "f2": 32 * cost.patch[2]}
    assert f2_alone.patch_share() == {"f0": 0.0, "f1": 0.0, "f2": 1.0}
