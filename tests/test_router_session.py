"""The session trains its own PaSeR router from accepted regions, and exports itself as a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from learners.generators import collect, drain
from learners.checkpoint import load_checkpoint
from learners.routing.bank import load_bank
from learners.routing.policy import load_policy
from learners.unet import UNet, UNetConfig
from napari_paser.cli import main
from napari_paser.errors import PaserInputError
from napari_paser.session.core import Session
from napari_paser.session.router import ROUTER_SHARES, region_rewards

TINY = UNetConfig(base=4, depth=2)


def hand_iou(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Mean IoU over the classes present in the labeled pixels' truth or prediction (0 = unlabeled)."""
    keep = labels > 0
    truth, guess = labels[keep] - 1, pred[keep]
    ious = []
    for c in range(n_classes):
        union = np.sum((truth == c) | (guess == c))
        if union:
            ious.append(np.sum((truth == c) & (guess == c)) / union)
    return float(np.mean(ious))


def random_labeled_session(tmp_path, side: int, n_regions: int) -> Session:
    """Two random slices of side x side, regions of 16 px, f0 = f1 = f2 = TINY, the first n_regions accepted
    with random labels."""
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((2, side, side)) * 1000).astype(np.uint16), region_size=16)
    s.new_models({"f0": TINY, "f1": TINY, "f2": TINY})
    for rid in range(n_regions):
        r = s.region(rid)
        s.accept(rid, rng.integers(1, 4, (r.h, r.w)).astype(np.uint8))
    return s


def test_reward_table_of_accepted_regions_is_each_models_iou_on_each_region(tmp_path):
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((2, 40, 44)) * 1000).astype(np.uint16), region_size=16)
    s.new_models({"f0": TINY, "f1": TINY, "f2": UNetConfig(base=8, depth=2)}, seed=3)
    chosen = [0, 4, 8, 11, 13]  # 11: the partial corner region (8 x 12) of slice 0; 13: slice 1
    for rid in chosen:
        r = s.region(rid)
        patch = rng.integers(1, 4, (r.h, r.w)).astype(np.uint8)
        if rid == 4:
            patch[:3] = 0  # a confirmed partial region: unpainted pixels are not scored
        s.accept(rid, patch, confirm_partial=True)
    rewards = region_rewards(s, ["f0", "f1", "f2"], samples=2)
    assert rewards.region_ids == chosen
    for n, rid in enumerate(chosen):
        r = s.region(rid)
        labels = s.accepted_labels(rid)
        image = s.image_slice(r.z)
        padded = np.pad(image, ((0, 48 - 40), (0, 48 - 44)), mode="reflect")  # whole 16 px patches
        y0, x0 = r.y0, r.x0
        patch = torch.from_numpy(padded[y0:y0 + 16, x0:x0 + 16].copy())[None, None]
        preds = [s.f0_state(r.z, 2).prediction[0].numpy()[r.slices[1:]]]
        for role in ("f1", "f2"):
            with torch.no_grad():
                s.models[role].eval()
                preds.append(s.models[role](patch).argmax(1)[0].numpy()[:r.h, :r.w])
        expected = [hand_iou(p, labels, 3) for p in preds]
        np.testing.assert_allclose(rewards.table.iou[n, 0], expected, rtol=1e-12)
    assert rewards.windows.prediction.shape == (5, 48, 48)  # 3 x 3 patches around each region
    f0_pred = s.f0_state(0, 2).prediction[0].numpy()
    np.testing.assert_array_equal(rewards.windows.prediction[0, 16:32, 16:32], f0_pred[:16, :16])
    np.testing.assert_array_equal(rewards.windows.prediction[0, 32:48, 16:32], f0_pred[16:32, :16])


class Threshold(nn.Module):
    """A 2-of-3-class model of normalised intensity: class 1 above 0.5, else 0, inverted inside `band`;
    confident far from 0.5, unsure near it. `size` dummy parameters set its Eq. 3 cost."""

    def __init__(self, band: float, size: int) -> None:
        super().__init__()
        self.band, self.weight = band, nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - 0.5
        inside = d.abs() < self.band
        sign = torch.where(inside, -torch.sign(d), torch.sign(d))
        strength = 40 * d.abs() + 0 * self.weight.sum()
        return torch.cat([-sign * strength, sign * strength, torch.full_like(x, -10.0)], 1)


