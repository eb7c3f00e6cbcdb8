"""The docked widgets under Xvfb (pytest-xvfb): they load from the manifest, wire layers to the
Session, run and cancel the background retrain, and draw a non-blank routing overlay.

Tiny on purpose (the CPU is shared): UNets of base 4, depth 2; 2 or 16 slices of 64-128 px.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

import torch  # noqa: E402
from learners.checkpoint import save_checkpoint  # noqa: E402
from learners.routing.policy import PolicyConfig, PolicyNet, save_policy  # noqa: E402
from learners.unet import UNet, UNetConfig  # noqa: E402
from napari_paser.gui import hub as _widgets_hub  # noqa: E402
from napari_paser.gui.widgets import PaserWidget  # noqa: E402
from napari_paser.gui.hub import ABOVE, ENTROPY, IMAGE, LABELS, PRED, REGIONS, ROUTED, ROUTING, hub_for  # noqa: E402
from napari_paser.gui.io import REGION_COLORS  # noqa: E402

PLUGIN = "napari-paser"
TINY = UNetConfig(base=4, depth=2)
WAIT_MS = 60_000


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages the widgets sent as error notifications."""
    seen: list[str] = []
    monkeypatch.setattr(_widgets_hub, "show_error", seen.append)
    return seen


@pytest.fixture
def gui(make_napari_viewer, tmp_path, monkeypatch):
    """A viewer with a tiny 2x64x64 image and the all-steps widget (not docked)."""
    monkeypatch.chdir(tmp_path)
    return scan_widget(make_napari_viewer)


def scan_widget(make_napari_viewer, shape: tuple[int, ...] = (2, 64, 64), rng=None):
    """(viewer, widget): a new viewer with a random uint16 image named "scan" of `shape` (drawn from `rng`,
    seed 0 by default) and the all-steps widget on it (not docked)."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0) if rng is None else rng
    viewer.add_image((rng.random(shape) * 1000).astype(np.uint16), name="scan")
    return viewer, PaserWidget(viewer)


def idle(hub, timeout: float = WAIT_MS / 1000) -> None:
    """Process Qt events until the hub's job (and the GUI steps after it) are done."""
    import time

    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while hub.busy and time.monotonic() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.002)
    QApplication.processEvents()
    assert not hub.busy, "the background job did not finish"


def start_session(widget: PaserWidget, tmp_path, region: int | None = None) -> None:
    """Fill the Session step for the "scan" layer (a folder under `tmp_path`, regions of side `region` or
    the default) and press Start; the session opens in a worker, so the caller waits for it."""
    w = widget.steps["Session"]
    w.layer_box.setCurrentText("scan")
    if region is not None:
        w.region.setValue(region)
    w.folder.setText(str(tmp_path / "session"))
    w.start()


def start(widget: PaserWidget, tmp_path, region: int = 32):
    """The session on the "scan" layer, opened and idle, with a tiny f0."""
    start_session(widget, tmp_path, region)
    idle(widget.hub)
    s = widget.hub.require()
    s.new_models({"f0": TINY})
    widget.hub.models_changed.emit()
    return s


def wait_idle(qtbot, hub, timeout: int = WAIT_MS) -> None:
    qtbot.waitUntil(lambda: not hub.busy, timeout=timeout)


def paint(s, region_id: int, value: int = 1, rows: int | None = None) -> None:
    r = s.region(region_id)
    patch = np.zeros((r.h, r.w), np.uint8)
    patch[: (r.h if rows is None else rows)] = value
    s.labels[(r.z, slice(r.y0, r.y0 + r.h), slice(r.x0, r.x0 + r.w))] = patch


# ----------------------------------------------------------------------------- manifest


@pytest.mark.parametrize("name", ["PaSeR (all steps)", "1 Session and models", "2 Uncertainty and routing",
                                  "3 Propose and label", "4 Training", "5 Export", "6 Segment volume"])
def test_widgets_load_from_the_manifest(make_napari_viewer, name):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    assert widget is not None and dock is not None
    assert hub_for(viewer).session is None


