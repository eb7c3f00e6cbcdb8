"""The headless demo's data and its per-patch comparison of f1/f2 against f0 (tiny models, no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from learners.checkpoint import save_checkpoint
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
    assert data.name == demo.DEMO_DEGRADATION == "lowres-shading"
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
        table, _ = build_patch_table(models, x, ds.labels[idx], GRID, samples=5)
    iou = table.iou.reshape(-1, 3)
    for k in (1, 2):
        won = iou[:, k] - iou[:, 0] >= demo.MIN_GAIN
        assert gains[f"f{k}"]["won"] == np.mean(won)
        assert sum(gains[f"f{k}"]["per_slice_won"]) == won.sum() and len(gains[f"f{k}"]["per_slice_won"]) == len(idx)
    assert sum(gains["best"].values()) == 1.0 and gains["patches"] == len(idx) * GRID[0] * GRID[1]
    assert gains["oracle_patch_miou"] >= max(gains["patch_miou"].values())
    text = demo.format_gains(gains)
    assert "f1 beats f0" in text and "f2 beats f0" in text

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
