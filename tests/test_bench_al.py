import json

import numpy as np
import pytest

from napari_paser.bench.al_sim import SimConfig
from napari_paser.bench.al import (ALBenchConfig, bootstrap_ci, budget_to_reach, budget_to_stay, crossing, format_table,
                                   normalised_auc, run_bench, verdict)
from napari_paser.cli import main
from napari_paser.data.dataset import write_dataset
from napari_paser.errors import PaserInputError
from napari_paser.data.synth import synth_volume

SIM = SimConfig(region=32, train_steps=2, seed_steps=2, batch_size=2, samples=2, state_regions=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """8 slices of 64x64: splits pretrain 2, rl 2, finetune 1, val 1, test 2 -> a pool of 12 regions."""
    img, lab = synth_volume(8, 64, seed=0, correlation_length=4)
    root = tmp_path_factory.mktemp("al") / "data"
    write_dataset(root, np.round(img * 65535).astype(np.uint16), lab)
    return root


def test_normalised_auc_against_a_hand_computed_curve():
    # trapezoids: 10 * (0.5 + 0.7) / 2 = 6, 20 * (0.7 + 0.9) / 2 = 16; range 30
    assert normalised_auc([0, 10, 30], [0.5, 0.7, 0.9]) == pytest.approx(22 / 30)
    assert normalised_auc([8, 16], [0.6, 0.6]) == pytest.approx(0.6)  # a flat curve: its value
    with pytest.raises(PaserInputError):
        normalised_auc([8], [0.5])


def test_budget_to_95_on_a_hand_made_curve():
    budgets, miou = [8, 16, 32, 64], [0.5, 0.7, 0.8, 0.9]
    target = 0.95 * 0.85  # 0.8075: above 0.8 at 32, first reached at 64
    assert budget_to_reach(budgets, miou, target) == 64
    assert crossing(budgets, miou, target) == pytest.approx(32 + 0.0075 / 0.1 * 32)
    assert budget_to_reach(budgets, miou, 0.7) == 16 and crossing(budgets, miou, 0.7) == pytest.approx(16)
    assert budget_to_reach(budgets, miou, 0.95) is None and crossing(budgets, miou, 0.95) is None
    assert crossing(budgets, miou, 0.4) == 8
    dip = [0.5, 0.9, 0.7, 0.92, 0.93]  # touches 0.85 at the second budget, drops, comes back
    assert budget_to_reach([4, 8, 16, 32, 64], dip, 0.85) == 8 and budget_to_stay([4, 8, 16, 32, 64], dip, 0.85) == 32
    assert budget_to_stay([4, 8], [0.9, 0.95], 0.85) == 4 and budget_to_stay([4, 8], [0.9, 0.8], 0.85) is None


def test_bootstrap_interval_on_cases_with_known_answers():
    const = bootstrap_ci([0.02] * 10)
    assert const == {"mean": 0.02, "lo": 0.02, "hi": 0.02, "n": 10} and verdict(const) == "better"
    assert bootstrap_ci([0.5])["lo"] == bootstrap_ci([0.5])["hi"] == 0.5  # one seed: no spread to resample
    # 400 draws of N(1, 1): the mean's 95% interval is about 1 +- 1.96 / sqrt(400) = 1 +- 0.098
    x = np.random.default_rng(0).normal(1.0, 1.0, 400)
    ci = bootstrap_ci(x)
    assert ci["lo"] < x.mean() < ci["hi"] and ci["lo"] < 1.0 < ci["hi"]
    assert 0.16 < ci["hi"] - ci["lo"] < 0.24
    sym = bootstrap_ci([-1.0, 1.0] * 10)  # mean 0: a tie, symmetric interval
    assert verdict(sym) == "tie" and sym["lo"] == pytest.approx(-sym["hi"], abs=0.03)
    assert verdict(bootstrap_ci([-0.03, -0.01, -0.02])) == "worse"
    assert bootstrap_ci([None, float("nan")])["n"] == 0


def test_run_bench_writes_the_schema_and_is_deterministic(folder, tmp_path):
    def run(out):
        cfg = ALBenchConfig(folder, out, ("random", "entropy"), (4, 6, 8), seeds=2, sim=SIM, command="test", progress=False)
        return run_bench(cfg)

    res = run(tmp_path / "a.json")
    on_disk = json.loads((tmp_path / "a.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert {"dataset", "command", "full_supervision_miou", "samplers"} <= set(on_disk)
    assert (tmp_path / "a.png").stat().st_size > 0
    assert on_disk["pool"]["regions"] == 12 and 0 < on_disk["full_supervision_miou"] <= 1
    for name in ("random", "entropy"):
        s = on_disk["samplers"][name]
        assert s["budgets"] == [4, 6, 8]
        assert len(s["miou_mean"]) == len(s["miou_std"]) == 3 and len(s["miou_per_seed"]) == 2
        assert s["auc"] == pytest.approx(normalised_auc(s["budgets"], s["miou_mean"]), abs=1e-4)
        assert s["budget_to_95"] in (None, 4, 6, 8)
        assert np.allclose(np.sum(s["labeled_class_fraction"], 1), 1, atol=1e-3)
        assert s["propose_seconds_per_step"] >= 0
    vs = on_disk["vs_random"]["entropy"]
    assert set(vs) >= {"auc", "miou_at_budget", "rare_class_iou_final", "auc_wins"} and len(vs["miou_at_budget"]) == 3
    assert vs["miou_at_budget"][0] == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 2, "verdict": "tie"}  # same start
    auc_d = [normalised_auc([4, 6, 8], e) - normalised_auc([4, 6, 8], r) for e, r in
             zip(on_disk["samplers"]["entropy"]["miou_per_seed"], on_disk["samplers"]["random"]["miou_per_seed"])]
    assert vs["auc"]["mean"] == pytest.approx(np.mean(auc_d), abs=2e-4) and vs["auc"]["lo"] <= vs["auc"]["hi"]
    s = on_disk["samplers"]["entropy"]
    assert len(s["class_iou_mean"]) == 3 and len(s["class_iou_mean"][0]) == 3
    assert on_disk["rare_class"] == int(np.argmin(on_disk["pool"]["class_fraction"]))
    assert isinstance(on_disk["loose_target"], bool)
    assert on_disk["loose_target"] == (on_disk["full_supervision_miou"] < max(
        x["miou_mean"][-1] for x in on_disk["samplers"].values()))
    table = format_table(res)
    assert "stay95" in table and "AUC - random" in table and len(table.splitlines()) >= 4
    # the same seed set and start for every sampler: equal mIoU at the first budget
    assert on_disk["samplers"]["random"]["miou_per_seed"][0][0] == on_disk["samplers"]["entropy"]["miou_per_seed"][0][0]
    again = run(tmp_path / "b.json")
    for name, s in res["samplers"].items():  # everything but the timings repeats exactly
        assert again["samplers"][name]["miou_per_seed"] == s["miou_per_seed"]
        assert again["samplers"][name]["labeled_class_fraction"] == s["labeled_class_fraction"]
    assert again["full_supervision_miou"] == res["full_supervision_miou"]


def test_cli_reports_user_errors_in_one_line(folder, tmp_path, capsys):
    base = ["bench", "al", "--data", str(folder), "--out", str(tmp_path / "r.json"), "--budgets", "4,6", "--quiet"]
    assert main(base + ["--samplers", "random,coreset"]) == 2
    assert "unknown sampler" in capsys.readouterr().err
    assert main(base + ["--samplers", "dqn", "--dqn", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert "none.pt" in err and len(err.strip().splitlines()) == 1
    assert main(["al", "train-dqn", "--data", str(folder), "--out", str(tmp_path / "a.pt"), "--steps", "10",
                 "--quiet"]) == 2
    assert "too few regions" in capsys.readouterr().err
    assert main(["al", "train-dqn", "--out", str(tmp_path / "a.pt"), "--quiet"]) == 2
    assert "--synthetic" in capsys.readouterr().err