def hard_cell_session(tmp_path, val_every=5):
    """2 slices of 4 x 4 regions (16 px): easy regions are 0.1 / 0.9 (f0 right and sure), hard ones
    0.5 +- 0.05 with labels that only f2 gets (f0 wrong and unsure there)."""
    rng = np.random.default_rng(1)
    hard = rng.random((2, 4, 4)) < 0.4
    easy = np.where(rng.random((2, 64, 64)) < 0.5, 0.1, 0.9)
    near = 0.5 + rng.uniform(-0.05, 0.05, (2, 64, 64))
    big = np.repeat(np.repeat(hard, 16, 1), 16, 2)
    img = np.where(big, near, easy).astype(np.float32)
    img[:, 0, 0], img[:, 0, 1] = 0.1, 0.9
    labels = np.where(big, img < 0.5, img >= 0.5).astype(np.uint8) + 1  # layer convention
    s = Session.create(tmp_path / "s", img, region_size=16, val_every=val_every)
    s.new_models({"f0": TINY, "f1": TINY, "f2": TINY})
    lo, hi = s.state.image["lo"], s.state.image["hi"]
    assert lo == pytest.approx(0.1, abs=0.01) and hi == pytest.approx(0.9, abs=0.01)
    s.models["f0"], s.models["f1"], s.models["f2"] = Threshold(0.0, 10), Threshold(0.0, 100), Threshold(0.2, 1000)
    for rid in range(len(s.pool)):
        r = s.region(rid)
        s.accept(rid, labels[r.slices])
    return s, hard


def test_a_router_trained_from_the_session_routes_regions_where_f2_is_better_up(tmp_path):
    s, hard = hard_cell_session(tmp_path)
    events, result = collect(s.train_router(lambdas=[0.1, 1.0], train_models=False, epochs=100, width=8,
                                          samples=2))
    assert not result.cancelled and events[-1].stage == "done"
    assert {e.stage for e in events} >= {"score", "policy", "save"}
    assert s.policy_lambdas == [0.1, 1.0]
    for z in range(2):
        up = s.route(z, lam=0.1, samples=2, execute=False).routing
        assert (up == np.where(hard[z], 2, 0)).mean() >= 0.9
        assert (s.route(z, lam=1.0, samples=2, execute=False).routing == 0).all()
    summary = json.loads((s.folder / "router.json").read_text())
    assert summary["val_regions"] == 6 and summary["train_regions"] == 26 and summary["patch"] == [16, 16]
    held = summary["policies"]["0.100"]
    assert held["iou"] == result.summary["policies"]["0.100"]["iou"]
    assert held["iou"] > summary["f0_alone"]["iou"] + 0.3  # f0 is wrong on the hard held-out regions
    assert held["patch_share"]["f2"] < summary["f2_alone"]["patch_share"]["f2"]
    assert summary["held_out_choice"] == 0.1  # the member that routes the hard regions up, not f0 alone


def test_the_default_ranked_router_sends_the_uncertain_regions_up_without_training_on_them(tmp_path):
    s, hard = hard_cell_session(tmp_path)
    events, result = collect(s.train_router(shares=[0.0, 0.2, 0.5], train_models=False, samples=2))
    assert not result.cancelled and events[-1].stage == "done"
    assert {e.stage for e in events} >= {"score", "thresholds", "save"} and "policy" not in {e.stage for e in events}
    assert s.policy_lambdas == [0.0, 0.2, 0.5] and s.bank.knob == "share"
    assert s.bank.default_lambda == 0.5  # the held-out table's best: every hard held-out region goes up
    assert s.router_verdict.startswith("routing sends the 50% most uncertain patches to f2")
    share = hard.mean()  # 0.375 of the cells: f0 is unsure on exactly those
    for z in range(2):
        assert (s.route(z, lam=0.5, samples=2, execute=False).routing == np.where(hard[z], 2, 0)).all()
        assert (s.route(z, lam=0.0, samples=2, execute=False).routing == 0).all()
    some = np.stack([s.route(z, lam=0.2, samples=2, execute=False).routing for z in range(2)])
    assert (some[~hard] == 0).all() and 0 < (some == 2).mean() <= 0.2 + 1 / 32 < share
    summary = json.loads((s.folder / "router.json").read_text())
    assert summary["policy"] == "ranked" and summary["knob"] == "share" and summary["pool_slices"] == 2
    assert summary["thresholds"]["0.000"] > 1 and "held_out_choice" not in summary
    assert summary["policies"]["0.500"]["iou"] > summary["f0_alone"]["iou"] + 0.3  # the hard held-out regions go up


