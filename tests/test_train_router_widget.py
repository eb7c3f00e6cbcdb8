"""The Train step's *Train router* button: f2 and the policy bank from the accepted regions, in a worker;
the routing overlay's lambda control then has the session's own policies."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from learners.unet import UNetConfig  # noqa: E402
from napari_paser.gui import hub as _widgets_hub  # noqa: E402
from napari_paser.gui import train_step as _train_step  # noqa: E402
from napari_paser.session.router import ROUTED_RETRAIN, ROUTER_SHARES  # noqa: E402
from test_widgets import scan_widget, start_session  # noqa: E402

TINY = UNetConfig(base=4, depth=2)


def test_train_router_button_trains_the_bank_in_a_worker(make_napari_viewer, tmp_path, qtbot, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(_widgets_hub, "show_error", errors.append)
    notes: list[str] = []
    monkeypatch.setattr(_train_step, "info", notes.append)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    viewer, widget = scan_widget(make_napari_viewer, rng=rng)
    w = widget.steps["Session"]
    start_session(widget, tmp_path, region=16)  # in a worker: wait for the session and its layers
    qtbot.waitUntil(lambda: not widget.hub.busy and widget.hub.session is not None, timeout=120_000)
    qtbot.wait(200)
    s = widget.hub.require()
    s.new_models({"f0": TINY})
    train = widget.steps["Train"]
    train.router_button.click()  # no f1/f2 yet: one clear notification, nothing runs
    assert errors and "f1" in errors[-1] and "'New models' in the Session step" in errors[-1] and not widget.hub.busy
    assert all(box.isChecked() for box in w.scratch.values())  # New models starts f0, f1 and f2 by default
    widget.steps["Maps"].route_button.click()  # no policies yet: the GUI action that makes them, not a CLI command
    assert "press 'Train router' in the Train step" in errors[-1] and "paser policy" not in errors[-1]
    volume = widget.steps["Volume"]
    volume.what.setCurrentText("route")
    volume.button.click()  # Segment volume, routed, from the session: the same GUI action named, nothing runs
    assert "press 'Train router' in the Train step" in errors[-1] and not widget.hub.busy
    s.new_models({"f1": TINY, "f2": UNetConfig(base=6, depth=2)})
    for rid in range(6):
        r = s.region(rid)
        s.accept(rid, rng.integers(1, 4, (r.h, r.w)).astype(np.uint8))
    assert train.router_epochs.value() == ROUTED_RETRAIN.epochs
    train.router_epochs.setValue(1)
    files = {"f1": s.state.models["f1"]["file"]}
    with qtbot.waitSignal(widget.hub.models_changed, timeout=120_000):
        train.router_button.click()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=120_000)
    assert train.last_result is not None and not train.last_result.cancelled
    assert s.policy_lambdas == list(ROUTER_SHARES) and s.bank.knob == "share"
    ready = [n for n in notes if n.startswith("routing ready in")]  # the first bank, before f2 retrained
    assert ready and notes.index(ready[0]) < len(notes) - 1
    default, verdict = s.bank.default_lambda, s.router_verdict  # the held-out table's choice, said in the step
    assert verdict and verdict in notes[-1] and verdict in train.job.message.text()
    maps = widget.steps["Maps"]
    qtbot.waitUntil(lambda: maps.lam.isEnabled(), timeout=10_000)
    assert maps.lam_label.text() == "share to f2" and maps.lam.value() == pytest.approx(default)
    assert "most uncertain patches" in maps.lam_note.text() and "0.05" in maps.lam_note.text()
    assert verdict in maps.lam_note.text()
    maps.route_button.click()
    qtbot.waitUntil(lambda: f"policy share = {default:g}" in maps.readout.text(), timeout=60_000)
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=60_000)
    assert train.last_result.retrain is not None  # f2 retrained first; f1, which a ranked bank never uses, not
    assert set(train.last_result.retrain.results) == {"f2"} and s.state.models["f1"]["file"] == files["f1"]
    train.router_retrain.setChecked(False)  # only the policies again: f1 and f2 kept as they are
    files = {r: s.state.models[r]["file"] for r in ("f1", "f2")}
    with qtbot.waitSignal(widget.hub.models_changed, timeout=120_000):
        train.router_button.click()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=120_000)
    assert not train.last_result.cancelled and train.last_result.retrain is None
    assert {r: s.state.models[r]["file"] for r in ("f1", "f2")} == files
    assert "older f0" not in maps.lam_note.text()
    with qtbot.waitSignal(widget.hub.models_changed, timeout=120_000):
        train.train_button.click()  # f0 retrains: the shares' thresholds read the previous f0's entropy
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=120_000)
    assert s.bank_stale and "older f0" in maps.lam_note.text()
    with qtbot.waitSignal(widget.hub.models_changed, timeout=120_000):
        maps.volume_button.click()  # the maps of every slice: then the bank is made again from them
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=120_000)
    assert not s.bank_stale and "older f0" not in maps.lam_note.text() and s.policy_lambdas == list(ROUTER_SHARES)
    assert len(errors) == 3
