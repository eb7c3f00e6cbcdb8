"""`make demo`'s GUI walkthrough end to end under Xvfb, with tiny models instead of the trained demo run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

import torch  # noqa: E402
from imageio.v3 import imread  # noqa: E402

from learners.checkpoint import save_checkpoint  # noqa: E402
from learners.routing.policy import PolicyConfig, PolicyNet  # noqa: E402
from learners.routing.bank import PolicyBank, save_bank  # noqa: E402
from learners.unet import UNet, UNetConfig  # noqa: E402
from napari_paser.gui import demo as demo_gui  # noqa: E402


def tiny_run(folder):
    """f0/f1/f2 of a few thousand parameters and a two-policy bank: lambda 0 sends every patch to f2."""
    torch.manual_seed(0)
    for role, base in (("f0", 4), ("f1", 4), ("f2", 6)):
        save_checkpoint(folder / f"{role}.pt", UNet(UNetConfig(n_classes=3, base=base, depth=2, dropout=0.2)))
    bank = {}
    for lam, logits in ((0.0, [0.0, 0.0, 5.0]), (1.0, [5.0, 0.0, 0.0])):
        bank[lam] = PolicyNet(PolicyConfig(n_classes=3, n_models=3, grid=(4, 4), width=4))
        bank[lam].head.bias.data[:] = torch.tensor(logits)
    save_bank(folder, PolicyBank(bank))
    return folder


def _recording_shot(shot, routed: list):
    """Steps.shot that also records, per screenshot name, the model of each patch on the routing layer."""

    def recording(self, name: str):
        if name.startswith("routing"):
            routed.append((name, list(self.viewer.layers["paser routing"].features["model"])))
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
    paths = demo_gui.run_steps(viewer, tiny_run(tmp_path / "run"), tmp_path / "gui")
    assert [p.name for p in paths] == ["01-session.png", "02-entropy.png", "03-routing.png", "04-routing-lambda1.png",
                                       "05-proposals.png", "06-accepted.png", "07-retrained.png", "08-export.png"]
    shots = {p.stem[3:]: imread(p) for p in paths}
    assert all(img.ndim == 3 and img[..., :3].std() > 5 for img in shots.values())
    assert np.abs(shots["routing"].astype(int) - shots["routing-lambda1"].astype(int)).mean() > 0.5  # re-routed
    by_shot = dict(routed)  # what the routing layer held at each screenshot: lambda 0 all f2, lambda 1 all f0
    assert set(by_shot["routing"]) == {"f2"} and set(by_shot["routing-lambda1"]) == {"f0"}
    image = viewer.layers[demo_gui.IMAGE_LAYER]
    assert image.metadata["slices"] == sorted(image.metadata["slices"]) and len(image.data) == 8  # the test split
    session = Session.open(tmp_path / "gui-session")
    assert len(session.accepted) == 2 * demo_gui.ACCEPT and session.policy_lambdas == [0.0, 1.0]
    points = [p for p in session.curve if p.val_miou is not None]
    assert len(points) == 2 and [p.n_val for p in points] == [1, 2]  # a learning curve of two held-out points
    manifest = read_export(tmp_path / "gui-export")
    assert len(manifest.regions) == 2 * demo_gui.ACCEPT