def test_a_cancelled_ranked_router_keeps_the_previous_bank(tmp_path):
    s, _ = hard_cell_session(tmp_path)
    collect(s.train_router(shares=[0.1, 0.5], train_models=False, samples=2))
    before = {k: p.thresholds.clone() for k, p in s.bank.policies.items()}
    stops = iter([False, False, True])
    events, result = collect(s.train_router(shares=[0.3], train_models=False, samples=2,
                                          should_stop=lambda: next(stops, True)))
    assert result.cancelled and events[-1].stage == "cancelled"
    assert s.policy_lambdas == [0.1, 0.5]
    assert all(torch.equal(before[k], p.thresholds) for k, p in s.bank.policies.items())


def test_train_router_reports_scoring_per_slice_and_a_cancel_there_keeps_the_previous_bank(tmp_path):
    """Scoring the accepted regions is a step of the job like the others: one Progress per slice as it goes,
    and a cancel between slices stops it there (no bank made, the previous one kept)."""
    s, _ = hard_cell_session(tmp_path)
    events, _ = collect(s.train_router(shares=[0.1, 0.5], train_models=False, samples=2))
    scoring = [e for e in events if e.stage == "score"]
    assert [(e.done, e.total, e.z) for e in scoring] == [(1, 2, 0), (2, 2, 1)]
    assert events.index(scoring[-1]) < next(i for i, e in enumerate(events) if e.stage == "save")
    seen: list = []  # every event as it is yielded: the job asks should_stop between slices
    result = drain(s.train_router(shares=[0.3], train_models=False, samples=2,
                                  should_stop=lambda: bool(seen) and seen[-1].stage == "score"), seen.append)
    assert result.cancelled and seen[-1].stage == "cancelled"
    assert [e.done for e in seen if e.stage == "score"] == [1]  # stopped after the first slice
    assert s.policy_lambdas == [0.1, 0.5]


def test_held_out_choice_falls_back_to_f0_alone_when_every_policy_loses_there():
    from napari_paser.session.router import format_router, held_out_choice

    def row(iou, gflops):
        return {"iou": iou, "gflops_per_image": gflops, "patch_share": {"f0": 0.5, "f1": 0.5, "f2": 0.0}}

    summary = {"train_regions": 10, "val_regions": 2, "patch": [64, 64], "models": ["f0", "f1", "f2"],
               "default_lambda": 0.02, "policies": {"0.000": row(0.90, 3.0), "0.020": row(0.90, 2.0),
                                                    "0.100": row(0.88, 1.0)},
               "f0_alone": row(0.89, 0.1), "f1_alone": row(0.85, 1.0), "f2_alone": row(0.87, 4.0)}
    assert held_out_choice(summary) == 0.02  # the best held-out mIoU, the cheaper of a tie
    summary["held_out_choice"] = 0.02
    assert "recommend lambda 0.02" in format_router(summary)
    summary["f0_alone"] = row(0.91, 0.1)  # f0 alone beats every member on the held-out regions
    assert held_out_choice(summary) is None
    summary["held_out_choice"] = None
    assert "f0 alone beats every policy" in format_router(summary)
    assert held_out_choice({"policies": {}}) is None


def test_a_ranked_table_says_what_routing_does_and_warns_when_f0_alone_leads_on_the_held_out_regions():
    from napari_paser.session.router import default_share, format_router

    def row(iou, f2):
        return {"iou": iou, "gflops_per_image": 1.0 + f2, "patch_share": {"f0": 1 - f2, "f1": 0.0, "f2": f2}}

    summary = {"policy": "ranked", "knob": "share", "train_regions": 10, "val_regions": 2, "patch": [64, 64],
               "models": ["f0", "f1", "f2"], "default_lambda": 0.2, "pool_slices": 32,
               "policies": {"0.000": row(0.85, 0.0), "0.200": row(0.84, 0.3), "0.500": row(0.83, 0.6)},
               "f0_alone": row(0.85, 0.0), "f1_alone": row(0.80, 0.0), "f2_alone": row(0.80, 1.0)}
    text = format_router(summary)
    assert "  share  held mIoU" in text and "0.200     0.840" in text and "(policy.pt)" in text
    assert "routing sends the 20% most uncertain patches" in text  # a router.json without a verdict
    summary["default_lambda"], summary["verdict"] = default_share(summary, [0.0, 0.2, 0.5])
    assert summary["default_lambda"] == 0.0  # f0 leads on the held-out regions: nothing goes up by default
    text = format_router(summary)
    assert "f0 is enough on this volume: f0 0.850 vs 20% share 0.840, f2 alone 0.800 on the 2 held-out" in text
    assert "0.000     0.850" in text and "(policy.pt)" in text.split("0.000     0.850")[1].splitlines()[0]
    summary["policies"]["0.200"] = row(0.86, 0.3)
    share, verdict = default_share(summary, [0.0, 0.2, 0.5])
    assert share == 0.2 and verdict.startswith("routing sends the 20% most uncertain patches to f2: 0.860 vs f0 0.850")
    summary["policies"]["0.500"] = row(0.86, 0.6)  # a tie: the cheaper share
    assert default_share(summary, [0.0, 0.2, 0.5])[0] == 0.2
    share, verdict = default_share({"models": ["f0", "f2"], "val_regions": 0}, [0.0, 0.2, 0.5])
    assert share == 0.2 and "no held-out regions" in verdict


