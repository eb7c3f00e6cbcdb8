"""`paser bench routing` end to end on a tiny synthetic dataset with small UNets.

The models are small stand-ins for f0/f1/f2 (the real presets make the run minutes, not
seconds); the command, the JSON schema and the invariants are what is under test.
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from learners.routing.cascade import CascadePoint
from learners.checkpoint import load_checkpoint, save_checkpoint
from learners.inference import predict_classes
from learners.metrics import mean_iou
from learners.unet import UNet, UNetConfig
from napari_paser import cli
from napari_paser.bench.routing import METHODS, epochs_to_converge, gflops_at_iou, parse_noise
from napari_paser.data.dataset import normalise, read_dataset, robust_range
from napari_paser.errors import PaserInputError


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 10-slice synthetic dataset and a run folder of small f0 < f1 < f2 (untrained)."""
    root = tmp_path_factory.mktemp("bench")
    data, run = root / "data", root / "run"
    assert cli.main(["data", "synth", "--out", str(data), "--n", "10", "--size", "64"]) == 0
    lo, hi = robust_range(read_dataset(data).images)
    torch.manual_seed(0)
    for role, base in (("f0", 4), ("f1", 8), ("f2", 16)):
        model = UNet(UNetConfig(n_classes=3, base=base, depth=2, dropout=0.2))
        save_checkpoint(run / f"{role}.pt", model, {"normalisation": {"lo": lo, "hi": hi}, "role": role})
    return root, data, run


