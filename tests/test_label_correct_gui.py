"""The Label step's correcting workflow under Xvfb: Next shows the model's guess in its own layer,
Accept takes the corrected guess (effort counted), Shift-U accepts it unchanged, Revert restores it,
and the last accepted region's place is proposed on the neighbouring slices, pre-filled."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_paser.gui import hub as _hub  # noqa: E402
from napari_paser.gui.hub import LABELS, REGIONS, SHORTCUTS  # noqa: E402
from napari_paser.gui.io import REGION_COLORS  # noqa: E402
from napari_paser.gui.label_step import SUGGESTION  # noqa: E402
from napari_paser.gui.layers import HIGHLIGHT  # noqa: E402
from test_widgets import idle, scan_widget, start  # noqa: E402


@pytest.fixture
def label(make_napari_viewer, tmp_path, monkeypatch):
    errors: list[str] = []
    monkeypatch.setattr(_hub, "show_error", errors.append)
    monkeypatch.chdir(tmp_path)
    viewer, widget = scan_widget(make_napari_viewer, (4, 64, 64))
    s = start(widget, tmp_path)
    step = widget.steps["Label"]
    yield viewer, widget, step, s
    assert errors == []


def key(viewer, action: str):
    from napari.utils.key_bindings import coerce_keybinding

    return viewer.keymap[coerce_keybinding(dict((a, k) for k, a, _ in SHORTCUTS)[action])]


def propose(widget, sampler: str, k: int):
    """Press Next in the Label step with `sampler` and `k` chosen; return the region it shows once idle."""
    step = widget.steps["Label"]
    step.sampler.setCurrentText(sampler)
    step.k.setValue(k)
    step.propose()
    idle(widget.hub)
    return step.current


def test_next_shows_the_guess_accept_counts_corrections(label):
    viewer, widget, step, s = label
    propose(widget, "entropy", 4)
    assert set(s.fresh_slices()) == {0, 1, 2, 3}  # spread: every slice mapped before proposing
    assert len({p.z for p in s.proposals}) >= 2  # at most one per slice here (k=4 over 4 slices)
    prop = step.current
    assert "suggestion: f0" in step.where.text()  # no routing bank: f0's guess
    layer = viewer.layers[SUGGESTION]
    assert layer.visible and viewer.layers.selection.active is layer and layer.mode == "paint"
    assert np.array_equal(np.asarray(layer.data)[0], s.suggestion(prop.region_id))
    assert tuple(layer.translate) == (prop.z, prop.y0, prop.x0)
    assert not np.asarray(s.labels[:]).any()  # the guess is not a label
    # correct 10 pixels with the "brush", accept
    data = np.asarray(layer.data).copy()
    data[0, 0, :10] = 1 if data[0, 0, 0] != 1 else 2
    layer.data = data
    step.accept()
    rec = s.accepted[-1]
    assert rec.region_id == prop.region_id and rec.changed_px == 10 and rec.strokes == 1 and rec.seconds >= 0
    assert "corrected 10 px" in step.where.text()
    # the next proposal is shown; revert undoes edits
    nxt = step.current
    assert nxt.region_id != prop.region_id and viewer.layers[SUGGESTION].metadata["region_id"] == nxt.region_id
    layer = viewer.layers[SUGGESTION]
    layer.data = np.full_like(np.asarray(layer.data), 3)
    step.revert_button.click()
    assert np.array_equal(np.asarray(layer.data)[0], s.suggestion(nxt.region_id))
    key(viewer, "accept_unchanged")(viewer)
    assert s.accepted[-1].region_id == nxt.region_id and s.accepted[-1].changed_px == 0
    # regions layer: accepted unnumbered, in a colour apart from the entropy contours
    regions = viewer.layers[REGIONS]
    feats = regions.features
    assert all(n == "" for n, st in zip(feats["number"], feats["status"]) if st == "accepted")
    assert REGION_COLORS["accepted"].lower() not in (HIGHLIGHT.lower(), "#00e5ff")


def test_neighbouring_slices_are_proposed_prefilled(label):
    viewer, widget, step, s = label
    first = propose(widget, "random", 1)
    step.unchanged_button.click()
    step.depth.setValue(1)
    step.neighbours_button.click()
    idle(widget.hub)
    cur = step.current
    assert cur.sampler == "neighbours" and abs(cur.z - first.z) == 1 and (cur.y0, cur.x0) == (first.y0, first.x0)
    layer = viewer.layers[SUGGESTION]
    assert layer.visible and tuple(layer.translate) == (cur.z, cur.y0, cur.x0)
    assert viewer.dims.current_step[0] == cur.z


def test_prefill_off_paints_on_the_canvas(label):
    viewer, widget, step, s = label
    step.prefill.setChecked(False)
    propose(widget, "random", 1)
    assert viewer.layers.selection.active is viewer.layers[LABELS]
    assert SUGGESTION not in viewer.layers or not viewer.layers[SUGGESTION].visible


def test_learning_curve_can_use_corrected_pixels_as_x_axis(qtbot):
    from napari_paser.gui.train_step import CurvePlot
    from napari_paser.session.store import CurvePoint

    curve = [CurvePoint(5, 4, 1, 0.6, 1, 1, "t1"), CurvePoint(10, 8, 2, 0.7, 2, 1, "t2")]
    plot = CurvePlot()
    qtbot.addWidget(plot)
    plot.plot(curve, ("a", "b"), effort=[120, 300])
    assert list(plot.axes.lines[0].get_xdata()) == [120, 300]
    assert plot.axes.get_xlabel() == "pixels corrected or painted"
    plot.plot(curve, ("a", "b"))
    assert list(plot.axes.lines[0].get_xdata()) == [5, 10] and plot.axes.get_xlabel() == "labeled regions"


def test_the_curve_title_says_what_the_held_out_figure_rests_on(qtbot):
    from napari_paser.gui.train_step import CurvePlot
    from napari_paser.session.labeling import held_out_advice
    from napari_paser.session.store import CurvePoint

    plot = CurvePlot()
    qtbot.addWidget(plot)
    curve = [CurvePoint(10, 8, 2, 0.95, 1, 1, "t1")]
    plot.plot(curve, ("a", "b"), held=(2, 1, held_out_advice(2, 1, 250)))
    title = plot.axes.title
    assert title.get_text() == "held out: 2 regions from 1 slice\nlabel more slices for a figure you can trust"
    assert title.get_color() == "#d62728"
    plot.plot(curve, ("a", "b"), held=(6, 4, held_out_advice(6, 4, 250)))
    assert plot.axes.title.get_text() == "held out: 6 regions from 4 slices"


def test_the_retrain_message_says_what_the_held_out_figure_rests_on(label, monkeypatch):
    from types import SimpleNamespace

    from napari_paser.gui import train_step

    viewer, widget, step, s = label
    monkeypatch.setattr(train_step, "info", lambda message: None)
    ids = [int(r) for z in (0, 1) for r in s.pool.slice_ids(z)][:5]
    for i, rid in enumerate(ids):  # every 5th accepted is held out
        s.accept(rid, np.full((s.region(rid).h, s.region(rid).w), 1 + i % 3, np.uint8))
    assert s.held_out_basis() == (1, 1)
    train = widget.steps["Train"]
    point = SimpleNamespace(n_train=4, n_val=1, val_miou=0.95, kept_previous=False)
    train.last_result, train.last_report = SimpleNamespace(cancelled=False, curve_point=point, message=""), None
    train._done()
    idle(widget.hub)
    assert ("held-out mIoU 0.950 on 1 region from 1 slice: label more slices for a figure you can trust"
            in train.job.message.text())


def test_sampler_ranks_the_neighbouring_places(label):
    viewer, widget, step, s = label
    first = propose(widget, "random", 1)
    step.unchanged_button.click()
    step.sampler.setCurrentText("entropy")
    step.k.setValue(2)
    step.depth.setValue(1)
    step.near_button.click()
    idle(widget.hub)
    pending = s.pending_proposals
    assert len(pending) >= 1 and all(p.sampler == "entropy" for p in pending)
    assert all(abs(p.z - first.z) == 1 and (p.y0, p.x0) == (first.y0, first.x0) for p in pending)
    assert step.current.region_id == pending[0].region_id and viewer.layers[SUGGESTION].visible


def test_the_status_says_a_suggestion_is_routed(label):
    import torch

    from learners.unet import UNet, UNetConfig
    from napari_paser.session.models import bank_role
    from test_routed_suggestions import _fixed_policy

    viewer, widget, step, s = label
    torch.manual_seed(1)
    s.install_models({"f1": UNet(UNetConfig(n_classes=s.n_classes, base=4, depth=1)).eval(),
                      "f2": UNet(UNetConfig(n_classes=s.n_classes, base=6, depth=2)).eval(),
                      bank_role(0.5): _fixed_policy(2)}, source="test")
    prop = propose(widget, "random", 2)
    assert s.suggestion_source(prop.region_id).startswith("routed (f2 on")
    assert "suggestion: routed (f2 on" in step.where.text()
    assert np.array_equal(np.asarray(viewer.layers[SUGGESTION].data)[0], s.suggestion(prop.region_id))


def test_a_proposal_without_a_stored_guess_gets_it_from_a_worker(label, monkeypatch):
    """Proposed without pre-fill (or before models), a region's guess is made in a worker when Next shows it,
    never on the GUI thread, and appears once made; the region is not a label until accepted."""
    import threading
    import time

    from qtpy.QtWidgets import QApplication

    viewer, widget, step, s = label
    s.propose(2, "random", suggest=False)
    assert all(s.stored_suggestion(p.region_id) is None for p in s.proposals)
    threads = []
    made = s.suggestions.suggestion
    monkeypatch.setattr(s.suggestions, "suggestion", lambda rid: threads.append(threading.current_thread()) or made(rid))
    step.next()
    prop = step.current
    assert SUGGESTION not in viewer.layers or not viewer.layers[SUGGESTION].visible  # not yet: nothing blocks
    t0 = time.monotonic()
    while (widget.hub.previewing or not threads) and time.monotonic() - t0 < 60:
        QApplication.processEvents()
        time.sleep(0.002)
    QApplication.processEvents()
    assert threads and all(t is not threading.main_thread() for t in threads)
    layer = viewer.layers[SUGGESTION]
    assert layer.visible and layer.metadata["region_id"] == prop.region_id
    assert np.array_equal(np.asarray(layer.data)[0], s.stored_suggestion(prop.region_id))
    assert "pre-filled by the model" in step.where.text()
    assert not np.asarray(s.labels[:]).any()