def test_cancel_keeps_the_previous_bank(tmp_path):
    s, _ = hard_cell_session(tmp_path)
    collect(s.train_router(lambdas=[0.1, 0.5], train_models=False, epochs=3, samples=2))
    before = {lam: [p.detach().clone() for p in pol.parameters()] for lam, pol in s.bank.policies.items()}
    files = {r: i["file"] for r, i in s.state.models.items()}
    calls = []
    events, result = collect(s.train_router(lambdas=[0.0, 0.3], train_models=False, epochs=3, samples=2,
                                          should_stop=lambda: calls.append(1) or len(calls) > 4))
    assert result.cancelled and events[-1].stage == "cancelled"
    assert s.policy_lambdas == [0.1, 0.5]
    for lam, params in before.items():
        assert all(torch.equal(a, b) for a, b in zip(params, s.bank.policies[lam].parameters()))
    assert {r: i["file"] for r, i in s.state.models.items()} == files
    s.close()
    again = Session.open(s.folder)
    assert again.policy_lambdas == [0.1, 0.5]


def test_a_bank_made_with_an_older_f0_is_stale_until_the_router_is_made_again(tmp_path):
    from dataclasses import replace

    from napari_paser.session.training import RETRAIN_CONFIG

    s = random_labeled_session(tmp_path, 48, 8)
    assert not s.bank_stale  # no bank yet
    collect(s.train_router(train_models=False, samples=2, refresh=False))
    assert not s.bank_stale
    collect(s.retrain(replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=1, batch_size=2), roles=("f0",), samples=2,
                      refresh=False))
    assert s.bank_stale  # its thresholds read the previous f0's entropy
    collect(s.train_router(train_models=False, samples=2, refresh=False))
    assert not s.bank_stale


def test_a_full_refresh_sets_a_stale_ranked_bank_again_for_the_new_f0(tmp_path):
    """After f0 retrains, a refresh that leaves every threshold slice's maps current makes the ranked bank
    again (same shares, thresholds from the new f0's entropy); a refresh that leaves them stale does not."""
    from dataclasses import replace

    from napari_paser.session.training import RETRAIN_CONFIG
    from napari_paser.session.router import ROUTER_FILE

    s = random_labeled_session(tmp_path, 48, 8)
    collect(s.train_router(train_models=False, shares=[0.1, 0.3], samples=2, refresh=False))
    before = {k: float(p.thresholds[-1]) for k, p in s.bank.policies.items()}
    quick = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=2, batch_size=2, crop=16)
    events, result = collect(s.retrain(quick, roles=("f0",), samples=2, refresh=False, keep_if_worse=False))
    assert s.bank_stale
    _, report = collect(s.refresh(everything=False, samples=2))  # nothing on screen: the maps stay stale
    assert s.bank_stale and not report.rethresholded
    _, report = collect(s.refresh(samples=2))
    assert report.rethresholded and "routing shares set again" in report.message() and not s.bank_stale
    after = {k: float(p.thresholds[-1]) for k, p in s.bank.policies.items()}
    assert sorted(after) == [0.1, 0.3] and after != before and after[0.1] >= after[0.3]
    saved = json.loads((s.folder / ROUTER_FILE).read_text())["thresholds"]
    assert saved == {f"{k:.3f}": v for k, v in after.items()}