# ----------------------------------------------------------------------------- session and maps


def test_session_on_the_sample_data_adds_layers(make_napari_viewer, tmp_path, qtbot):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_lowres")
    widget = PaserWidget(viewer)
    w = widget.steps["Session"]
    w.layer_box.setCurrentText("synthetic low-res (lowres)")
    w.folder.setText(str(tmp_path / "s"))
    w.start()
    assert widget.hub.busy and not w.start_button.isEnabled()  # created in the background, buttons off meanwhile
    idle(widget.hub)
    assert w.start_button.isEnabled()
    s = widget.hub.require()
    assert s.shape == (16, 128, 128) and s.classes.names == ("pore", "binder", "active")
    assert isinstance(viewer.layers[LABELS], Labels) and viewer.layers[LABELS].data.shape == (16, 128, 128)
    assert isinstance(viewer.layers[PRED], Labels) and isinstance(viewer.layers[ABOVE], Labels)
    assert isinstance(viewer.layers[ENTROPY], Image) and viewer.layers[ENTROPY].data.shape == (16, 128, 128)
    assert "synthetic low-res" in w.status.text()
    s.new_models({"f0": TINY})
    viewer.dims.set_current_step(0, 3)
    widget.steps["Maps"].samples.setValue(2)
    widget.steps["Maps"].compute(volume=False)
    wait_idle(qtbot, widget.hub)
    assert s.fresh_slices() == [3]
    assert widget.hub.model_view and widget.steps["Maps"].view.isChecked()  # asked for maps: shown, translucent
    assert viewer.layers[ENTROPY].visible and np.asarray(viewer.layers[ENTROPY].data[3]).max() > 0
    pred = viewer.layers[PRED].data
    assert set(np.unique(pred[3])) <= {1, 2, 3} and not np.asarray(pred[2]).any()  # 0 where not computed
    widget.steps["Maps"].gamma.setValue(0.1)
    above = np.asarray(viewer.layers[ABOVE].data[3])
    assert above.any() and viewer.layers[ABOVE].visible


def test_bad_input_shows_a_notification(gui, errors, tmp_path):
    viewer, widget = gui
    widget.steps["Maps"].compute()
    assert "no session yet" in errors[-1]
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="colour", rgb=True)
    w = widget.steps["Session"]
    w.layer_box.setCurrentText("colour")
    w.folder.setText(str(tmp_path / "rgb"))
    w.start()
    assert "RGB" in errors[-1]
    viewer.add_image(np.zeros((2, 2, 32, 32), np.float32), name="4d")
    w.layer_box.setCurrentText("4d")
    w.start()
    idle(widget.hub)
    assert "4 dimensions" in errors[-1]
    w.layer_box.setCurrentText("scan")
    w.folder.setText(str(tmp_path / "nomodels"))
    w.start()
    idle(widget.hub)
    widget.steps["Maps"].compute()
    assert "no models yet" in errors[-1]
    w.run_folder.setText(str(tmp_path))
    w.load_models()
    idle(widget.hub)
    assert "holds no f0.pt" in errors[-1]
    start(widget, tmp_path)
    widget.steps["Train"].retrain()
    assert "no training labels" in errors[-1]
    widget.steps["Maps"].route()
    assert "no routing policy" in errors[-1]


def test_user_errors_inside_a_worker_become_notifications(gui, qtbot, errors):
    from napari_paser.errors import PaserInputError

    viewer, widget = gui

    def job(should_stop):
        raise PaserInputError("paint a region first")

    widget.hub.run(job)
    wait_idle(qtbot, widget.hub)
    assert errors == ["paint a region first"]


# ----------------------------------------------------------------------------- propose and accept


