"""The policy bank behind the live lambda control: training, nearest lookup, files."""

import pytest
import torch

from learners.errors import CheckpointError, InputError
from learners.routing.policy import PolicyConfig, PolicyNet, save_policy
from learners.routing.bank import (PolicyBank, bank_file, check_lambdas, iter_bank_training, load_bank,
                                  save_bank)
from learners.routing.router import policy_probabilities
from learners.routing.training import RLConfig
from test_router import base_ious, synthetic_data


def _policy(seed=0) -> PolicyNet:
    torch.manual_seed(seed)
    return PolicyNet(PolicyConfig(width=8))


def _run(gen):
    epochs = []
    while True:
        try:
            epochs.append(next(gen))
        except StopIteration as stop:
            return stop.value, epochs


def test_bank_trains_one_policy_per_lambda_and_they_differ_as_the_cost_says():
    ious = base_ious()
    ious[..., 2] += 0.3  # f2 clearly better: worth it at lambda 0, not at lambda 1
    data = synthetic_data(ious)
    saved = []
    bank, epochs = _run(iter_bank_training(data, [1.0, 0.0, 0.0], _policy,
                                           RLConfig(epochs=40, batch_size=4, lr=0.02),
                                           on_trained=lambda lam, p: saved.append(lam)))
    assert bank.lambdas == [0.0, 1.0] and saved == [0.0, 1.0]  # sorted, duplicates dropped
    assert len(epochs) == 80 and {e.lam for e in epochs} == {0.0, 1.0}
    upward = policy_probabilities(bank.policies[0.0], data.state).argmax(-1)
    thrifty = policy_probabilities(bank.policies[1.0], data.state).argmax(-1)
    assert (upward == 2).all() and (thrifty == 0).all()


def test_a_cancelled_bank_keeps_only_the_policies_trained_to_the_end():
    data = synthetic_data(base_ious())
    calls = iter(range(1000))
    stop_after = 12  # the first policy (10 epochs) finishes, the second is cut short
    bank, _ = _run(iter_bank_training(data, [0.0, 0.5], _policy, RLConfig(epochs=10, batch_size=4, lr=0.02),
                                      should_stop=lambda: next(calls) >= stop_after))
    assert bank.lambdas == [0.0]


def test_nearest_lambda_and_ties():
    bank = PolicyBank({0.1: _policy(), 0.3: _policy(), 0.5: _policy()})
    assert bank.nearest(0.0)[0] == 0.1 and bank.nearest(0.34)[0] == 0.3 and bank.nearest(0.9)[0] == 0.5
    assert bank.nearest(0.2)[0] == 0.1  # a tie goes to the lower lambda
    with pytest.raises(InputError, match="empty"):
        PolicyBank().nearest(0.3)


def test_pick_prefers_the_asked_lambda_then_the_default_then_the_middle():
    members = {0.0: _policy(), 0.5: _policy(), 1.0: _policy()}
    bank, fallback = PolicyBank(members), (0.3, _policy(2))
    assert bank.pick(0.9, fallback)[0] == 1.0
    assert bank.pick(None, fallback) is fallback
    assert bank.pick(None) == (0.5, members[0.5]) and bank.default_lambda == 0.5
    assert PolicyBank({**members, 0.01: _policy()}).default_lambda == 0.5  # the upper middle of an even bank
    assert PolicyBank().pick(0.2, fallback) is fallback and PolicyBank().pick(0.2) is None


def test_check_lambdas_names_bad_values():
    assert check_lambdas([0.5, 0.05, 0.5]) == [0.05, 0.5]
    with pytest.raises(InputError, match=r"\[1.5\]"):
        check_lambdas([0.1, 1.5])
    with pytest.raises(InputError, match="at least one"):
        check_lambdas([])