def test_the_ranked_bank_scores_patches_by_their_share_of_the_most_uncertain_pixels(tmp_path):
    """Default: an entropy level set so that TAIL of the threshold slices' pixels lie above it, then the share of
    patches above each threshold is the member's share; tail=0 gives the mean-entropy bank; a redo after f0
    retrains keeps the kind the bank was made with."""
    from dataclasses import replace

    from learners.routing.ranked import TAIL, patch_score
    from napari_paser.session.training import RETRAIN_CONFIG
    from napari_paser.session.router import ROUTER_FILE, pool_slices

    s = random_labeled_session(tmp_path, 64, 8)
    collect(s.train_router(train_models=False, shares=[0.25], samples=2, refresh=False))
    policy = s.bank.policies[0.25]
    level = policy.config.level
    entropy = np.concatenate([s.f0_state(z, 2).policy_input()[:, -1].numpy().ravel() for z in pool_slices(s)])
    assert abs(np.mean(entropy > level) - TAIL) < 0.01
    scores = np.concatenate([patch_score(s.f0_state(z, 2).policy_input(), policy.config).numpy().ravel()
                             for z in pool_slices(s)])
    assert np.mean(scores > float(policy.thresholds[-1])) <= 0.25 < np.mean(scores >= float(policy.thresholds[-1]))
    assert json.loads((s.folder / ROUTER_FILE).read_text())["tail"] == TAIL
    collect(s.train_router(train_models=False, shares=[0.25], tail=0.0, samples=2, refresh=False))
    assert s.bank.policies[0.25].config.level is None
    quick = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=2, batch_size=2, crop=16)
    collect(s.retrain(quick, roles=("f0",), samples=2, keep_if_worse=False))  # the full refresh redoes the bank
    assert not s.bank_stale and s.bank.policies[0.25].config.level is None
    with pytest.raises(PaserInputError, match="tail"):
        s.train_router(tail=1.0)


def test_train_router_refuses_without_training_regions_or_larger_models(tmp_path):
    s = Session.create(tmp_path / "s", np.zeros((32, 32), np.float32) + np.eye(32, dtype=np.float32), region_size=16)
    s.new_models({"f0": TINY})
    with pytest.raises(PaserInputError, match="f1"):
        s.train_router()
    s.new_models({"f1": TINY})
    with pytest.raises(PaserInputError, match="no accepted training regions"):
        s.train_router()


def test_exported_session_run_routes_a_stack_through_paser_route(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((2, 48, 48)) * 1000).astype(np.uint16)
    s = Session.create(tmp_path / "s", img, region_size=16)
    s.new_models({"f0": TINY, "f1": TINY, "f2": UNetConfig(base=8, depth=2)})
    for rid in range(6):
        r = s.region(rid)
        s.accept(rid, rng.integers(1, 4, (r.h, r.w)).astype(np.uint8))
    collect(s.train_router(lambdas=[0.0, 0.01, 0.5], train_models=False, epochs=2, samples=2))
    run = s.export_run(tmp_path / "run")
    assert {p.name for p in run.iterdir()} >= {"f0.pt", "f1.pt", "f2.pt", "policy.pt", "policies", "run.json"}
    policy = load_policy(run / "policy.pt")
    assert policy.config.patch == (16, 16) and policy.meta["lambda"] == 0.01  # the member routing defaults to
    assert load_bank(run).lambdas == [0.0, 0.01, 0.5]
    assert load_checkpoint(run / "f2.pt").model.config.base == 8
    with pytest.raises(PaserInputError, match="not empty"):
        s.export_run(run)
    stack = (rng.random((4, 40, 56)) * 1000).astype(np.uint16)  # another size: same 16 px patches
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    assert main(["route", "--run", str(run), "--image", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "out"),
                 "--lambda", "0", "--samples", "2", "--quiet"]) == 0
    assert tifffile.imread(tmp_path / "out" / "routed.tif").shape == (4, 40, 56)
    assert tifffile.imread(tmp_path / "out" / "routing.tif").shape == (4, 3, 4)