def test_propose_next_and_accept(gui, errors, tmp_path):
    viewer, widget = gui
    s = start(widget, tmp_path)
    label = widget.steps["Label"]
    label.prefill.setChecked(False)  # painting from scratch (the pre-filled flow: test_label_correct_gui)
    label.sampler.setCurrentText("random")
    label.k.setValue(3)
    label.propose()
    idle(widget.hub)
    regions = viewer.layers[REGIONS]
    assert len(regions.data) == 3 and list(regions.features["rank"]) == [1, 2, 3]
    assert all(tuple(c) == tuple(REGIONS_RGBA("proposed")) for c in regions.edge_color)
    first = label.current
    assert first.rank == 1 and viewer.dims.current_step[0] == first.z
    assert viewer.layers.selection.active is viewer.layers[LABELS]

    paint(s, first.region_id, 2, rows=4)  # partly painted: asks, and "No" leaves it pending
    label.confirm = lambda message: False
    label.accept()
    assert not s.is_accepted(first.region_id)
    label.confirm = lambda message: "unpainted" in message
    label.accept()
    assert s.is_accepted(first.region_id) and label.current.rank == 2
    regions = viewer.layers[REGIONS]
    status = list(regions.features["status"])
    accepted = status.index("accepted")
    assert tuple(regions.edge_color[accepted]) == tuple(REGIONS_RGBA("accepted"))
    assert tuple(regions.edge_color[accepted]) != tuple(regions.edge_color[status.index("proposed")])

    label.next()
    assert label.current.rank == 3
    other = [rid for rid in range(len(s.pool)) if rid not in {p.region_id for p in s.proposals}][0]
    paint(s, other, 1)
    label.accept_painted()
    idle(widget.hub)
    assert s.is_accepted(other) and s.accepted[-1].sampler == "manual"
    assert not errors


def REGIONS_RGBA(status: str) -> np.ndarray:  # noqa: N802
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(REGION_COLORS[status])[0]


# ----------------------------------------------------------------------------- retrain


def accepted_session(widget, tmp_path, n: int = 2):
    s = start(widget, tmp_path)
    for rid in range(n):
        paint(s, rid, rid % 3 + 1)
        s.accept(rid)
    return s


def test_retrain_runs_and_refreshes(gui, qtbot, tmp_path, errors):
    viewer, widget = gui
    s = accepted_session(widget, tmp_path)
    train = widget.steps["Train"]
    train.epochs.setValue(1)
    version = s.state.model_version
    with qtbot.waitSignal(widget.hub.curve_changed, timeout=WAIT_MS):
        train.retrain()
    wait_idle(qtbot, widget.hub)
    assert not train.last_result.cancelled
    assert s.state.model_version == version + 1 and len(s.curve) == 1
    assert train.job.bar.value() == train.job.bar.maximum()
    assert not errors


def test_the_train_step_shows_and_switches_the_forest_assist(gui, qtbot, tmp_path, errors):
    viewer, widget = gui
    s = accepted_session(widget, tmp_path, n=3)
    train = widget.steps["Train"]
    train.epochs.setValue(1)
    assert train.assist.isChecked() and "until 3 regions" in train.assist_line.text()
    with qtbot.waitSignal(widget.hub.models_changed, timeout=WAIT_MS):
        train.retrain()
    wait_idle(qtbot, widget.hub)
    assert len(s.forest.record["fitted"]) == 3 and train.assist_line.text() == s.forest.summary()
    train.assist.setChecked(False)  # the box's own toggle
    assert not s.forest.enabled and train.assist_line.text() == "forest assist: off"
    assert not errors


def test_retrain_can_be_cancelled_within_a_second(gui, qtbot, tmp_path):
    import time

    viewer, widget = gui
    s = accepted_session(widget, tmp_path)
    train = widget.steps["Train"]
    train.epochs.setValue(1000)
    version = s.state.model_version
    train.retrain()
    assert widget.hub.busy and train.job.cancel.isEnabled()
    qtbot.waitUntil(lambda: train.job.bar.value() > 0, timeout=WAIT_MS)
    t0 = time.perf_counter()
    train.job.cancel.click()
    wait_idle(qtbot, widget.hub, timeout=5_000)
    assert time.perf_counter() - t0 < 1.5  # a second plus slack for the shared CPU
    assert train.last_result is not None and train.last_result.cancelled
    assert s.state.model_version == version and "cancelled" in train.job.message.text()
    assert not train.job.cancel.isEnabled()


