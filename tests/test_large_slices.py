"""Large slices in the window: the model's overlays as multiscale layers read lazily (a level is every
step-th pixel, computed on the small block), the entropy > gamma outlines computed without napari's
contour pass, the routing overlay one pixel per patch and the routed segmentation read from zarr."""

from __future__ import annotations

import numpy as np
import pytest

from napari_paser.gui import layers as L


def test_a_pyramid_level_reads_every_step_th_pixel():
    base = np.arange(2 * 10 * 7).reshape(2, 10, 7)
    view = L.LazyView(base, lambda a, _: a * 2, np.int64, step=4)
    assert view.shape == (2, 3, 2) and view.ndim == 3
    np.testing.assert_array_equal(view[1], base[1, ::4, ::4] * 2)
    np.testing.assert_array_equal(view[0, 1:3, :1], base[0, 4:12:4, 0:4:4] * 2)
    np.testing.assert_array_equal(view[..., 1], base[..., ::4, 4] * 2)
    np.testing.assert_array_equal(np.asarray(view), base[:, ::4, ::4] * 2)


def test_levels_halve_a_large_slice_down_to_the_coarsest_side(monkeypatch):
    small = L.levels(np.zeros((3, 64, 64)), None, np.uint8, (3, 64, 64))
    assert isinstance(small, L.LazyView)  # a small slice: one level, as before
    monkeypatch.setattr(L, "PYRAMID_SIDE", 32)
    monkeypatch.setattr(L, "LEVEL_SIDE", 16)
    pyramid = L.levels(np.zeros((3, 64, 50)), None, np.uint8, (3, 64, 50))
    assert [v.shape for v in pyramid] == [(3, 64, 50), (3, 32, 25), (3, 16, 13)]


def test_outline_is_one_pixel_inside_the_mask():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:7] = True
    edge = L.outline(mask)
    assert edge[2, 2:7].all() and edge[5, 2:7].all() and edge[2:6, 2].all() and edge[2:6, 6].all()
    assert not edge[3:5, 3:6].any() and not (edge & ~mask).any()


def test_the_routing_overlay_is_one_pixel_per_patch_centred_on_it():
    from napari_paser.session.routing import SliceRouting

    routed = SliceRouting(z=3, routing=np.array([[0, 2], [1, -1]]), segmentation=None, shape=(128, 100),
                          names=("f0", "f1", "f2"), params={}, gflops=0.0, gflops_largest=0.0, shares={},
                          cell=(64, 64))
    data, scale, translate = L.routing_image(routed, three_d=True)
    np.testing.assert_array_equal(data, [[[1, 3], [2, 0]]])  # -1: not routed yet, transparent
    assert scale == (1.0, 64.0, 64.0) and translate == (3.0, 31.5, 31.5)


def test_the_routed_patches_on_screen_are_written_first_the_others_left_empty(tmp_path):
    from napari_paser.session.routing import SliceRouting

    class Shape:
        shape = (2, 32, 32)

    array = L.routed_array(Shape(), tmp_path / "routed.zarr")
    array[1] = 9  # an earlier routing of the slice: not shown beside the new one
    seg = np.full((32, 32), 2, np.uint8)
    done = np.array([[True, False], [False, False]])
    routed = SliceRouting(z=1, routing=np.zeros((2, 2), int), segmentation=seg, shape=(32, 32), names=("f0",),
                          params={}, gflops=0.0, gflops_largest=0.0, shares={}, cell=(16, 16), done=done)
    L.write_routed(array, routed, n_classes=3)
    assert (array[1, :16, :16] == 3).all() and (array[1, 16:] == 0).all() and (array[1, :, 16:] == 0).all()
    L.write_routed(array, SliceRouting(**{**routed.__dict__, "done": None}), n_classes=3)
    assert (array[1] == 3).all() and (array[0] == 0).all()


pytest.importorskip("napari")