def test_cli_trains_the_router_of_a_session_exports_it_and_runs_each_model_alone(tmp_path, capsys):
    rng = np.random.default_rng(0)
    s = Session.create(tmp_path / "s", (rng.random((2, 48, 48)) * 1000).astype(np.uint16), region_size=16)
    s.new_models({"f0": TINY, "f1": TINY, "f2": UNetConfig(base=8, depth=2)})
    for rid in range(12):
        r = s.region(rid)
        s.accept(rid, rng.integers(1, 4, (r.h, r.w)).astype(np.uint8))
    s.close()
    assert main(["session", "train-router", "--session", str(s.folder), "--policy", "network", "--lambdas", "0,0.01",
                 "--epochs", "2", "--no-retrain", "--samples", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert " lambda  held mIoU" in out and "0.010" in out and ("recommend lambda" in out or "f0 alone beats" in out)
    assert json.loads((s.folder / "router.json").read_text())["policy"] == "network"
    assert main(["session", "train-router", "--session", str(s.folder), "--no-retrain", "--samples", "2",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "10 training regions, 2 held out, 16x16 px patches" in out and "  share  held mIoU" in out
    saved = json.loads((s.folder / "router.json").read_text())
    assert "0.050" in out and "0.500" in out and saved["verdict"] in out
    f0, best = saved["f0_alone"]["iou"], max(r["iou"] for k, r in saved["policies"].items() if float(k) > 0)
    if round(best, 4) <= round(f0, 4):  # random labels: whichever the held-out table says, the output says it
        assert saved["default_lambda"] == 0.0 and "f0 is enough on this volume" in out
    else:
        assert saved["policies"][f"{saved['default_lambda']:.3f}"]["iou"] == best
    run = tmp_path / "run"
    assert main(["session", "export-run", "--session", str(s.folder), "--out", str(run)]) == 0
    assert load_bank(run).lambdas == list(ROUTER_SHARES)  # the session's default bank, the network one replaced
    assert load_policy(run / "policy.pt").config.kind == "ranked"
    tifffile.imwrite(tmp_path / "one.tif", (rng.random((40, 40)) * 1000).astype(np.uint16))
    for model, samples in (("f0", "0"), ("f0", "2"), ("f2", "2")):
        dest = tmp_path / f"{model}-{samples}"
        assert main(["route", "--run", str(run), "--image", str(tmp_path / "one.tif"), "--out", str(dest),
                     "--model", model, "--samples", samples, "--quiet"]) == 0
        summary = json.loads((dest / "routing.json").read_text())
        assert summary["model"] == model and summary["patch_share"][model] == 1.0
        seg = tifffile.imread(dest / "routed.tif")
        expected = load_checkpoint(run / f"{model}.pt").model.eval()
        if samples == "0" or model == "f2":  # one deterministic pass on the whole slice
            from napari_paser.data.dataset import normalise, robust_range
            raw = tifffile.imread(tmp_path / "one.tif")
            x = torch.from_numpy(normalise(raw, *robust_range(raw)))[None, None]
            with torch.no_grad():
                np.testing.assert_array_equal(seg.reshape(40, 40), expected(x).argmax(1)[0].numpy())
    assert main(["session", "train-router", "--session", str(tmp_path / "nowhere")]) == 2


def test_cross_fitted_rewards_come_from_models_that_never_saw_the_region(tmp_path):
    """Fold models train on every label but their fold's, and score exactly their fold's regions."""
    from dataclasses import replace

    from napari_paser.session.training import RETRAIN_CONFIG, training_data
    from napari_paser.session.router import cross_fit_models

    s, _ = hard_cell_session(tmp_path)
    s.new_models({"f0": TINY, "f1": TINY})
    train = [r.region_id for r in s.state.accepted if r.split == "train"]
    part = set(train[::2])
    data = training_data(s, hold_out=part)
    assert [lab.shape for lab in data.labels] == [(64, 64), (64, 64)]  # one whole-slice piece per slice
    for rid in train:  # a held-back region's pixels never train; the others do
        r = s.region(rid)
        assert (data.labels[r.z][r.slices[1:]] == 255).all() == (rid in part)
    assert data.n_val_regions == sum(r.split == "val" for r in s.state.accepted)  # not added to validation
    cfg = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=2, batch_size=2)
    events, folds = collect(cross_fit_models(s, ["f0", "f1"], 2, cfg, None))
    assert {e.stage for e in events} == {"cross-fit"} and events[-1].done == events[-1].total == 2 * 2 * 2
    assert [ids for _, ids in folds] == [set(train[0::2]), set(train[1::2])]
    assert all(len(m) == 2 and m[0] is not s.models["f0"] for m, _ in folds)

    class Constant(nn.Module):  # predicts class c everywhere: its reward is the IoU of that guess
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x):
            out = torch.full((x.shape[0], 3, *x.shape[-2:]), -9.0)
            out[:, self.c] = 9.0
            return out

    rewards = region_rewards(s, ["f0", "f1"], samples=1, scorers=[([Constant(2), Constant(2)], part)])
    for n, rid in enumerate(rewards.region_ids):
        row = rewards.table.iou[n, 0]
        if rid in part:  # class 2 is in no label: IoU 0 for both scorers
            assert np.nanmax(row) == 0.0
        else:
            assert np.nanmax(row) > 0.0


def test_train_router_retrains_the_models_its_bank_routes_to(tmp_path):
    """A ranked bank routes only to f2, so only f2 retrains (for ROUTED_RETRAIN's steps unless told); the
    network retrains f1 and f2."""
    from dataclasses import replace

    from napari_paser.session.training import RETRAIN_CONFIG
    from napari_paser.session.router import ROUTED_RETRAIN, RouterConfig

    assert RouterConfig().model_config is None and ROUTED_RETRAIN.epochs > RETRAIN_CONFIG.epochs
    s = random_labeled_session(tmp_path, 32, 6)
    quick = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=2, crop=16)
    _, ranked = collect(s.train_router(model_config=quick, shares=[0.2], samples=2, refresh=False))
    assert set(ranked.retrain.results) == {"f2"}
    _, network = collect(s.train_router(policy="network", lambdas=[0.0], model_config=quick, epochs=1, cross_fit=0,
                                        samples=2, refresh=False))
    assert set(network.retrain.results) == {"f1", "f2"}
    s.close()
    assert main(["session", "train-router", "--session", str(s.folder), "--model-epochs", "1", "--shares", "0.2",
                 "--samples", "2", "--quiet"]) == 0
    with Session.open(s.folder, read_only=True) as again:
        assert again.state.curve[-1].epochs == 1 and len(again.state.curve) == 3  # one more retrain: f2, 1 epoch


def test_focus_trains_the_routed_model_where_f0_is_unsure(tmp_path):
    """focus > 0: crop centres weigh f0's region-mean MC entropy to that power. On slices whose grey level
    gives the class on the left half and is noise on the right, a trained f0 is unsure on the right, so the
    right half weighs more; the same steps from the same weights then end elsewhere, while focus 0
    repeats the uniform draw exactly."""
    from dataclasses import replace

    from napari_paser.session.training import RETRAIN_CONFIG, uncertainty_focus
    from napari_paser.session.router import RouterConfig

    rng = np.random.default_rng(0)
    classes = np.kron(rng.integers(0, 3, (2, 12, 12)), np.ones((1, 4, 4), int))  # 4 px blocks
    image = classes * 300.0 + 100
    image[:, :, 24:] = rng.random((2, 48, 24)) * 900  # no clue to the class on the right
    s = Session.create(tmp_path / "s", image.astype(np.uint16), region_size=16)
    s.new_models({"f0": TINY, "f1": TINY, "f2": TINY})
    for rid in range(len(s.pool)):
        r = s.region(rid)
        s.accept(rid, (classes[r.z, r.y0:r.y0 + r.h, r.x0:r.x0 + r.w] + 1).astype(np.uint8))
    collect(s.retrain(replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=60, crop=16, lr=1e-2, keep=0.0), roles=("f0",),
                      samples=2, refresh=False, keep_if_worse=False))
    images = s.training_data().images
    one, two = uncertainty_focus(s, images, 1.0, 2), uncertainty_focus(s, images, 2.0, 2)
    assert [w.shape for w in one] == [im.shape for im in images]
    assert all(np.allclose(b, a ** 2) for a, b in zip(one, two))
    assert all(w[:, 32:].mean() > 1.5 * w[:, :16].mean() for w in two)
    quick = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=3, crop=16, jitter=0.0)
    collect(s.retrain(quick, roles=("f2",), samples=2, refresh=False, keep_if_worse=False))  # then every run
    start = {k: v.clone() for k, v in s.models["f2"].state_dict().items()}  # below trains at the warm lr
    trained = {}
    for focus in (0.0, 0.0, 4.0):
        s.models["f2"].load_state_dict(start)
        collect(s.retrain(quick, roles=("f2",), samples=2, refresh=False, keep_if_worse=False, focus=focus))
        trained.setdefault(focus, []).append({k: v.clone() for k, v in s.models["f2"].state_dict().items()})
    same = trained[0.0]
    assert all(torch.equal(same[0][k], same[1][k]) for k in start)
    assert any(not torch.equal(same[0][k], trained[4.0][0][k]) for k in start)
    with pytest.raises(PaserInputError, match="focus"):
        RouterConfig(focus=-1)


