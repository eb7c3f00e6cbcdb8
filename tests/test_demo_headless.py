"""The headless demo's data and its per-patch comparison of f1/f2 against f0 (tiny models, no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from learners.checkpoint import save_checkpoint
from learners.grid import Patching
from learners.routing import GRID
from learners.routing.router import build_patch_table
from learners.unet import UNet, UNetConfig
from napari_paser.data.dataset import read_dataset
from napari_paser.jobs import demo


def _tiny_run(folder):
    torch.manual_seed(0)
    models = [UNet(UNetConfig(n_classes=3, base=b, depth=2, dropout=0.2)).eval() for b in (4, 4, 6)]
    for k, model in enumerate(models):
        save_checkpoint(folder / f"f{k}.pt", model)
    return models


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return demo.embedded_dataset(tmp_path_factory.mktemp("demo") / "data")


def test_held_back_slices_are_the_test_split_normalised(data):
    assert data.name == demo.DEMO_DEGRADATION == "lowres-sparse-angle"
    spec = json.loads((data / "degradation.json").read_text())["spec"]
    assert "angles=30" in spec and "factor=4" in spec
    images, labels, idx = demo.held_back(data)
    ds = read_dataset(data)
    assert idx == sorted(ds.split["test"]) and not set(idx) & set(ds.split["pretrain"] + ds.split["rl"])
    assert images.shape == labels.shape == (len(idx), demo.DEMO_SIZE, demo.DEMO_SIZE)
    assert images.dtype == np.float32 and 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    assert np.array_equal(labels, ds.labels[idx])


def test_patch_gains_count_the_patches_each_model_wins_and_are_cached(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    models = _tiny_run(run)
    ds = read_dataset(data)
    gains = demo.patch_gains(ds, run)
    idx = sorted(ds.split["test"])
    from napari_paser.data.dataset import normalise, robust_range

    x = normalise(ds.images, *robust_range(ds.images))[idx]
    with torch.no_grad():
        table, _ = build_patch_table(models, x, ds.labels[idx], Patching(count=GRID, halo=demo.DEMO_HALO), samples=5)
    iou = table.iou.reshape(-1, 3)
    for k in (1, 2):
        won = iou[:, k] - iou[:, 0] >= demo.MIN_GAIN
        assert gains[f"f{k}"]["won"] == np.mean(won)
        assert sum(gains[f"f{k}"]["per_slice_won"]) == won.sum() and len(gains[f"f{k}"]["per_slice_won"]) == len(idx)
    assert sum(gains["best"].values()) == 1.0 and gains["patches"] == len(idx) * GRID[0] * GRID[1]
    assert gains["oracle_patch_miou"] >= max(gains["patch_miou"].values())
    text = demo.format_gains(gains)
    assert "f1 beats f0" in text and "f2 beats f0" in text and f"halo {demo.DEMO_HALO} px" in text
    assert demo.patch_gains(ds, run, halo=0)["halo"] == 0  # another halo is scored anew, not read from the cache

    (run / demo.GAINS_FILE).write_text(json.dumps({**gains, "patches": -1}))  # a cached file is read back ...
    assert demo.patch_gains(ds, run)["patches"] == -1
    save_checkpoint(run / "f2.pt", models[2])  # ... until f2 is retrained
    assert demo.patch_gains(ds, run)["patches"] == len(idx) * GRID[0] * GRID[1]


def test_demo_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (5.7, 5.0, 4.0))
    assert demo.demo_threads() == 1
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    assert demo.demo_threads() == 2


def test_shipped_start_gives_every_role_the_package_weights_and_the_paper_large_f2_none():
    from learners.unet import preset_config
    from napari_paser.jobs.train import MODEL_PRESETS, ROLES, model_presets, shipped_models
    from napari_paser.weights import starting_model

    presets = model_presets(shipped=True)
    assert presets == {"f0": "tiny", "f1": "medium", "f2": "wide"} and model_presets(False) == MODEL_PRESETS
    configs = [preset_config(presets[r], n_classes=3) for r in ROLES]
    models = shipped_models(configs)
    for role, model in zip(ROLES, models):
        ref = starting_model(role, model.config).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert shipped_models([preset_config(MODEL_PRESETS[r], n_classes=3) for r in ROLES])[2] is None  # large: none
    four = shipped_models([preset_config(presets[r], n_classes=4) for r in ROLES])  # another class count:
    assert four[2].config.n_classes == 4 and torch.equal(four[2].stem.weight, models[2].stem.weight)


def test_train_run_refuses_a_shipped_start_with_a_run_to_start_from(data, tmp_path):
    from napari_paser.errors import PaserInputError
    from napari_paser.jobs.train import train_run

    with pytest.raises(PaserInputError, match="not both"):
        train_run(data, tmp_path / "run", init=tmp_path, shipped=True, progress=False)


def test_init_keeps_the_sizes_of_the_run_it_starts_from_and_refuses_other_classes(tmp_path):
    from learners.checkpoint import save_checkpoint
    from learners.unet import UNet, UNetConfig, preset_of
    from napari_paser.errors import PaserInputError
    from napari_paser.jobs.train import init_models

    sizes = {"f0": UNetConfig(base=8, depth=2), "f1": UNetConfig(base=16, depth=4), "f2": UNetConfig(base=32, depth=4)}
    for role, cfg in sizes.items():
        save_checkpoint(tmp_path / f"{role}.pt", UNet(cfg), {"class_names": ["a", "b", "c"]})
    models = init_models(tmp_path, 3)
    assert [preset_of(m.config) for m in models] == ["tiny", "medium", "wide"]
    with pytest.raises(PaserInputError, match="segments 3 classes"):
        init_models(tmp_path, 4)
