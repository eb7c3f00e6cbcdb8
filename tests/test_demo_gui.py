"""`make demo`'s GUI walkthrough end to end under Xvfb, with the shipped f0, tiny f1/f2 and hand-set policies
instead of the trained demo run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("napari")

import torch  # noqa: E402
from imageio.v3 import imread  # noqa: E402

from learners.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from learners.routing.policy import PolicyConfig, PolicyNet  # noqa: E402
from learners.routing.bank import PolicyBank, save_bank  # noqa: E402
from learners.unet import UNet, UNetConfig  # noqa: E402
from napari_paser.gui import demo as demo_gui  # noqa: E402


def _active_share_policy() -> PolicyNet:
    """A hand-set policy that sends a patch to f1 where f0 calls more than half of it "active" (class 2)
    and keeps it on f0 elsewhere: each layer passes "active here" / "not active here" at its centre tap
    (the channel norm maps either to the same positive value), the pooling gives a patch's share of each."""
    policy = PolicyNet(PolicyConfig(n_classes=3, n_models=3, grid=(4, 4), width=4, halo=4))
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()
        for norm in (m for m in policy.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.fill_(1.0)
        convs = [m for m in policy.features if isinstance(m, torch.nn.Conv2d)]
        convs[0].weight[0, 2, 1, 1], convs[0].weight[1, 2, 1, 1], convs[0].bias[1] = 1.0, -1.0, 1.0
        for conv in convs[1:]:
            conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
        policy.head.weight[1, 0, 0, 0], policy.head.weight[1, 1, 0, 0] = 20.0, -20.0  # f1 where active > half
        policy.head.bias[2] = -20.0  # never f2
    return policy


def tiny_run(folder, data):
    """The shipped f0 (a real tiny model: its "active" share differs from patch to patch), stand-in f1/f2
    of a few thousand parameters, and a three-policy bank: lambda 0 sends every patch to f2, 0.2 routes
    by f0's active share (a mix), 1 keeps every patch on f0; bank.json scores them on the held-back slices."""
    from napari_paser.jobs.demo import held_back
    from napari_paser.jobs.policy import evaluate_bank
    from napari_paser.weights import weights_path

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    shutil.copy(weights_path("f0"), folder / "f0.pt")
    for role, base in (("f1", 4), ("f2", 6)):
        save_checkpoint(folder / f"{role}.pt", UNet(UNetConfig(n_classes=3, base=base, depth=2, dropout=0.2)))
    bank = {0.2: _active_share_policy()}
    for lam, logits in ((0.0, [0.0, 0.0, 5.0]), (1.0, [5.0, 0.0, 0.0])):
        bank[lam] = PolicyNet(PolicyConfig(n_classes=3, n_models=3, grid=(4, 4), width=4, halo=4))
        bank[lam].head.bias.data[:] = torch.tensor(logits)
    save_bank(folder, PolicyBank(bank))
    images, labels, _ = held_back(data)
    models = [load_checkpoint(folder / f"f{k}.pt").model.eval() for k in range(3)]
    with torch.no_grad():
        summary = evaluate_bank(PolicyBank(bank), models, images, labels, samples=2, seed=0)
    (folder / "policies" / "bank.json").write_text(json.dumps(summary))
    return folder


def _recording_shot(shot, routed: list):
    """Steps.shot that also records, per screenshot name, the model of each patch on the routing layer."""

    def recording(self, name: str):
        if name.startswith("routing"):
            layer = self.viewer.layers["paser routing"]  # one pixel per patch: model k as label k + 1
            names = dict(zip(layer.features["index"], layer.features["model"]))
            routed.append((name, [names[v] for v in np.asarray(layer.data).ravel() if v]))
        return shot(self, name)

    return recording


def test_walkthrough_does_every_step_and_saves_a_screenshot_of_each(make_napari_viewer, tmp_path, monkeypatch):
    from qtpy.QtCore import Qt

    from napari_paser.data.export import read_export
    from napari_paser.session.core import Session

    monkeypatch.setattr(demo_gui, "RETRAIN_EPOCHS", 1)
    monkeypatch.setattr(demo_gui, "ROUNDS", 2)
    viewer = make_napari_viewer()
    window = viewer.window._qt_window  # screenshot code: draw without a screen
    window.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen)
    window.resize(1200, 800)
    window.show()
    routed = []
    monkeypatch.setattr(demo_gui.Steps, "shot", _recording_shot(demo_gui.Steps.shot, routed))
    from napari_paser.jobs.demo import embedded_dataset

    run = tiny_run(tmp_path / "run", embedded_dataset(tmp_path / "data"))
    assert demo_gui.opening_lambdas(run, [0.0, 0.2, 1.0]) in ((0.2, 0.0), (0.2, 1.0))  # the mixed member first
    paths = demo_gui.run_steps(viewer, run, tmp_path / "gui")
    assert [p.name for p in paths] == ["01-session.png", "02-entropy.png", "03-routing.png",
                                       "04-routing-other-lambda.png", "05-proposals.png", "06-accepted.png",
                                       "07-retrained.png", "08-export.png"]
    shots = {p.stem[3:]: imread(p) for p in paths}
    assert all(img.ndim == 3 and img[..., :3].std() > 5 for img in shots.values())
    assert np.abs(shots["routing"].astype(int) - shots["routing-other-lambda"].astype(int)).mean() > 0.5  # re-routed
    by_shot = {name: np.array(models) for name, models in routed}  # the routing layer's model per patch at each shot
    opening, other = by_shot["routing"], by_shot["routing-other-lambda"]
    shares = {m: np.mean(opening == m) for m in ("f0", "f1", "f2")}
    assert sum(share >= 0.1 for share in shares.values()) >= 2, shares  # a mix where the walkthrough opens
    assert np.mean(opening != other) >= 0.1 and len(set(other)) == 1  # the other lambda: one model everywhere
    image = viewer.layers[demo_gui.IMAGE_LAYER]
    assert image.metadata["slices"] == sorted(image.metadata["slices"]) and len(image.data) == 8  # the test split
    session = Session.open(tmp_path / "gui-session")
    assert len(session.accepted) == 2 * demo_gui.ACCEPT and session.policy_lambdas == [0.0, 0.2, 1.0]
    points = [p for p in session.curve if p.val_miou is not None]
    assert len(points) == 2 and [p.n_val for p in points] == [1, 2]  # a learning curve of two held-out points
    manifest = read_export(tmp_path / "gui-export")
    assert len(manifest.regions) == 2 * demo_gui.ACCEPT


def test_opening_lambdas_are_the_most_mixed_member_and_the_one_most_unlike_it(tmp_path):
    rows = {0.0: (0.2, 0.8, 0.0), 0.05: (0.4, 0.6, 0.0), 0.1: (1.0, 0.0, 0.0), 1.0: (1.0, 0.0, 0.0)}
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "bank.json").write_text(json.dumps({"policies": {
        f"{lam:.3f}": {"patch_share": dict(zip(("f0", "f1", "f2"), shares))} for lam, shares in rows.items()}}))
    assert demo_gui.opening_lambdas(tmp_path, sorted(rows)) == (0.05, 1.0)  # 0.1 and 1 tie: the farther one
    assert demo_gui.opening_lambdas(tmp_path / "elsewhere", [0.0, 0.3, 1.0]) == (0.0, 1.0)  # no bank.json