# ----------------------------------------------------------------------------- routing overlay, export


def screenshot(viewer) -> np.ndarray:
    """A real screenshot of a `show=False` viewer: show the window off screen first (test-only private API)."""
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    window.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen)
    window.resize(800, 600)
    window.show()
    return viewer.screenshot(canvas_only=True, flash=False)


def two_model_run(tmp_path):
    """A run folder with an untrained f0 and f1 (no policy yet)."""
    run = tmp_path / "run"
    save_checkpoint(run / "f0.pt", UNet(TINY))
    save_checkpoint(run / "f1.pt", UNet(UNetConfig(base=6, depth=2)))
    return run


def test_routing_overlay_screenshot_is_not_blank(gui, qtbot, tmp_path, errors):
    viewer, widget = gui
    s = start(widget, tmp_path)
    run = two_model_run(tmp_path)
    save_policy(run / "policy.pt", PolicyNet(PolicyConfig(n_models=2, grid=(2, 2), width=4)))
    w = widget.steps["Session"]
    w.run_folder.setText(str(run))
    w.load_models()
    idle(widget.hub)
    assert s.has_policy and "policy" in w.status.text()
    maps = widget.steps["Maps"]
    maps.samples.setValue(1)
    assert "f1" in maps.legend.text() and "params" in maps.legend.text()
    maps.route()
    wait_idle(qtbot, widget.hub)
    layer = viewer.layers[ROUTING]
    z = widget.hub.current_z()
    # one pixel per patch, stretched over the slice by the layer's transform: pixel (r, c) centred on its patch
    assert layer.data.shape == (1, 2, 2) and set(layer.features["model"]) <= {"f0", "f1"}
    assert tuple(layer.scale) == (1, 32, 32) and tuple(layer.translate) == (z, 15.5, 15.5)
    assert np.allclose(layer.data_to_world((0, 1, 0)), (z, 47.5, 15.5))  # patch (1, 0): pixels 32..63 x 0..31
    assert maps.view.isChecked()  # the overlay is the model's view: its toggle says it is shown
    assert "GFLOPs" in maps.readout.text() and "f0 100%" in maps.shares.text()  # untrained policy: all f0
    routed = viewer.layers[ROUTED]
    assert routed.data.shape == s.shape and not isinstance(routed.data, np.ndarray)  # lazily read, not a copy
    assert np.array_equal(routed.data[z], s.route(z, samples=1).segmentation + 1)  # class k shown as k + 1
    assert not np.asarray(routed.data[(z + 1) % s.shape[0]]).any()  # only the routed slice is written
    for name in viewer.layers:
        name.visible = name.name in ("scan", ROUTING)
    image = screenshot(viewer)
    assert image.ndim == 3 and image[..., :3].std() > 0
    maps.readout.setText("")
    widget.hub.models_changed.emit()  # new weights (e.g. after a retrain): the shown overlay re-routes
    wait_idle(qtbot, widget.hub)
    assert "GFLOPs" in maps.readout.text() and ROUTING in viewer.layers
    overlay, routed = viewer.layers[ROUTING], viewer.layers[ROUTED]
    routed.visible = True  # both shown (napari draws a hidden layer's thumbnail only once it is shown)
    assert overlay.thumbnail[..., :3].any() and routed.thumbnail[..., :3].any()
    widget.hub.open(s.folder)  # resuming: the routing layers are emptied and hidden in place, never removed
    wait_idle(qtbot, widget.hub)
    assert viewer.layers[ROUTING] is overlay and viewer.layers[ROUTED] is routed
    assert not overlay.data.any() and not overlay.visible and not routed.visible
    assert not np.asarray(routed.data).any()
    # the layer list shows them empty (napari draws an empty layer's thumbnail black)
    assert not overlay.thumbnail[..., :3].any() and not routed.thumbnail[..., :3].any()
    order = [la.name for la in viewer.layers]  # the resumed session's own image goes under its overlays
    assert order.index(IMAGE) < min(order.index(n) for n in (LABELS, PRED, ROUTING, ROUTED)), order
    maps.route()  # the emptied overlay takes the new routing's rectangles
    wait_idle(qtbot, widget.hub)
    assert viewer.layers[ROUTING] is overlay and overlay.data.shape == (1, 2, 2) and overlay.data.all()
    assert overlay.visible and maps.view.isChecked()  # after a resume too: one click hides it
    assert np.array_equal(routed.data[z], widget.hub.session.route(z, samples=1).segmentation + 1)
    assert not errors


