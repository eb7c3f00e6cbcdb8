"""A session on a zarr / OME-Zarr / HDF5 image reads it in place (nothing copied); copy=True copies; a
source that moved is one clear line, fixed by `relink_image` (`paser session relink`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import zarr

from learners.generators import collect
from learners.unet import UNetConfig
from napari_paser.cli import main
from napari_paser.data.volumes import VolumeView, ngff_attrs
from napari_paser.errors import PaserInputError
from napari_paser.session.core import Session
from napari_paser.session.store import IMAGE

TINY = UNetConfig(base=4, depth=2)


def volume(z: int = 3, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((z, size, size)) * 1000).astype(np.uint16)


def write_zarr(path, data):
    zarr.create_array(str(path), data=data, chunks=(1, 32, 32))
    return path


def write_ome(path, data):
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update(ngff_attrs("scan", axes="czyx"))
    root.create_array("0", data=data[None], chunks=(1, 1, 32, 32))
    return path


def write_h5(path, data):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data", data=data, chunks=(1, 32, 32))
    return f"{path}:/entry/data"


@pytest.mark.parametrize("fmt", ["zarr", "ome-zarr", "hdf5"])
def test_a_chunked_source_is_read_in_place(tmp_path, fmt):
    v = volume()
    src = {"zarr": lambda: write_zarr(tmp_path / "v.zarr", v), "ome-zarr": lambda: write_ome(tmp_path / "o.zarr", v),
           "hdf5": lambda: write_h5(tmp_path / "v.h5", v)}[fmt]()
    s = Session.create(tmp_path / "s", src, region_size=32)
    assert not (s.folder / IMAGE).exists() and isinstance(s.image, VolumeView)  # nothing copied
    saved = json.loads((s.folder / "session.json").read_text())["image"]
    assert saved["kind"] == fmt and saved["path"] == s.image_path and s.shape == v.shape
    np.testing.assert_array_equal(s.image[1], v[1])
    s.new_models({"f0": TINY})
    collect(s.compute_maps(1, samples=2))
    region = s.region(0)
    s.labels[s.index(region.z, *region.slices[1:])] = 1
    s.accept(0)
    np.testing.assert_array_equal(s.raw_crop(region), v[region.slices])
    s.close()
    again = Session.open(tmp_path / "s")
    assert again.image_path == saved["path"] and again.accepted[0].region_id == 0
    np.testing.assert_array_equal(again.image_slice(2), s.image_slice(2))
    again.close()


def test_copy_true_and_tiff_paths_copy_the_image(tmp_path):
    v = volume()
    s = Session.create(tmp_path / "copied", write_zarr(tmp_path / "v.zarr", v), copy=True)
    assert (s.folder / IMAGE).is_dir() and s.image_path is None
    np.testing.assert_array_equal(np.asarray(s.image[:]), v)
    tifffile.imwrite(tmp_path / "v.tif", v, photometric="minisblack")
    t = Session.create(tmp_path / "tiff", tmp_path / "v.tif")
    assert (t.folder / IMAGE).is_dir() and t.image_path is None and t.state.image["source"] == "v.tif"
    np.testing.assert_array_equal(np.asarray(t.image[:]), v)


def test_a_2d_source_gives_a_2d_session(tmp_path):
    v = volume(1)[0]
    zarr.create_array(str(tmp_path / "slice.zarr"), data=v, chunks=(32, 32))
    s = Session.create(tmp_path / "s", tmp_path / "slice.zarr")
    assert s.shape == v.shape and s.image_path
    np.testing.assert_array_equal(s.image_slice(0), s.image_slice())
    np.testing.assert_array_equal(np.asarray(s.image[:, :]), v)


def test_a_moved_source_is_one_line_naming_it_and_relink_fixes_it(tmp_path, capsys):
    v = volume()
    src = write_zarr(tmp_path / "v.zarr", v)
    Session.create(tmp_path / "s", src).close()
    shutil.move(src, tmp_path / "moved.zarr")
    with pytest.raises(PaserInputError) as err:
        Session.open(tmp_path / "s")
    line = str(err.value)
    assert "\n" not in line and str(src.resolve()) in line and "does not exist" in line
    assert f"paser session relink --session {tmp_path / 's'}" in line
    assert main(["session", "export-run", "--session", str(tmp_path / "s"), "--out", str(tmp_path / "run")]) == 2
    assert "relink" in capsys.readouterr().err
    # another image (shape) is refused; the moved one is accepted, with the CLI
    write_zarr(tmp_path / "other.zarr", volume(2))
    with pytest.raises(PaserInputError, match="choose the same image"):
        Session.relink_image(tmp_path / "s", tmp_path / "other.zarr")
    assert main(["session", "relink", "--session", str(tmp_path / "s"), "--image", str(tmp_path / "moved.zarr")]) == 0
    with Session.open(tmp_path / "s") as s:
        assert s.image_path == str((tmp_path / "moved.zarr").resolve())
        np.testing.assert_array_equal(s.image[2], v[2])


def test_a_source_replaced_by_another_image_is_refused_on_open(tmp_path):
    src = write_zarr(tmp_path / "v.zarr", volume())
    Session.create(tmp_path / "s", src).close()
    shutil.rmtree(src)
    write_zarr(src, volume(2))
    with pytest.raises(PaserInputError, match="it is another image"):
        Session.open(tmp_path / "s")


def test_a_session_that_holds_its_image_has_nothing_to_relink(tmp_path):
    Session.create(tmp_path / "s", volume()).close()
    with pytest.raises(PaserInputError, match="nothing to relink"):
        Session.relink_image(tmp_path / "s", tmp_path / "x.zarr")
