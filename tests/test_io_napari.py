"""npe2 reader and writer: LayerData for TIFF, dataset, zarr and session paths; labels -> export."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_paser.errors import PaserInputError
from napari_paser.data.export import read_export
from napari_paser.gui.io import SESSION_KEY, get_reader, read_path, region_shapes, write_labeled_set
from napari_paser.session.core import Session


def image(z: int = 2, size: int = 48) -> np.ndarray:
    return (np.random.default_rng(0).random((z, size, size)) * 4000).astype(np.uint16)


def read(path) -> list[tuple]:
    reader = get_reader(str(path))
    assert reader is not None, f"no reader for {path}"
    return reader(str(path))


@pytest.mark.parametrize("shape", [(48, 48), (3, 48, 48)])
def test_tiff_stacks_open_as_images(tmp_path, shape):
    stack = np.random.default_rng(0).integers(1, 60000, shape, dtype=np.uint16)  # non-zero: a reader of zeros fails
    tifffile.imwrite(tmp_path / "a.tif", stack, photometric="minisblack")
    ((data, kwargs, kind),) = read(tmp_path / "a.tif")
    assert kind == "image" and data.shape == shape and kwargs["name"] == "a"
    np.testing.assert_array_equal(np.asarray(data), stack)


def test_large_tiffs_open_lazily(tmp_path, monkeypatch):
    import napari_paser.gui.io as io

    stack = np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32)
    tifffile.imwrite(tmp_path / "big.tif", stack, photometric="minisblack")
    monkeypatch.setattr(io, "LAZY_BYTES", 1000)
    ((data, _, kind),) = read(tmp_path / "big.tif")
    assert isinstance(data, zarr.Array) and kind == "image"
    np.testing.assert_array_equal(data[1], stack[1])


def test_paths_this_plugin_does_not_read(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for p in ("rgb.tif", "notes.txt", "empty", "missing.tif"):
        assert get_reader(str(tmp_path / p)) is None
    assert get_reader([str(tmp_path / "rgb.tif"), str(tmp_path / "notes.txt")]) is None
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 2, 2, 16, 16), np.uint8))
    with pytest.raises(PaserInputError, match="greyscale"):
        read(tmp_path / "4d.tif")


def test_dataset_folder_opens_images_and_labels_in_layer_convention(tmp_path):
    from napari_paser.data.dataset import write_dataset

    labels = np.random.default_rng(1).integers(0, 3, (2, 48, 48)).astype(np.uint8)
    write_dataset(tmp_path / "ds", image(), labels, ["pore", "binder", "active"])
    (img, _, k1), (lab, kw, k2) = read(tmp_path / "ds")
    assert (k1, k2) == ("image", "labels") and img.shape == lab.shape == (2, 48, 48)
    np.testing.assert_array_equal(lab, labels + 1)
    assert kw["metadata"]["class_names"] == ["pore", "binder", "active"]


def test_zarr_arrays_open_lazily(tmp_path):
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=(2, 32, 32), chunks=(1, 32, 32), dtype="f4")
    ((data, kwargs, kind),) = read(tmp_path / "v.zarr")
    assert kind == "image" and isinstance(data, zarr.Array) and data.shape == arr.shape
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(32, 32), dtype="u2")
    group.create_array("vector", shape=(5,), dtype="u2")
    assert [kw["name"] for _, kw, _ in read(tmp_path / "g.zarr")] == ["g/raw"]


def test_session_folder_restores_image_labels_regions_and_maps(tmp_path):
    from learners.unet import UNetConfig

    s = Session.create(tmp_path / "s", image(), region_size=32)
    s.new_models({"f0": UNetConfig(base=4, depth=2)})
    for _ in s.compute_maps(z=0, samples=1):
        pass
    props = s.propose(3, "entropy")
    s.accept(props[0].region_id, np.full((32, 32), 2, np.uint8))
    layers = read(s.folder)
    kinds = [(kw["name"], kind) for _, kw, kind in layers]
    assert kinds == [("s image", "image"), ("s labels", "labels"), ("s f0 prediction", "labels"),
                     ("s f0 entropy", "image"), ("regions", "shapes")]
    (img, ikw, _), (lab, lkw, _) = layers[:2]
    assert img.shape == lab.shape == (2, 48, 48) and isinstance(lab, zarr.Array)
    assert lkw["metadata"][SESSION_KEY] == str(s.folder.resolve())
    assert lkw["colormap"][2] == s.classes.colors[1]
    pred = np.asarray(layers[2][0][0])
    np.testing.assert_array_equal(pred, s.slice_maps(0)["prediction"] + 1)
    rects, skw, _ = layers[-1]
    assert skw["features"]["status"] == ["proposed", "proposed", "accepted"]
    assert skw["features"]["rank"] == [2, 3, 1]
    r = s.region(props[0].region_id)
    np.testing.assert_allclose(rects[-1][0], [r.z, r.y0 - 0.5, r.x0 - 0.5])
    assert rects[-1].shape == (4, 3)


def test_region_shapes_of_a_2d_session_and_of_none(tmp_path):
    s = Session.create(tmp_path / "s", image()[0], region_size=32)
    assert region_shapes(s) is None
    s.propose(2, "random")
    rects, kw, kind = region_shapes(s)
    assert kind == "shapes" and all(r.shape == (4, 2) for r in rects)


def test_writer_exports_a_session_labels_layer(tmp_path):
    s = Session.create(tmp_path / "s", image(), region_size=32)
    s.accept(0, np.ones((32, 32), np.uint8))
    layers = read_path(str(s.folder))
    data, kwargs, _ = layers[1]
    (written,) = write_labeled_set(str(tmp_path / "out"), data, kwargs)
    back = read_export(written)
    assert [r["region_id"] for r in back.regions] == [0] and 0 in back.images
    with pytest.raises(PaserInputError, match="shape"):
        write_labeled_set(str(tmp_path / "bad"), np.zeros((4, 4), np.uint8), kwargs)


def test_writer_exports_a_bare_labels_layer(tmp_path):
    layer = np.zeros((40, 40), np.uint8)
    layer[:3, :3] = 4
    (written,) = write_labeled_set(str(tmp_path / "out"), layer, {"name": "painted", "metadata": {}})
    back = read_export(written)
    assert back.class_names == ("class 0", "class 1", "class 2", "class 3")
    assert back.labels[0][0, 0] == 3 and back.labels[0][5, 5] == 255


def test_manifest_declares_reader_and_writer():
    npe2 = pytest.importorskip("npe2")
    from pathlib import Path

    manifest = npe2.PluginManifest.from_file(Path(__file__).resolve().parents[1] / "napari.yaml")
    (reader,) = manifest.contributions.readers
    (writer,) = manifest.contributions.writers
    assert reader.accepts_directories and "*.tif" in reader.filename_patterns
    assert writer.layer_types == ["labels"]
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for cmd in (reader.command, writer.command):
        module, func = commands[cmd].split(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func))


def test_layer_data_builds_napari_layers_and_labels_paint_into_the_session(tmp_path):
    layers_mod = pytest.importorskip("napari.layers")  # no viewer, no display: layers only
    s = Session.create(tmp_path / "s", image(), region_size=32)
    s.propose(2, "random")
    r = s.region(s.proposals[0].region_id)
    s.accept(r.id, np.full((r.h, r.w), 3, np.uint8))
    built = [layers_mod.Layer.create(*ld) for ld in read(s.folder)]
    assert [type(layer).__name__ for layer in built] == ["Image", "Labels", "Shapes"]
    labels = built[1]
    labels.selected_label = 2
    labels.brush_size = 1
    labels.paint((1, 40, 40), 2)  # napari's brush writes into the session's zarr canvas
    assert Session.open(s.folder).labels[1, 40, 40] == 2
    assert len(built[2].data) == 2


def test_reading_the_session_already_in_the_viewer_selects_it_instead(tmp_path, monkeypatch):
    components = pytest.importorskip("napari.components")  # a viewer model: no window needed
    import napari_paser.gui.io as io
    from napari.layers import Layer

    s = Session.create(tmp_path / "s", image(), region_size=32)
    s.propose(2, "random")
    viewer = components.ViewerModel()
    for ld in read(s.folder):
        viewer.add_layer(Layer.create(*ld))
    viewer.add_image(np.zeros((4, 4)), name="other")
    told = []
    monkeypatch.setattr(io, "_current_viewer", lambda: viewer)
    monkeypatch.setattr(io, "_notify", lambda message, warning=False: told.append(message))
    assert read(s.folder) == [(None,)]  # napari's "nothing to add"
    assert len(viewer.layers) == 4 and [la.name for la in viewer.layers.selection] == ["s labels"]
    assert viewer.layers.selection.active.name == "s labels"
    assert "already open" in told[0]
    other = Session.create(tmp_path / "t", image(), region_size=32)
    assert len(read(other.folder)) == 2  # another session is read as usual


HOLDER = """
import sys
from napari_paser.session.core import Session
s = Session.open(sys.argv[1])
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_session_held_by_another_process_opens_read_only(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    import napari_paser.gui.io as io

    s = Session.create(tmp_path / "s", image(), region_size=32)
    s.accept(0, np.ones((32, 32), np.uint8))
    s.close()
    told = []
    monkeypatch.setattr(io, "_notify", lambda message, warning=False: told.append(message))
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(s.folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert child.stdout.readline().strip() == "holding"
        layers = read(s.folder)
    finally:
        child.kill()
        child.wait()
    assert f"process {child.pid}" in told[0] and "read-only" in told[0]
    data, kw, kind = layers[1]
    assert kind == "labels" and kw["name"] == "s (read-only) labels" and kw["multiscale"]
    layers_mod = pytest.importorskip("napari.layers")
    labels = layers_mod.Layer.create(data, kw, kind)
    assert not labels.editable and labels.level_shapes[0].tolist() == [2, 48, 48]  # shown, not paintable
    assert np.asarray(data[0][0, :32, :32]).min() == 1


def test_the_reader_holds_a_session_while_the_viewer_shows_it(tmp_path, monkeypatch):
    components = pytest.importorskip("napari.components")
    import napari_paser.gui.io as io
    from napari.layers import Layer

    s = Session.create(tmp_path / "s", image(), region_size=32)
    s.close()
    viewer = components.ViewerModel()
    monkeypatch.setattr(io, "_current_viewer", lambda: viewer)
    for ld in read(s.folder):
        viewer.add_layer(Layer.create(*ld))
    lock_file = s.folder / "session.lock"
    assert lock_file.exists()  # another process would be refused while the canvas is shown here
    viewer.layers.remove("s image")
    assert lock_file.exists()
    viewer.layers.remove("s labels")  # the last layer of the session: released
    assert not lock_file.exists()
