"""The Train step's *Train router* button: f1, f2 and the policy bank from the accepted regions, in a worker;
the routing overlay's lambda control then has the session's own policies."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from learners.unet import UNetConfig  # noqa: E402
from napari_paser.gui import hub as _widgets_hub  # noqa: E402
from napari_paser.gui.widgets import PaserWidget  # noqa: E402
from napari_paser.session.router_jobs import ROUTER_LAMBDAS  # noqa: E402

TINY = UNetConfig(base=4, depth=2)


def test_train_router_button_trains_the_bank_in_a_worker(make_napari_viewer, tmp_path, qtbot, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(_widgets_hub, "show_error", errors.append)
    monkeypatch.chdir(tmp_path)
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image((rng.random((2, 64, 64)) * 1000).astype(np.uint16), name="scan")
    widget = PaserWidget(viewer)
    w = widget.steps["Session"]
    w.layer_box.setCurrentText("scan")
    w.region.setValue(16)
    w.folder.setText(str(tmp_path / "session"))
    w.start()  # in a worker: wait for the session and its layers
    qtbot.waitUntil(lambda: not widget.hub.busy and widget.hub.session is not None, timeout=120_000)
    qtbot.wait(200)
    s = widget.hub.require()
    s.new_models({"f0": TINY})
    train = widget.steps["Train"]
    train.router_button.click()  # no f1/f2 yet: one clear notification, nothing runs
    assert errors and "f1" in errors[-1] and not widget.hub.busy
    s.new_models({"f1": TINY, "f2": UNetConfig(base=6, depth=2)})
    for rid in range(6):
        r = s.region(rid)
        s.accept(rid, rng.integers(1, 4, (r.h, r.w)).astype(np.uint8))
    train.epochs.setValue(1)
    with qtbot.waitSignal(widget.hub.models_changed, timeout=120_000):
        train.router_button.click()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=120_000)
    assert train.last_result is not None and not train.last_result.cancelled
    assert s.policy_lambdas == list(ROUTER_LAMBDAS)
    assert "held_out_choice" in train.last_result.summary  # what the done message reports
    assert len(errors) == 1
