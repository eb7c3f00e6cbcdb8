"""The dock's volume steps under Xvfb: a session on a zarr layer reads it in place; "Segment volume" runs
the `paser segment` job in the background (cancellable, resumable) into lazy layers; maps of the slice on
screen start with the tiles in view. Tiny on purpose: 2 x 64 x 64 images, UNets of base 4."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("napari")

sys.path.insert(0, str(Path(__file__).parent))
from segment_helpers import make_run, volume  # noqa: E402

from napari_paser.gui.segment_step import ENTROPY_MAP, ROUTING_MAP, SEGMENTATION  # noqa: E402
from napari_paser.gui.widgets import PaserWidget  # noqa: E402
from napari_paser.jobs import segment as seg  # noqa: E402
from napari_paser.session import maps as session_maps  # noqa: E402
from napari_paser.session.store import IMAGE  # noqa: E402

WAIT_MS = 120_000
PLUGIN = "napari-paser"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol")
    zarr.create_array(str(root / "scan.zarr"), data=volume((2, 64, 64)), chunks=(1, 32, 32))
    return root, make_run(root / "run")


@pytest.fixture
def gui(make_napari_viewer, data, tmp_path, monkeypatch):
    """A viewer with the zarr scan opened by the plugin's reader, the all-steps dock and a session on it."""
    root, run = data
    monkeypatch.chdir(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(root / "scan.zarr"), plugin=PLUGIN)
    widget = PaserWidget(viewer)
    return viewer, widget, root, run


def start(qtbot, widget, tmp_path, run=None):
    w = widget.steps["Session"]
    w.layer_box.setCurrentText("scan")
    w.region.setValue(32)
    w.folder.setText(str(tmp_path / "session"))
    w.start_button.click()
    assert widget.hub.busy  # off the GUI thread
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=WAIT_MS)
    s = widget.hub.require()
    if run is not None:
        s.load_models(run)
        widget.hub.models_changed.emit()
    return s


def test_a_session_on_a_zarr_layer_reads_it_in_place(gui, qtbot, tmp_path):
    viewer, widget, root, _ = gui
    s = start(qtbot, widget, tmp_path)
    assert s.image_path == str((root / "scan.zarr").resolve()) and not (s.folder / IMAGE).exists()
    assert "read in place" in widget.steps["Session"].status.text()
    np.testing.assert_array_equal(s.image[1], zarr.open_array(str(root / "scan.zarr"))[1])


def test_copy_checkbox_copies_the_image(gui, qtbot, tmp_path):
    viewer, widget, root, _ = gui
    widget.steps["Session"].copy.setChecked(True)
    s = start(qtbot, widget, tmp_path)
    assert s.image_path is None and (s.folder / IMAGE).is_dir()


def _segment(qtbot, widget, what="maps", workers=0, cancel_after=None):
    w = widget.steps["Volume"]
    w.what.setCurrentText(what)
    w.tile.setValue(32)
    w.workers.setValue(workers)
    seen = []

    def on_event(event):
        seen.append(event)
        if cancel_after is not None and getattr(event, "stage", "") == "segment" and len(seen) > cancel_after:
            w.job.cancel.click()

    widget.hub.progress.connect(on_event)
    w.button.click()
    assert widget.hub.busy and not w.button.isEnabled()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=WAIT_MS)
    widget.hub.progress.disconnect(on_event)
    return w, seen


def _out(out):
    g = zarr.open_group(out, mode="r")
    return {k: g[k]["0"][:] for k in g.group_keys() if not k.startswith(".")}


def test_segment_volume_runs_the_segment_job_into_lazy_layers(gui, qtbot, tmp_path):
    viewer, widget, root, run = gui
    s = start(qtbot, widget, tmp_path, run)
    w, seen = _segment(qtbot, widget, "route")
    assert w.last is not None and not w.last.cancelled and w.last.blocks == 8
    assert [e.done for e in seen if e.stage == "segment"] == list(range(1, 9))
    out = w.last.out
    assert Path(out).name == "session-route-v1.zarr" and Path(s.folder.parent / "session-run-v1" / "f0.pt").is_file()
    ref = seg.segment_volume(s.folder.parent / "session-run-v1", root / "scan.zarr", tmp_path / "cli.zarr", "route",
                             tile=32, workers=0, progress=False)
    mine, cli = _out(out), _out(ref.out)
    for k in cli:  # the same job code as `paser segment`: the same output
        np.testing.assert_array_equal(mine[k], cli[k], err_msg=k)
    layer = viewer.layers[SEGMENTATION]
    assert type(layer.data).__module__.startswith("dask")  # lazy: read slice by slice as shown
    np.testing.assert_array_equal(np.asarray(layer.data), cli["segmentation"] + 1)
    assert ROUTING_MAP in viewer.layers and ENTROPY_MAP not in viewer.layers
    assert "segmented 8 blocks" in w.job.message.text()