def test_routing_is_ready_before_f2_retrains_and_made_again_when_it_lands(tmp_path):
    """With f2 retraining, the bank is first made and installed with the current f2 (a "ready" event, before any
    training step), the retrain's events say the time left, and the bank is made again after it; the default
    share follows the held-out table and survives reopening and export."""
    from dataclasses import replace

    from napari_paser.session.training import RETRAIN_CONFIG
    from napari_paser.session.router import ROUTER_FILE

    s, _ = hard_cell_session(tmp_path)
    s.models["f2"] = UNet(TINY).eval()  # a real model to retrain; the hard regions' f2 is the threshold rule
    s.install_models({"f2": s.models["f2"]}, source="test")
    quick = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=4, batch_size=2, crop=16)
    gen = s.train_router(model_config=quick, shares=[0.0, 0.2, 0.5], samples=2, refresh=False)
    stages, bank_at_ready, trained = [], None, []
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        stages.append(event.stage)
        if event.stage == "ready":
            bank_at_ready = (list(s.policy_lambdas), s.bank.default_lambda, s.router_verdict)
            assert "routing ready in" in event.message and "f2 retrains next" in event.message
        if event.stage == "train":
            trained.append(event.message)
    assert bank_at_ready is not None and bank_at_ready[0] == [0.0, 0.2, 0.5] and bank_at_ready[2]
    assert stages.index("ready") < stages.index("train")
    assert any("left (routing is ready: Cancel keeps it)" in m for m in trained)
    assert not result.cancelled and not result.retrain_cancelled and set(result.retrain.results) == {"f2"}
    saved = json.loads((s.folder / ROUTER_FILE).read_text())
    assert saved["retrained"] == ["f2"] and saved["first_bank_seconds"] <= saved["seconds"]
    assert s.bank.default_lambda == saved["default_lambda"]
    s.close()
    again = Session.open(s.folder)
    assert again.bank.default_lambda == saved["default_lambda"] and again.router_verdict == saved["verdict"]
    run = again.export_run(tmp_path / "run")
    assert load_policy(run / "policy.pt").meta["lambda"] == saved["default_lambda"]


