import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from learners.routing.cascade import (cascade_flops, cascade_stages, evaluate_cascade, idk_loss, match_iou, oracle_actions,
                              pareto_front, random_actions, run_cascade, run_oracle, run_random, search_thresholds,
                              threshold_ranges)
from learners.errors import InputError
from learners.routing.policy import PolicyConfig, PolicyNet
from learners.routing.reward import image_rewards
from learners.routing.router import RoutingCost, build_patch_table, model_costs, policy_probabilities
from test_router import Recorder, tiny_models


N, H, W = 3, 32, 36


@pytest.fixture(scope="module")
def setup():
    models = tiny_models(dropout=(0.0, 0.0, 0.0))  # MC passes agree: table and execution see the same entropies
    rng = np.random.default_rng(0)
    images = rng.random((N, H, W)).astype(np.float32)
    labels = (images > 0.5).astype(np.int64) + (images > 0.8)
    table, state = build_patch_table(models, images, labels, (4, 4), samples=2, mc_models=(1,), with_nll=True)
    cost = RoutingCost.of(models, H, W, (4, 4), samples=2)
    return models, images, labels, table, state, cost


def test_cascade_stages_and_flops_by_hand():
    entropy = np.array([[[0.9, 0.5, np.nan], [0.1, 0.9, np.nan], [0.9, 0.1, np.nan]]])
    stages = cascade_stages(entropy, [0.5, 0.4])
    assert stages.tolist() == [[2, 0, 1]]
    cost = RoutingCost(f0_image=100, policy_image=0, patch=(7, 10, 1000), samples=5)
    # f0: 5 passes on the image; f1: 5 MC passes on the 2 escalated patches; f2: 1 pass on 1 patch
    assert cascade_flops(stages, cost, stage_samples=5) == {"f0": 500, "policy": 0, "f1": 100, "f2": 1000}
    with pytest.raises(InputError):
        cascade_stages(entropy, [0.5])


def test_executed_cascade_counts_every_stage_it_ran(setup):
    models, images, labels, table, _, cost = setup
    recorded = [Recorder(m) for m in models]
    thresholds = tuple(float(np.nanmedian(table.entropy[..., k])) for k in range(2))
    for m in recorded:
        m.seen.clear()
    with FlopCounterMode(display=False) as counter:
        result = run_cascade(recorded, images, thresholds, samples=2)
    stages = result.routing.reshape(N, -1)
    reached1, reached2 = int((stages >= 1).sum()), int((stages == 2).sum())
    assert 0 < reached2 < reached1 < stages.size
    assert recorded[0].count() == N * 2
    assert recorded[1].count() == reached1 * 2  # MC passes on every patch f0 gave up on
    assert recorded[2].count() == reached2  # once, on the patches f1 gave up on
    assert result.flops == {"f0": N * 2 * cost.f0_image, "policy": 0,
                            "f1": reached1 * 2 * cost.patch[1], "f2": reached2 * cost.patch[2]}
    assert result.total_flops == counter.get_total_flops()
    # the table-based evaluation used by sweeps agrees with the execution
    assert (cascade_stages(table.entropy, thresholds) == stages).all()
    point = evaluate_cascade(table, thresholds, cost, stage_samples=2)
    assert point.iou == pytest.approx(result.summary(labels, 3)["iou"])
    assert point.gflops_per_image == pytest.approx(result.gflops_per_image)


def test_grid_search_minimises_the_idk_loss_within_one_std(setup):
    models, _, _, table, _, cost = setup
    costs = model_costs(models)
    search = search_thresholds(table, cost, costs, lam_idk=0.01, steps=3, stage_samples=2)
    assert len(search.points) == 9
    assert search.best.loss == min(p.loss for p in search.points)
    for (lo, hi), t in zip(threshold_ranges(table), search.best.thresholds):
        assert lo - 1e-9 <= t <= hi + 1e-9
    # a large cost weight makes staying on f0 the cheapest loss
    stages0 = np.zeros(table.iou.shape[:2], dtype=np.int64)
    assert idk_loss(table, stages0, costs, 100.0) < idk_loss(table, np.full_like(stages0, 2), costs, 100.0)


def test_iou_matched_variant_is_the_cheapest_setting_reaching_the_target(setup):
    _, _, _, table, _, cost = setup
    everything_up = evaluate_cascade(table, (-1.0, -1.0), cost, stage_samples=2)  # every patch through f2
    target = everything_up.iou - 0.01
    match = match_iou(table, cost, target, steps=6, stage_samples=2)
    assert match.matched and match.point.iou >= target - 1e-3
    assert match.point.gflops_per_image <= everything_up.gflops_per_image
    unreachable = match_iou(table, cost, 2.0, steps=4, stage_samples=2)
    assert not unreachable.matched
    front = pareto_front([match.point, unreachable.point])
    assert [p.gflops_per_image for p in front] == sorted(p.gflops_per_image for p in front)


def test_random_policy_draws_from_given_probabilities_and_f0_runs_only_where_drawn(setup):
    models, images, _, _, _, cost = setup
    a = random_actions(200, 16, 3, [0.2, 0.3, 0.5], seed=1)
    assert np.bincount(a.ravel(), minlength=3) / a.size == pytest.approx([0.2, 0.3, 0.5], abs=0.02)
    result = run_random(models, images, [0.0, 0.5, 0.5], samples=2, seed=3)
    assert result.flops["f0"] == 0 and result.patch_share()["f0"] == 0.0
    assert result.entropy is None
    uniform = run_random(models, images, samples=2)
    assert uniform.flops["f0"] == N * 2 * cost.f0_image  # some patch of every image drew f0
    with pytest.raises(InputError):
        random_actions(2, 16, 3, [0.5, 0.6, 0.1])


def test_oracle_reward_beats_every_other_router(setup):
    models, images, labels, table, state, cost = setup
    costs = model_costs(models)
    ious = torch.as_tensor(np.nan_to_num(table.iou))
    for lam in (0.0, 0.3, 0.7):
        best = image_rewards(torch.as_tensor(oracle_actions(table, costs, lam)), ious, costs, lam).sum()
        others = [random_actions(N, 16, 3, seed=s) for s in range(5)]
        others += [cascade_stages(table.entropy, t) for t in ((0.0, 0.0), (0.5, 0.5), (9.0, 9.0))]
        policy = PolicyNet(PolicyConfig(width=4))
        torch.nn.init.normal_(policy.head.weight)
        others.append(policy_probabilities(policy, state).argmax(-1).numpy())
        for a in others:
            assert best >= image_rewards(torch.as_tensor(a), ious, costs, lam).sum() - 1e-9
    executed = run_oracle(models, images, table, costs, 0.3, samples=2)
    assert (executed.routing.reshape(N, -1) == oracle_actions(table, costs, 0.3)).all()
    assert executed.summary(labels, 3)["iou"] == pytest.approx(table.miou(oracle_actions(table, costs, 0.3)))