def test_cancel_keeps_finished_blocks_and_running_again_finishes_the_rest(gui, qtbot, tmp_path):
    viewer, widget, root, run = gui
    start(qtbot, widget, tmp_path, run)
    w, _ = _segment(qtbot, widget, "maps", cancel_after=2)
    assert w.last.cancelled and 2 <= w.last.blocks_done < 8
    assert "run the same job again" in w.job.message.text()
    assert ENTROPY_MAP in viewer.layers and ROUTING_MAP not in viewer.layers  # maps: the entropy beside
    done = w.last.blocks_done
    shown = np.asarray(viewer.layers[SEGMENTATION].data)
    assert 0 < (shown > 0).mean() < 1  # unfinished blocks read as unlabeled
    w, seen = _segment(qtbot, widget, "maps")
    assert not w.last.cancelled and w.last.done_before == done
    assert len([e for e in seen if e.stage == "segment"]) == 8 - done
    assert (np.asarray(viewer.layers[SEGMENTATION].data) > 0).all()


def test_segment_volume_on_a_local_cluster(gui, qtbot, tmp_path):
    viewer, widget, root, run = gui
    start(qtbot, widget, tmp_path, run)
    w, _ = _segment(qtbot, widget, "maps", workers=1)
    assert w.last is not None and not w.last.cancelled and w.last.blocks_done == 8
    assert (np.asarray(viewer.layers[SEGMENTATION].data) > 0).all()


def test_maps_of_the_slice_on_screen_start_with_the_tiles_in_view(gui, qtbot, tmp_path, monkeypatch):
    viewer, widget, root, run = gui
    monkeypatch.setattr(session_maps, "MAP_TILE", 16)
    s = start(qtbot, widget, tmp_path, run)
    viewer.dims.set_current_step(0, 1)
    camera = widget.hub.camera()
    camera.center = (0.0, 56.0, 8.0)  # bottom-left corner, zoomed in
    camera.zoom = min(viewer.canvas.size) / 8
    box = widget.hub.view_box()
    assert box is not None and box[0] <= 56 < box[2] and box[1] <= 8 < box[3] and box[2] - box[0] <= 20
    maps = widget.steps["Maps"]
    maps.samples.setValue(1)

    def cancel_at_first(event):
        if getattr(event, "stage", "") == "maps":
            maps.job.cancel.click()

    widget.hub.progress.connect(cancel_at_first)
    maps.slice_button.click()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=WAIT_MS)
    stored = s.slice_maps(1)["entropy"] > 0
    # the tile in view is done, and the cancel (clicked on the first tile's event; the worker may finish one
    # more tile before the click reaches it) stopped the slice early; the exact order is tested headless
    # (test_session_tiles)
    assert stored[48:64, 0:16].all() and stored.sum() <= 2 * 16 * 16


def test_a_session_read_in_place_reopens(gui, qtbot, tmp_path):
    viewer, widget, root, _ = gui
    s = start(qtbot, widget, tmp_path)
    folder = s.folder
    w = widget.steps["Session"]
    w.open_folder.setText(str(folder))
    w.open_button.click()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=WAIT_MS)
    again = widget.hub.require()
    assert again is not s and again.image_path == s.image_path
    shown = viewer.layers["paser image"]
    np.testing.assert_array_equal(np.asarray(shown.data[1]), zarr.open_array(str(root / "scan.zarr"))[1])


@pytest.fixture
def damaged_gui(make_napari_viewer, data, tmp_path, monkeypatch):
    """The `gui` fixture on a copy of the scan (damaged by the test), error notifications collected."""
    from napari_paser.gui import hub as hub_module

    root, run = data
    monkeypatch.chdir(tmp_path)
    zarr.create_array(str(tmp_path / "scan.zarr"), data=volume((2, 64, 64)), chunks=(1, 32, 32))
    errors: list[str] = []
    monkeypatch.setattr(hub_module, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "scan.zarr"), plugin=PLUGIN)
    return viewer, PaserWidget(viewer), tmp_path / "scan.zarr", run, errors


def test_a_damaged_chunk_read_by_the_tiled_maps_or_the_volume_job_is_one_notification(damaged_gui, qtbot, tmp_path):
    viewer, widget, scan, run, errors = damaged_gui
    start(qtbot, widget, tmp_path, run)
    (scan / "c" / "1" / "0" / "1").write_bytes(b"garbage" * 9)  # slice 1, y 0-31, x 32-63
    for layer in viewer.layers:  # the maps job reads the slice itself, not the layers on screen
        layer.visible = False
    viewer.dims.set_current_step(0, 1)
    maps = widget.steps["Maps"]
    maps.samples.setValue(1)
    maps.slice_button.click()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=WAIT_MS)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "scan.zarr: chunk (1, 0, 1) (slice 1, y 0-31, x 32-63" in errors[0] and "re-export" in errors[0]
    w, _ = _segment(qtbot, widget, "maps")
    assert len(errors) == 2 and "scan.zarr: chunk (1, 0, 1)" in errors[1] and "--skip-damaged" in errors[1], errors
    assert w.last is None and "failed" in w.job.message.text()