def test_bank_files_round_trip_and_a_renamed_file_is_refused(tmp_path):
    torch.manual_seed(1)
    policies = {0.05: PolicyNet(PolicyConfig(width=4)), 0.5: PolicyNet(PolicyConfig(width=4))}
    for p in policies.values():
        torch.nn.init.normal_(p.head.weight)
    paths = save_bank(tmp_path, PolicyBank(policies), {"run": "x"})
    assert [p.name for p in paths] == [bank_file(0.05), bank_file(0.5)] == ["lambda-0.050.pt", "lambda-0.500.pt"]
    loaded = load_bank(tmp_path)
    assert loaded.lambdas == [0.05, 0.5]
    x = torch.rand(1, 4, 32, 32)
    for lam, p in policies.items():
        assert torch.allclose(loaded.policies[lam](x), p(x))
    assert len(load_bank(tmp_path / "elsewhere")) == 0
    save_policy(tmp_path / "policies" / "lambda-0.900.pt", policies[0.5], {"lambda": 0.2})
    with pytest.raises(CheckpointError, match="lambda 0.2"):
        load_bank(tmp_path)


def test_paser_policy_writes_the_bank_policy_pt_and_bank_json(tmp_path, capsys):
    import json

    from learners.checkpoint import save_checkpoint
    from learners.unet import UNet, UNetConfig
    from napari_paser.cli import main
    from napari_paser.data.synth import write_synthetic

    data = write_synthetic(tmp_path / "data", 10, 32, seed=0)
    run = tmp_path / "run"
    torch.manual_seed(0)
    for role, base in (("f0", 4), ("f1", 4), ("f2", 6)):
        save_checkpoint(run / f"{role}.pt", UNet(UNetConfig(n_classes=3, base=base, depth=2, dropout=0.2)))
    (run / "policies").mkdir(parents=True)
    (run / "policies" / "lambda-0.700.pt").write_bytes(b"stale bank of older models")
    rc = main(["policy", "--data", str(data), "--run", str(run), "--lambdas", "0,0.5,1", "--default", "0.4",
               "--epochs", "2", "--samples", "2", "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in (run / "policies").iterdir()) == [
        "bank.json", "lambda-0.000.pt", "lambda-0.500.pt", "lambda-1.000.pt"]
    summary = json.loads((run / "policies" / "bank.json").read_text())
    assert summary["default_lambda"] == 0.5 and summary["lambdas"] == [0.0, 0.5, 1.0]
    row = summary["policies"]["0.500"]
    assert 0 <= row["iou"] <= 1 and sum(row["patch_share"].values()) == pytest.approx(1.0)
    assert summary["f2_alone"]["patch_share"]["f2"] == 1.0
    from learners.routing.policy import load_policy

    assert load_policy(run / "policy.pt").meta["lambda"] == 0.5
    assert "(policy.pt)" in capsys.readouterr().out
    routed = tmp_path / "routed"
    assert main(["route", "--run", str(run), "--image", str(data / "images.tif"), "--out", str(routed),
                 "--lambda", "0.9", "--samples", "2", "--quiet"]) == 0
    import tifffile

    seg, routing = tifffile.imread(routed / "routed.tif"), tifffile.imread(routed / "routing.tif")
    assert seg.shape == (10, 32, 32) and seg.max() <= 2 and routing.shape == (10, 4, 4) and routing.max() <= 2
    info = json.loads((routed / "routing.json").read_text())
    assert info["lambda"] == 1.0 and sum(info["patch_share"].values()) == pytest.approx(1.0)
    share_f0 = float((routing == 0).mean())
    assert info["patch_share"]["f0"] == pytest.approx(share_f0) and "lambda 1.0" in capsys.readouterr().out
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("policy.pt", "policies"))
    assert main(["route", "--run", str(bare), "--image", str(data / "images.tif"), "--out", str(routed)]) == 2
    assert "paser policy" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # range-checked where parsed: argparse's exit status 2
        main(["policy", "--data", str(data), "--run", str(run), "--lambdas", "0,2", "--quiet"])
    assert exc.value.code == 2 and "2 is out of range" in capsys.readouterr().err
    assert main(["policy", "--data", str(data), "--run", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "f0.pt" in capsys.readouterr().err

