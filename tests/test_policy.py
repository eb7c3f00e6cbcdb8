import math

import numpy as np
import pytest
import torch

from learners.checkpoint import save_checkpoint
from learners.errors import CheckpointError
from learners.flops import cost_shares
from learners.grid import Grid
from learners.metrics import confusion_matrix, mean_iou
from learners.routing.policy import (ALPHA_FINETUNE, ALPHA_RL, PolicyConfig, PolicyNet, linear_schedule, load_policy,
                             mix_uniform, policy_state, save_policy)
from learners.routing.reward import (PatchTable, best_actions, best_at_share, image_rewards, patch_confusions, patch_ious, rewards,
                             total_variation)
from learners.unet import UNet, UNetConfig, count_parameters


def test_policy_is_small_and_outputs_one_distribution_per_patch():
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, grid=(4, 4)))
    assert 10_000 < count_parameters(policy) < 20_000  # the paper's has 14,736
    out = policy(torch.rand(2, 4, 30, 34))  # not a multiple of the grid
    assert out.shape == (2, 16, 3)
    assert torch.allclose(out.softmax(-1), torch.full((2, 16, 3), 1 / 3))  # untrained = uniform
    other = PolicyNet(PolicyConfig(n_classes=2, n_models=4, grid=(2, 3)))
    assert other(torch.rand(1, 3, 17, 40)).shape == (1, 6, 4)


def test_policy_state_is_one_hot_plus_scaled_entropy():
    pred = torch.tensor([[[0, 2], [1, 1]]], dtype=torch.uint8)
    ent = torch.tensor([[[0.0, math.log(3)], [math.log(3) / 2, 5.0]]])
    s = policy_state(pred, ent, 3)
    assert s.shape == (1, 4, 2, 2)
    assert s[0, :3, 0, 1].tolist() == [0, 0, 1]
    assert s[0, 3].flatten().tolist() == pytest.approx([0.0, 1.0, 0.5, 1.0])  # clamped at log C


def test_mixing_and_schedules():
    probs = torch.tensor([[0.8, 0.2, 0.0]])
    assert torch.allclose(mix_uniform(probs, 1.0), probs)
    assert torch.allclose(mix_uniform(probs, 0.0), torch.full((1, 3), 1 / 3))
    mixed = mix_uniform(probs, 0.7)
    assert mixed.sum().item() == pytest.approx(1.0)
    assert mixed[0, 2].item() == pytest.approx(0.1)
    assert [linear_schedule(*ALPHA_RL, e, 6) for e in (0, 5)] == pytest.approx([0.7, 0.95])
    assert linear_schedule(*ALPHA_FINETUNE, 2, 5) == pytest.approx(0.975)
    with pytest.raises(ValueError):
        mix_uniform(probs, 1.5)


def test_policy_checkpoint_round_trip_and_refusals(tmp_path):
    policy = PolicyNet(PolicyConfig(n_classes=2, n_models=3, grid=(2, 2), width=4))
    torch.nn.init.normal_(policy.head.weight)
    path = save_policy(tmp_path / "policy.pt", policy, {"lam": 0.5})
    loaded = load_policy(path)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(loaded.policy(x), policy(x))
    assert loaded.config == policy.config and loaded.meta == {"lam": 0.5}
    save_checkpoint(tmp_path / "unet.pt", UNet(UNetConfig(base=4, depth=1)))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    for name in ("unet.pt", "bad.pt", "missing.pt"):
        with pytest.raises(CheckpointError):
            load_policy(tmp_path / name)


# ----------------------------------------------------------------------------- reward on a toy 2x2 grid

TARGET = np.array([[[0, 0, 1, 1],
                    [0, 0, 1, 1],
                    [1, 1, 0, 0],
                    [1, 1, 0, 1]]])
F0_PRED = np.array([[[0, 0, 1, 0],
                     [0, 1, 1, 1],
                     [1, 1, 0, 0],
                     [1, 1, 0, 0]]])
F1_PRED = TARGET.copy()
GRID = Grid.divide(4, 4, 2, 2)