def test_the_dock_warms_the_first_actions_imports_off_the_gui_thread(gui):
    import sys

    from napari_paser.gui.warmup import WARM_MODULES, warm_imports

    thread = warm_imports()  # started by the first dock of the process; a second call is the same thread
    thread.join(timeout=120)
    assert thread.name == "paser-warm-imports" and not thread.is_alive() and warm_imports() is thread
    assert all(m in sys.modules for m in WARM_MODULES)


def test_lambda_slider_reroutes_live_from_the_policy_bank(gui, qtbot, tmp_path, errors):
    from learners.routing.bank import PolicyBank, save_bank

    viewer, widget = gui
    s = start(widget, tmp_path)
    run = two_model_run(tmp_path)
    bank = {}
    for lam, logits in ((0.0, [0.0, 5.0]), (1.0, [5.0, 0.0])):  # lambda 0 sends every patch to f1, 1 keeps f0
        bank[lam] = PolicyNet(PolicyConfig(n_models=2, grid=(2, 2), width=4))
        bank[lam].head.bias.data[:] = torch.tensor(logits)
    save_bank(run, PolicyBank(bank))
    maps = widget.steps["Maps"]
    assert not maps.lam.isEnabled()
    widget.steps["Session"].run_folder.setText(str(run))
    widget.steps["Session"].load_models()
    idle(widget.hub)
    assert maps.lam.isEnabled() and "0, 1" in maps.lam_note.text()
    assert maps.lam.value() == 1.0  # a new bank opens at the member routing defaults to (`PolicyBank.default_lambda`)
    maps.samples.setValue(1)
    maps.lam.setValue(0.0)  # no overlay and f0's state of the slice unknown: nothing runs yet
    assert not widget.hub.busy and ROUTING not in viewer.layers
    maps.route()
    wait_idle(qtbot, widget.hub)
    assert set(viewer.layers[ROUTING].features["model"]) == {"f1"} and "f1 100%" in maps.shares.text()
    spent_up = maps.readout.text()
    maps.lam.setValue(0.8)  # nearest trained lambda 1: a quick preview off the GUI thread, not an exclusive job
    assert not widget.hub.busy and widget.hub.previewing
    qtbot.waitUntil(lambda: not widget.hub.previewing, timeout=WAIT_MS)
    wait_idle(qtbot, widget.hub)  # the overlay's layer steps run after the preview returns (`Hub.later`)
    assert set(viewer.layers[ROUTING].features["model"]) == {"f0"} and "f0 100%" in maps.shares.text()
    assert "\u03bb = 1" in maps.readout.text() and maps.readout.text() != spent_up
    assert s.has_state(widget.hub.current_z(), 1)
    assert not errors


def test_export_writes_the_labeled_set(gui, tmp_path, errors):
    from napari_paser.data.export import read_export

    viewer, widget = gui
    s = accepted_session(widget, tmp_path, n=2)
    ex = widget.steps["Export"]
    assert ex.out.text().endswith("session-export")
    ex.full.setChecked(True)
    ex.export()
    idle(widget.hub)
    path = ex.last_path
    back = read_export(path)
    assert sorted(r["region_id"] for r in back.regions) == [0, 1]
    assert back.volume is not None and np.asarray(back.volume).shape == s.shape
    assert not errors