def run_cli(args: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(args) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def bench(inputs):
    """(results dict, printed table, folder) of one bench run with --sweep."""
    root, data, run = inputs
    out = root / "res" / "routing.json"
    printed = run_cli(["bench", "routing", "--data", str(data), "--run", str(run), "--out", str(out),
                       "--epochs-rl", "2", "--epochs-ft", "1", "--epochs-noise", "1", "--sweep", "--quiet"])
    return json.loads(out.read_text()), printed, root


def test_json_has_every_method_with_the_required_fields(bench):
    results, table, _ = bench
    assert results["dataset"].endswith("data") and results["command"].startswith("paser bench routing")
    assert set(METHODS) <= set(results["methods"])
    for name in METHODS:
        m = results["methods"][name]
        assert {"iou", "gflops_per_image", "iou_per_gflop", "patch_share"} <= set(m)
        assert 0.0 <= m["iou"] <= 1.0 and m["gflops_per_image"] > 0
        assert m["iou_per_gflop"] == pytest.approx(m["iou"] / m["gflops_per_image"])
        assert set(m["patch_share"]) == {"f0", "f1", "f2"}
        assert sum(m["patch_share"].values()) == pytest.approx(1.0)
        assert name in table


def test_single_models_route_everything_to_themselves_and_cost_grows_with_size(bench):
    methods = bench[0]["methods"]
    for k, name in enumerate(("f0", "f1", "f2")):
        assert methods[name]["patch_share"][name] == 1.0
    assert methods["f2"]["gflops_per_image"] > methods["f1"]["gflops_per_image"] > methods["f0"]["gflops_per_image"]
    # f0 as PaSeR computes it (mean of its MC passes) pays every pass; the one-pass f0 pays one
    assert methods["f0_mc"]["patch_share"]["f0"] == 1.0
    assert methods["f0_mc"]["gflops_per_image"] > 2 * methods["f0"]["gflops_per_image"]


def test_oracle_has_the_best_reward(bench):
    """The oracle maximises the reward per patch, so no routing map scores more (IoU is not guaranteed)."""
    methods = bench[0]["methods"]
    for name in METHODS:
        assert methods["oracle"]["reward"] >= methods[name]["reward"] - 1e-9


def test_cascade_pays_for_every_stage_it_ran(bench):
    """A patch that ends at f2 went through f1 as well, so the cascade costs more than routing it directly."""
    results = bench[0]
    m = results["methods"]["idk_cascade"]
    assert len(m["thresholds"]) == 2
    direct = (m["patch_share"]["f1"] * results["methods"]["f1"]["gflops_per_image"]
              + m["patch_share"]["f2"] * results["methods"]["f2"]["gflops_per_image"])
    assert m["gflops_per_image"] > direct


def test_noise_block_and_comparison(bench):
    results = bench[0]
    noise = results["noise"]
    assert noise["noise"] == "sp:0.01"
    for name in METHODS:
        z = noise["methods"][name]
        assert 0.0 <= z["iou"] <= 1.0
        assert z["iou_drop"] == pytest.approx(z["iou_clean"] - z["iou"])
        assert 0.0 <= z["share_upward"] <= 1.0
    comparison = results["comparison"]
    assert comparison["oracle_minus_paser_reward"] >= -1e-9
    assert {"paser_iou_over_f2", "paser_gflops_over_f2", "cascade_gflops_at_paser_iou_over_paser"} <= set(comparison)
    assert set(results["stage2"]) == {"paser", "reinforce", "reinforce_no_baseline"}
    assert results["stage2"]["paser"]["gradient"] == "expected"
    for arm in results["stage2"]:
        assert results["stage2"][arm]["epochs"] == 2
        assert 0.0 <= results["stage2"][arm]["test"]["iou"] <= 1.0


def test_sweep_writes_curves_and_a_png(bench):
    results, _, root = bench
    curves = results["curves"]
    assert [r["lambda"] for r in curves["paser"]] == [r["lambda"] for r in curves["oracle"]]
    assert len(curves["random"]) == 15 and len(curves["idk_cascade"]) > 1
    for p, o in zip(curves["paser"], curves["oracle"]):  # same lambda, same table: the oracle's reward is the max
        assert o["reward"] >= p["reward"] - 1e-9
    along = results["comparison"]["along_sweep"]
    assert [a["lambda"] for a in along] == [r["lambda"] for r in curves["paser"]]
    png = root / "res" / "routing.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fast_mode_and_policy_only_stage3(bench, inputs):
    """--fast scores the cascades on the table; --policy-only-ft leaves f1/f2 as pretrained."""
    root, data, run = inputs
    out = root / "fast.json"
    run_cli(["bench", "routing", "--data", str(data), "--run", str(run), "--out", str(out), "--epochs-rl", "1",
             "--epochs-ft", "1", "--epochs-noise", "1", "--noise-steps", "1", "--fast", "--policy-only-ft", "--quiet"])
    res = json.loads(out.read_text())
    assert res["stage3"]["patches_trained"] == {"f1": 0, "f2": 0} and "--policy-only-ft" in res["command"]
    assert bench[0]["stage3"]["patches_trained"]["f1"] + bench[0]["stage3"]["patches_trained"]["f2"] > 0
    ds = read_dataset(data)
    x = normalise(ds.images, *robust_range(ds.images))[ds.split["test"]]
    for role in ("f1", "f2"):  # scored as the checkpoints on disk score
        pred = predict_classes(load_checkpoint(run / f"{role}.pt").model, x, grid=(4, 4))
        assert res["methods"][role]["iou"] == pytest.approx(mean_iou(pred, ds.labels[ds.split["test"]], 3), abs=1e-6)
    fast = res["methods"]
    for name in ("idk_cascade", "idk_cascade_iou_match"):
        assert fast[name]["evaluated"] == "patch table"
        assert bench[0]["methods"][name]["evaluated"] == "executed"
        assert len(fast[name]["thresholds"]) == 2 and fast[name]["gflops_per_image"] > fast["f0"]["gflops_per_image"]


def test_user_errors_print_one_line(tmp_path, capsys):
    rc = cli.main(["bench", "routing", "--data", str(tmp_path), "--run", str(tmp_path),
                   "--out", str(tmp_path / "r.json"), "--noise", "gauss:0.1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "sp:" in err


def test_helpers():
    assert parse_noise("sp:0.01") == 0.01
    with pytest.raises(PaserInputError):
        parse_noise("sp:2")
    assert epochs_to_converge([0.0, 0.5, 1.0, 1.0, 1.0]) == 3
    assert epochs_to_converge([1.0, 1.0]) == 1
    front = [CascadePoint((0.0,), 0.5, 1.0, math.nan, {}), CascadePoint((0.0,), 0.7, 3.0, math.nan, {})]
    assert gflops_at_iou(front, 0.6) == pytest.approx(2.0)
    assert gflops_at_iou(front, 0.4) == 1.0 and gflops_at_iou(front, 0.8) is None
    assert np.isfinite(gflops_at_iou(front, 0.7))