def test_patch_ious_by_hand():
    # f0: patch 0 has truth {0,0,0,0}, pred {0,0,0,1}: IoU class0 = 3/4, class1 = 0/1 -> mean 0.375
    #     patch 1 truth all 1, pred {1,0,1,1}: class1 3/4, class0 0/1 -> 0.375; patch 2 perfect (1.0)
    #     patch 3 truth {0,0,0,1}, pred all 0: class0 3/4, class1 0/1 -> 0.375
    assert patch_ious(F0_PRED, TARGET, GRID, 2)[0] == pytest.approx([0.375, 0.375, 1.0, 0.375])
    assert patch_ious(F1_PRED, TARGET, GRID, 2)[0] == pytest.approx([1, 1, 1, 1])
    conf = patch_confusions(F0_PRED, TARGET, GRID, 2)
    for p, box in enumerate(GRID.boxes()):
        ys, xs = box.slices
        assert (conf[0, p] == confusion_matrix(F0_PRED[0, ys, xs], TARGET[0, ys, xs], 2)).all()


def test_reward_and_cost_equal_hand_computed_values():
    costs = cost_shares([1, 3, 6])  # Eq. 3: 0.1, 0.3, 0.6
    assert costs == pytest.approx([0.1, 0.3, 0.6])
    f2_pred = F0_PRED.copy()
    f2_pred[0, 0, 3] = 1  # fixes patch 1 only
    table = PatchTable(np.stack([patch_confusions(p, TARGET, GRID, 2) for p in (F0_PRED, F1_PRED, f2_pred)], axis=2))
    ious = torch.as_tensor(table.iou)
    actions = torch.tensor([[0, 2, 1, 1]])
    lam = 0.25
    # patch 0 f0: 0.75*0 - 0.25*0.1; patch 1 f2: 0.75*(1-0.375) - 0.25*0.6;
    # patch 2 f1: 0.75*(1-1) - 0.25*0.3; patch 3 f1: 0.75*(1-0.375) - 0.25*0.3
    expected = [-0.025, 0.75 * 0.625 - 0.15, -0.075, 0.75 * 0.625 - 0.075]
    assert rewards(actions, ious, costs, lam)[0].tolist() == pytest.approx(expected)
    assert image_rewards(actions, ious, costs, lam).item() == pytest.approx(sum(expected))
    assert image_rewards(torch.zeros_like(actions), ious, costs, 1.0).item() == pytest.approx(-0.4)
    # the oracle: f1 wherever it gains enough, f0 on the perfect patch
    assert best_actions(table.iou, costs, lam)[0].tolist() == [1, 1, 0, 1]
    assert best_actions(table.iou, costs, 1.0).eq(0).all()


def test_table_iou_equals_iou_of_the_stitched_segmentation():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (2, 9, 11))
    preds = [np.where(rng.random(target.shape) < q, target, rng.integers(0, 3, target.shape)) for q in (0.3, 0.6, 0.9)]
    grid = Grid.divide(9, 11, 2, 3)  # partial border cells
    table = PatchTable(np.stack([patch_confusions(p, target, grid, 3) for p in preds], axis=2))
    actions = rng.integers(0, 3, (2, len(grid)))
    stitched = np.zeros_like(target)
    for n in range(2):
        for p, box in enumerate(grid.boxes()):
            ys, xs = box.slices
            stitched[n, ys, xs] = preds[actions[n, p]][n, ys, xs]
    assert table.miou(actions) == pytest.approx(mean_iou(stitched, target, 3))


def test_total_variation_distance_on_known_distributions():
    assert total_variation([[1.0, 0, 0]], [[0, 1.0, 0]]) == pytest.approx(1.0)
    assert total_variation([[0.5, 0.5, 0]], [[0.25, 0.25, 0.5]]) == pytest.approx(0.5)
    p = np.array([[[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
    q = np.array([[[0.2, 0.3, 0.5], [0.9, 0.1, 0.0]]])
    assert total_variation(p, q) == pytest.approx(0.05)  # mean over patches of (0, 0.1)
    assert total_variation(torch.tensor(p), torch.tensor(p)) == 0.0
    with pytest.raises(ValueError):
        total_variation(p, q[..., :2])


def test_the_oracle_at_a_share_sends_up_the_patches_where_the_largest_model_gains_most():
    iou = np.zeros((2, 3, 3))
    iou[..., 0] = 0.5
    iou[..., 2] = [[0.9, 0.4, 0.6], [0.55, 0.8, 0.5]]  # gains +0.4, -0.1, +0.1 / +0.05, +0.3, 0
    assert best_at_share(iou, 2 / 6).tolist() == [[2, 0, 0], [0, 2, 0]]
    assert best_at_share(iou, 0.5).tolist() == [[2, 0, 2], [0, 2, 0]]
    assert best_at_share(iou, 1.0).tolist() == [[2, 0, 2], [2, 2, 0]]  # never where it does not gain
    assert best_at_share(iou, 0.0).sum() == 0 and best_at_share(iou, 0.5, model=1).sum() == 0
