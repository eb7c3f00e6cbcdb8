"""The `paser` CLI end to end on tiny data: files written, numbers sane, errors readable."""

import json

import numpy as np
import pytest
import tifffile

from learners.checkpoint import load_checkpoint
from napari_paser.cli import main
from napari_paser.data.dataset import read_dataset


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", "--out", str(out), "--n", "8", "--size", "64", "--seed", "1"]) == 0
    return out


def test_synth_writes_a_valid_dataset(synth_dir):
    ds = read_dataset(synth_dir)
    assert ds.images.shape == (8, 64, 64) and ds.images.dtype == np.uint16
    assert ds.class_names == ("pore", "binder", "active")
    assert sum(len(v) for v in ds.split.values()) == 8


def test_degrade_keeps_labels_and_records_spec(synth_dir, tmp_path):
    out = tmp_path / "low"
    assert main(["data", "degrade", "--data", str(synth_dir), "--out", str(out), "--preset", "lowres", "--noise", "0.2",
                 "--shade", "0.05"]) == 0
    src, low = read_dataset(synth_dir), read_dataset(out)
    assert np.array_equal(src.labels, low.labels) and low.split == src.split
    assert not np.array_equal(src.images, low.images)
    assert json.loads((out / "degradation.json").read_text())["spec"] == "factor=4,blur=0.7,noise=0.2,shade=0.05"


def test_models_json_lists_presets_with_costs(capsys):
    assert main(["models", "--size", "64x96", "--json"]) == 0
    costs = json.loads(capsys.readouterr().out)
    assert list(costs) == ["tiny", "medium", "wide", "large"]
    assert [costs[n]["params"] for n in costs] == sorted(costs[n]["params"] for n in costs)
    assert 0 < costs["tiny"]["gflops"] < costs["medium"]["gflops"] < costs["wide"]["gflops"] < costs["large"]["gflops"]


def test_models_table_lists_every_preset_and_where_it_serves(capsys):
    assert main(["models", "--size", "64x64"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["tiny", "medium", "wide", "large"]  # the large f2 was missing from this table
    assert "f2 of new sessions" in rows["wide"] and "f2 of `paser train`" in rows["large"] and "f0" in rows["tiny"]


def test_train_writes_checkpoints_and_metrics(synth_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_dir), "--out", str(run), "--epochs", "2", "--quiet", "--scheduler", "agent"]) == 0
    agent = json.loads((run / "f0-lr-agent.json").read_text())
    assert agent["q_table"] and json.loads((run / "run.json").read_text())["scheduler"] == "agent"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]) == {"f0", "f1", "f2"}
    for role in ("f0", "f1", "f2"):
        m = metrics["models"][role]
        assert 0 <= m["iou"] <= 1 and m["gflops_per_image"] > 0 and m["params"] > 0
        ckpt = load_checkpoint(run / f"{role}.pt")
        assert ckpt.meta["role"] == role and ckpt.meta["class_names"] == ["pore", "binder", "active"]
        assert ckpt.meta["fingerprint"] == metrics["fingerprint"]
    assert metrics["models"]["f0"]["gflops_per_image_mc5"] == pytest.approx(5 * metrics["models"]["f0"]["gflops_per_image"])
    assert "f2 (large)" in capsys.readouterr().out
    longer = tmp_path / "longer"
    assert main(["train", "--data", str(synth_dir), "--out", str(longer), "--epochs", "1", "--init", str(run),
                 "--quiet"]) == 0
    assert json.loads((longer / "run.json").read_text())["init"] == str(run)
    # a non-empty --out is refused; --overwrite replaces the run and its now stale policies
    (longer / "policy.pt").write_bytes(b"old policy")
    (longer / "policies").mkdir()
    (longer / "policies" / "lambda-0.300.pt").write_bytes(b"old policy")
    old_f0 = (longer / "f0.pt").read_bytes()
    err = _run_error(["train", "--data", str(synth_dir), "--out", str(longer), "--epochs", "1", "--quiet"], capsys)
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (longer / "f0.pt").read_bytes() == old_f0  # refused before anything was touched
    assert main(["train", "--data", str(synth_dir), "--out", str(longer), "--epochs", "1", "--init", str(longer),
                 "--overwrite", "--quiet"]) == 0
    assert not (longer / "policy.pt").exists() and not (longer / "policies").exists()
    assert (longer / "f0.pt").read_bytes() != old_f0 and (longer / "f2.pt").is_file()
    (run / "f1.pt").unlink()
    err = _run_error(["train", "--data", str(synth_dir), "--out", str(tmp_path / "x"), "--init", str(run)], capsys)
    assert "f1.pt" in err and "--init" in err
    assert main(["predict", "--run", str(run), "--image", str(synth_dir / "images.tif"), "--out", str(tmp_path / "p"),
                 "--samples", "2", "--quiet"]) == 0
    pred, ent = tifffile.imread(tmp_path / "p" / "prediction.tif"), tifffile.imread(tmp_path / "p" / "entropy.tif")
    assert pred.shape == ent.shape == (8, 64, 64) and pred.max() <= 2
    assert (ent >= 0).all() and (ent <= np.log(3) + 1e-5).all() and ent.std() > 0


def _run_error(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_give_one_line_messages(tmp_path, capsys):
    err = _run_error(["data", "info", "--data", str(tmp_path / "missing")], capsys)
    assert "missing" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert "empty" in _run_error(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")], capsys)
    err = _run_error(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--shipped", "--init",
                      str(tmp_path)], capsys)
    assert "not both" in err and "--init" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    tifffile.imwrite(bad / "images.tif", np.zeros((6, 64, 64), np.uint16))
    tifffile.imwrite(bad / "labels.tif", np.zeros((6, 64, 60), np.uint8))
    assert "shape" in _run_error(["data", "info", "--data", str(bad)], capsys)
    err = _run_error(["predict", "--run", str(tmp_path), "--image", str(bad / "images.tif"), "--out", str(tmp_path / "p")], capsys)
    assert "f0.pt" in err and "paser train" in err
    err = _run_error(["data", "degrade", "--data", str(bad), "--out", str(tmp_path / "o"), "--preset", "blurry"], capsys)
    assert "blurry" in err and "lowres" in err


def test_too_small_slices_are_refused(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "6", "--size", "32"]) == 0
    err = _run_error(["train", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "r")], capsys)
    assert "too small" in err and "64x64" in err


def test_bad_size_argument_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", "--size", "abc"])
    assert exc.value.code == 2 and "224x256" in capsys.readouterr().err
