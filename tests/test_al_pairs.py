"""The DQN-to-TAUDIS pairing of `paser bench al` results (issue 15's target), from stored per-seed curves."""

import numpy as np
import pytest

from napari_paser.bench.al import normalised_auc, vs_taudis

BUDGETS = [4, 8, 16, 32]


def _summary(curves, rare_iou):
    return {"budgets": BUDGETS, "miou_per_seed": [list(c) for c in curves],
            "class_iou_final_per_seed": [[0.9, 0.8, r] for r in rare_iou]}


def test_dqn_paired_seed_by_seed_with_taudis_over_common_seeds():
    rng = np.random.default_rng(0)
    taudis = np.sort(rng.uniform(0.4, 0.8, (10, len(BUDGETS))), axis=1)
    ahead = taudis + 0.02
    ahead[:, 0] = taudis[:, 0]  # same start (the seed model)
    behind = taudis[:6] - np.linspace(0.0, 0.05, len(BUDGETS))  # a shorter run: 6 seeds
    samplers = {"random": _summary(taudis - 0.1, [0.1] * 10), "taudis": _summary(taudis, [0.2] * 10),
                "dqn": _summary(ahead, [0.3] * 10), "dqn:shipped": _summary(behind, [0.1] * 6)}
    out = vs_taudis(samplers, rare=2)
    assert set(out) == {"dqn", "dqn:shipped"}  # neither random nor TAUDIS against itself
    expected = np.mean([normalised_auc(BUDGETS, a) - normalised_auc(BUDGETS, t) for a, t in zip(ahead, taudis)])
    assert out["dqn"]["auc"]["mean"] == pytest.approx(expected, abs=1e-4)
    assert out["dqn"]["auc"]["verdict"] == "better" and out["dqn"]["auc_wins"] == 10
    assert out["dqn"]["rare_class_iou_final"]["mean"] == pytest.approx(0.1)
    assert out["dqn"]["miou_at_budget"][0]["mean"] == 0.0
    assert out["dqn:shipped"]["seeds"] == 6 and out["dqn:shipped"]["auc"]["verdict"] == "worse"


def test_no_taudis_no_pairs():
    assert vs_taudis({"random": _summary(np.full((2, 4), 0.5), [0.0, 0.0])}, rare=2) == {}