def test_a_large_slice_session_shows_multiscale_overlays(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    from learners.unet import UNetConfig
    from napari_paser.gui.hub import ABOVE, ENTROPY, PRED
    from test_widgets import scan_widget, start_session

    monkeypatch.setattr(L, "PYRAMID_SIDE", 32)  # a 64^2 slice counts as large: levels 64, 32, 16
    monkeypatch.setattr(L, "LEVEL_SIDE", 16)
    viewer, widget = scan_widget(make_napari_viewer)
    start_session(widget, tmp_path)
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=60_000)
    s = widget.hub.require()
    s.new_models({"f0": UNetConfig(base=4, depth=2)})
    widget.hub.models_changed.emit()
    maps = widget.steps["Maps"]
    maps.samples.setValue(1)
    maps.gamma.setValue(0.3)
    maps.compute()
    qtbot.waitUntil(lambda: not widget.hub.busy, timeout=60_000)
    z = widget.hub.current_z()
    for name in (PRED, ENTROPY, ABOVE):
        layer = viewer.layers[name]
        assert layer.multiscale and [d.shape for d in layer.data] == [(2, 64, 64), (2, 32, 32), (2, 16, 16)]
    entropy = np.asarray(s.maps["entropy"][z])
    np.testing.assert_array_equal(np.asarray(viewer.layers[ENTROPY].data[1][z]), entropy[::2, ::2])
    above = np.asarray(viewer.layers[ABOVE].data[0][z])
    np.testing.assert_array_equal(above, L.outline(entropy > 0.3))
    assert viewer.layers[ENTROPY].visible and maps.view.isChecked()


def test_a_level_cut_to_the_screen_reads_only_the_slice_asked_for():
    reads = []
    base = np.arange(4 * 16 * 16).reshape(4, 16, 16)
    view = L.LazyView(base, lambda a, index: reads.append(a.shape) or a, np.int64, step=2)
    crop = view[:, 2:6, 1:5]  # what napari does first with a multiscale level: nothing read yet
    assert reads == [] and crop.shape == (4, 4, 4)
    np.testing.assert_array_equal(crop[2], base[2, 4:12:2, 2:10:2])
    np.testing.assert_array_equal(crop[1:3][1, 1:], base[2, 6:12:2, 2:10:2])
    assert reads == [(4, 4), (3, 4)]  # one slice each time, never the stack
    np.testing.assert_array_equal(np.asarray(crop), base[:, 4:12:2, 2:10:2])


def test_a_session_starts_on_a_multiscale_ome_zarr_reading_its_full_resolution(make_napari_viewer, tmp_path, qtbot):
    import zarr

    from napari_paser.data.pyramid import write_pyramid
    from napari_paser.data.volumes import ngff_attrs
    from napari_paser.gui.hub import hub_for

    data = (np.arange(2 * 80 * 80) % 251).reshape(2, 80, 80).astype(np.uint16)
    root = zarr.open_group(str(tmp_path / "scan.zarr"), mode="w", zarr_format=2)
    root.attrs.update(ngff_attrs("scan"))
    root.create_array("0", data=data, chunks=(1, 40, 40))
    write_pyramid(tmp_path / "scan.zarr", min_side=32)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "scan.zarr"), plugin="napari-paser")
    assert layer.multiscale and len(layer.data) == 3
    hub = hub_for(viewer)
    hub.start(tmp_path / "session", layer)
    qtbot.waitUntil(lambda: not hub.busy, timeout=60_000)
    s = hub.require()
    assert s.shape == (2, 80, 80) and s.image_path is not None  # its full resolution, read in place
    np.testing.assert_array_equal(np.asarray(s.image[1]), data[1])


def test_the_dock_builds_its_first_tab_at_once_and_the_others_after(make_napari_viewer, qtbot):
    from napari_paser.gui.widgets import STEPS, PaserWidget

    viewer = make_napari_viewer()
    dock = PaserWidget(viewer)
    assert list(dock.steps._built) == ["Session"]  # the rest waits for their background import
    assert dock.steps["Volume"] is dock.steps._built["Volume"]  # asked for: built then
    qtbot.waitUntil(lambda: len(dock.steps._built) == len(STEPS), timeout=60_000)
    assert [dock.tabs.widget(i).widget() for i in range(len(STEPS))] == [dock.steps[t] for t, _, _ in STEPS]