def test_labels_from_another_layer_can_be_copied_and_accepted(gui, errors, tmp_path):
    viewer, widget = gui
    s = start(widget, tmp_path)
    label = widget.steps["Label"]
    viewer.layers.selection.active = viewer.layers["scan"]
    label.import_selected()
    assert errors and "Labels layer" in errors[-1]  # an image layer is refused with what to do
    painted = np.zeros(s.shape, np.uint8)
    painted[1, :32, 32:] = 2  # one whole 32x32 region of class 1 (layer value 2) on slice 1
    viewer.add_labels(painted, name="from Fiji")
    label.import_selected()
    idle(widget.hub)
    assert np.array_equal(np.asarray(s.labels[:]), painted)
    label.accept_painted()
    idle(widget.hub)
    assert [(r.z, r.y0, r.x0) for r in s.accepted] == [(1, 0, 32)]
    assert np.array_equal(s.accepted_labels(s.accepted[0].region_id), painted[1, :32, 32:])


def test_a_session_opened_from_the_file_menu_is_offered_for_resuming(make_napari_viewer, tmp_path):
    from napari_paser.gui.io import read_session
    from napari_paser.session.core import Session

    Session.create(tmp_path / "sess", np.zeros((2, 64, 64), np.uint16) + np.arange(64, dtype=np.uint16))
    viewer = make_napari_viewer()
    widget = PaserWidget(viewer)
    for data, kwargs, kind in read_session(tmp_path / "sess"):  # what File > Open adds through our reader
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    assert widget.steps["Session"].open_folder.text() == str((tmp_path / "sess").resolve())
    widget.steps["Session"].open()
    idle(widget.hub)
    assert widget.hub.session is not None and widget.hub.session.folder.resolve() == (tmp_path / "sess").resolve()
    assert not [la.name for la in viewer.layers if la.name.startswith("sess ")]  # reader copies replaced


def test_a_folder_held_elsewhere_resumes_read_only_with_a_warning(make_napari_viewer, tmp_path, monkeypatch, errors):
    import json

    from napari_paser.session.core import Session
    from napari_paser.session.lock import LOCK_FILE

    warned: list[str] = []
    monkeypatch.setattr(_widgets_hub, "show_warning", warned.append)
    Session.create(tmp_path / "sess", np.zeros((2, 64, 64), np.uint16) + np.arange(64, dtype=np.uint16)).close()
    (tmp_path / "sess" / LOCK_FILE).write_text(json.dumps({"host": "elsewhere.example", "pid": 4242, "time": "t"}))
    widget = PaserWidget(make_napari_viewer())
    widget.steps["Session"].open_folder.setText(str(tmp_path / "sess"))
    widget.steps["Session"].open()
    idle(widget.hub)
    session = widget.hub.require()
    assert session.read_only and not errors
    assert any("read-only" in w and "elsewhere.example" in w for w in warned)
    assert json.loads((tmp_path / "sess" / LOCK_FILE).read_text())["host"] == "elsewhere.example"  # untouched


def test_an_unwritable_export_folder_is_one_line_not_a_traceback(gui, tmp_path, errors):
    viewer, widget = gui
    start(widget, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    widget.hub.run(lambda should_stop: widget.hub.require().export(blocker / "export", full_volume=True), what="exporting")
    idle(widget.hub)
    assert len(errors) == 1 and "a-file" in errors[0] and "\n" not in errors[0]


def test_dqn_proposes_with_the_shipped_agent_when_no_file_is_chosen(gui, errors, tmp_path):
    from learners.generators import drain

    viewer, widget = gui
    s = start(widget, tmp_path, region=16)
    drain(s.compute_maps(samples=2))
    label = widget.steps["Label"]
    label.sampler.setCurrentText("dqn")
    assert label.dqn.text() == ""
    label.k.setValue(2)
    label.propose()
    idle(widget.hub)
    assert not errors and len(s.pending_proposals) == 2
    assert {p.sampler for p in s.pending_proposals} == {"dqn"}