def test_f0_is_enough_routes_nothing_by_default_and_a_cancelled_f2_keeps_the_first_bank(tmp_path):
    """When f2 is no better than f0 on the held-out regions, the default share is 0 and the verdict says so,
    with the numbers; cancelling f2's retraining after the first bank keeps that bank (not a cancelled router)."""
    from dataclasses import replace

    from napari_paser.session.training import RETRAIN_CONFIG

    s, _ = hard_cell_session(tmp_path)
    s.models["f2"] = Threshold(0.0, 1000)  # f0's rule at f2's cost: never better
    collect(s.train_router(train_models=False, shares=[0.0, 0.2, 0.5], samples=2, refresh=False))
    f0 = json.loads((s.folder / "router.json").read_text())["f0_alone"]["iou"]
    assert s.bank.default_lambda == 0.0
    assert s.router_verdict.startswith(f"f0 is enough on this volume: f0 {f0:.3f} vs ")
    assert "held-out regions" in s.router_verdict
    assert (s.route(0, samples=2, execute=False).routing == 0).all()  # the default member: f0 everywhere

    s.models["f2"] = UNet(TINY).eval()
    s.install_models({"f2": s.models["f2"]}, source="test")
    f2_file = s.state.models["f2"]["file"]
    quick = replace(RETRAIN_CONFIG, epochs=1, steps_per_epoch=200, batch_size=2, crop=16)
    seen: list[str] = []
    gen = s.train_router(model_config=quick, shares=[0.1, 0.3], samples=2, refresh=False,
                         should_stop=lambda: seen.count("train") >= 3)
    while True:
        try:
            seen.append(next(gen).stage)
        except StopIteration as stop:
            result = stop.value
            break
    assert "ready" in seen and not result.cancelled and result.retrain_cancelled
    assert s.policy_lambdas == [0.1, 0.3] and s.state.models["f2"]["file"] == f2_file  # f2 kept, first bank kept


def test_a_banks_chosen_member_is_its_default_only_when_it_is_a_member():
    from learners.routing.bank import PolicyBank

    bank = PolicyBank({0.0: object(), 0.2: object(), 0.5: object()})
    assert bank.default_lambda == 0.2  # nothing chosen: the middle member
    bank.chosen = 0.0
    assert bank.default_lambda == 0.0 and bank.pick(None)[0] == 0.0
    bank.chosen = 0.3  # not a member (a bank made again with other shares): the middle one again
    assert bank.default_lambda == 0.2
