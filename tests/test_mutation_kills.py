"""Tests that catch the deliberate bugs a mutation check of the suite let through (issue 14).

Each test names the mutant it kills; each was run against its mutant applied by hand and failed.
"""

import copy
import json

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from learners.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from learners.errors import CheckpointError, InputError
from learners.routing.reward import PatchTable, best_actions, image_rewards, patch_confusions, rewards
from learners.grid import Grid
from learners.training import IGNORE_INDEX, TrainConfig, class_weights, iter_training
from learners.uncertainty import uncertainty_maps
from learners.unet import UNet, UNetConfig
from napari_paser.data.dataset import normalise, robust_range
from sampling.regions import RegionPool
from sampling.taudis import TaudisSampler

TINY = UNetConfig(base=4, depth=2, n_classes=3)


# ----------------------------------------------------------------------------- TAUDIS oversampling


def test_taudis_covers_the_top_alpha_k_not_the_top_k():
    """Mutant: TAUDIS builds its graph on the top k regions instead of the top alpha*k.

    12 regions in a row, most uncertain first. Regions 0 and 1 are unlike anything; regions
    2-5 are one cluster. With k = 2 and alpha = 3 the cover runs on regions 0-5 and takes the
    cluster's most uncertain member (it covers 4) and then region 0; on the top 2 alone it
    would take 0 and 1.
    """
    pool = RegionPool((1, 8, 96), 8)
    bald = np.repeat(np.arange(12, 0, -1, dtype=np.float32), 8)[None, None].repeat(8, 1)  # (1, 8, 96)
    cluster = np.array([0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3])
    emb = np.eye(4)[cluster] + 0.01 * np.random.default_rng(0).standard_normal((12, 4))
    sampler = TaudisSampler(alpha=3.0, beta=1.0, sigma=0.9)
    sel = sampler.select(pool.ids, 2, np.random.default_rng(0), pool=pool, bald=bald, embeddings=emb)
    assert sorted(sel.ids.tolist()) == [0, 2]


# ----------------------------------------------------------------------------- empty patches in the reward


def _table_with_an_empty_patch():
    grid = Grid.divide(8, 8, 2, 2)
    target = np.zeros((1, 8, 8), np.int64)
    target[0, 4:, 4:] = IGNORE_INDEX  # patch 3 has no labeled pixel: its IoU is undefined
    good = target.copy()
    bad = (target + 1) % 3
    conf = np.stack([patch_confusions(p, target, grid, 3) for p in (bad, good)], axis=2)  # f0 wrong, f1 right
    return PatchTable(conf)


def test_empty_patches_give_zero_gain_not_nan_in_reward_and_oracle():
    """Mutant: the reward and the oracle no longer zero the IoU of an empty patch (NaN spreads)."""
    table = _table_with_an_empty_patch()
    assert np.isnan(table.iou[0, 3]).all() and np.isfinite(table.iou[0, :3]).all()
    costs = torch.tensor([0.1, 0.9])
    ious = torch.as_tensor(table.iou)
    for lam in (0.0, 0.3):
        r = rewards(torch.ones(1, 4, dtype=torch.long), ious, costs, lam)
        assert torch.isfinite(r).all()
        assert r[0, 3].item() == pytest.approx(-lam * 0.9)  # no gain, only the cost
        assert torch.isfinite(image_rewards(torch.ones(1, 4, dtype=torch.long), ious, costs, lam)).all()
    oracle = best_actions(table.iou, costs.numpy(), 0.3)
    assert oracle[0, :3].tolist() == [1, 1, 1]  # f1 is right where f0 is wrong
    assert oracle[0, 3].item() == 0  # an empty patch: nothing to gain, so the cheapest model


# ----------------------------------------------------------------------------- `paser predict` normalises


def test_predict_normalises_the_volume_before_the_model(tmp_path):
    """Mutant: `paser predict` feeds the raw volume to f0 (shapes and ranges stay plausible)."""
    from napari_paser.cli import main

    torch.manual_seed(0)
    model = UNet(TINY).eval()
    save_checkpoint(tmp_path / "run" / "f0.pt", model)
    rng = np.random.default_rng(0)
    raw = (20000 + 8000 * rng.random((2, 32, 32))).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", raw)
    assert main(["predict", "--run", str(tmp_path / "run"), "--image", str(tmp_path / "stack.tif"),
                 "--out", str(tmp_path / "p"), "--samples", "2", "--quiet"]) == 0
    entropy = tifffile.imread(tmp_path / "p" / "entropy.tif")
    volume = normalise(raw, *robust_range(raw))
    expected = np.stack([uncertainty_maps(model, volume[z], samples=2, seed=z).entropy for z in range(2)])
    unnormalised = np.stack([uncertainty_maps(model, raw[z].astype(np.float32), samples=2, seed=z).entropy
                             for z in range(2)])
    assert not np.allclose(expected, unnormalised, atol=1e-3)  # the test can tell the two apart
    np.testing.assert_allclose(entropy, expected, atol=1e-5)


# ----------------------------------------------------------------------------- class weights reach the loss


def test_training_loss_is_weighted_by_class_frequency():
    """Mutant: the training loss ignores the class weights (only `class_weights()` was tested)."""
    rng = np.random.default_rng(0)
    images = rng.random((4, 16, 16)).astype(np.float32)
    labels = np.zeros((4, 16, 16), np.uint8)
    labels[:, :2] = 1  # imbalanced: class 1 is rare, class 2 rarer
    labels[:, 2, :3] = 2
    torch.manual_seed(0)
    model = UNet(UNetConfig(base=4, depth=2, n_classes=3, dropout=0.0))
    start = copy.deepcopy(model).train()
    cfg = TrainConfig(epochs=1, batch_size=4, augment=False, class_weighted=True)
    first = next(r for r in iter_training(model, images, labels, None, None, cfg) if hasattr(r, "loss"))
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels).long()
    logits = start(x)
    w = class_weights(labels, 3)
    weighted, plain = F.cross_entropy(logits, y, weight=w).item(), F.cross_entropy(logits, y).item()
    assert abs(weighted - plain) > 1e-3  # the weights matter on this data
    assert first.loss == pytest.approx(weighted, rel=1e-4)


# ----------------------------------------------------------------------------- files from a newer version


def test_checkpoint_from_a_newer_version_is_refused(tmp_path):
    """Mutant: the checkpoint loader no longer refuses a newer format version."""
    model = UNet(TINY)
    payload = {"format": FORMAT, "version": VERSION + 1, "config": model.config.to_dict(),
               "state_dict": model.state_dict(), "meta": {}}
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade napari-paser"):
        load_checkpoint(tmp_path / "new.pt")
    payload["version"] = VERSION
    torch.save(payload, tmp_path / "same.pt")
    assert load_checkpoint(tmp_path / "same.pt").config == model.config  # the refusal is about the version only


def test_session_from_a_newer_version_is_refused(tmp_path):
    """The same refusal in the session store."""
    from napari_paser.session import Session

    s = Session.create(tmp_path / "s", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    path = s.folder / "session.json"
    data = json.loads(path.read_text())
    data["version"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="upgrade napari-paser"):
        Session.open(s.folder)


def test_export_from_a_newer_version_is_refused(tmp_path):
    """The same refusal in the export reader."""
    from napari_paser.data.export import read_export
    from napari_paser.session import Session

    s = Session.create(tmp_path / "s", np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32), region_size=16)
    s.export(tmp_path / "e", full_volume=True)
    read_export(tmp_path / "e")  # reads at the current version
    path = tmp_path / "e" / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="upgrade napari-paser"):
        read_export(tmp_path / "e")
