"""Lazy volume readers: every format reads the same array; bad volumes get one clear error."""

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from napari_paser.data import dataset
from napari_paser.data.volumes import ngff_attrs, open_volume
from napari_paser.errors import PaserInputError


@pytest.fixture(scope="module")
def vol():
    return np.random.default_rng(0).integers(0, 60000, (4, 40, 24), dtype=np.uint16)


def _ome(path, data, axes="zyx"):
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update(ngff_attrs("image", axes))
    root.create_array("0", shape=data.shape, chunks=(1,) * (data.ndim - 2) + data.shape[-2:], dtype=data.dtype)[:] = data
    root.create_array("1", shape=(1,), dtype="u1")  # a lower level the reader must not take
    return path


def _writers(tmp_path, vol):
    tifffile.imwrite(tmp_path / "stack.tif", vol, photometric="minisblack")
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, s in enumerate(vol):
        tifffile.imwrite(folder / f"slice_{z:04d}.tif", s)
    zarr.save_array(str(tmp_path / "plain.zarr"), vol, zarr_format=2)
    _ome(tmp_path / "ome.zarr", vol)
    _ome(tmp_path / "ome5d.zarr", vol[None, None], "tczyx")
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("entry/data", data=vol, chunks=(1, 40, 24))
    return ["stack.tif", "slices", "plain.zarr", "ome.zarr", "ome5d.zarr", "scan.h5:/entry/data"]


def test_every_format_reads_the_same_array_lazily(tmp_path, vol):
    kinds = set()
    for spec in _writers(tmp_path, vol):
        v = open_volume(f"{tmp_path}/{spec}")
        kinds.add(v.kind)
        assert v.shape == vol.shape and v.dtype == vol.dtype, spec
        assert hasattr(v.array, "dask"), spec  # lazy: nothing read yet
        np.testing.assert_array_equal(v.array.compute(), vol, err_msg=spec)
        np.testing.assert_array_equal(v.read(slice(1, 2), slice(5, 17), slice(3, 9)), vol[1:2, 5:17, 3:9])
    assert kinds == {"tiff", "tiff-folder", "zarr", "ome-zarr", "hdf5"}


def test_a_2d_tiff_is_one_slice(tmp_path, vol):
    tifffile.imwrite(tmp_path / "one.tif", vol[0])
    assert open_volume(tmp_path / "one.tif").shape == (1, 40, 24)


def test_tiff_is_read_page_by_page(tmp_path, vol):
    tifffile.imwrite(tmp_path / "stack.tif", vol, photometric="minisblack")
    v = open_volume(tmp_path / "stack.tif")
    assert v.array.chunks[0] == (1,) * len(vol)  # one chunk per page: a block read touches its pages only


def test_intensity_range_samples_chunks_of_a_large_volume(monkeypatch, tmp_path):
    data = np.random.default_rng(1).normal(1000, 100, (40, 64, 64)).astype(np.float32)
    zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype,
                      zarr_format=2)[:] = data
    v = open_volume(tmp_path / "v.zarr")
    full = np.percentile(data, [0.5, 99.5])
    monkeypatch.setattr(dataset, "_SUBSAMPLE", 20_000)  # pretend the volume is huge
    read = []
    orig = dataset._chunk_sample
    monkeypatch.setattr(dataset, "_chunk_sample", lambda a: read.append(1) or orig(a))
    lo, hi = v.intensity_range()
    assert read  # the chunk sampler ran
    assert lo == pytest.approx(full[0], abs=25) and hi == pytest.approx(full[1], abs=25)
    assert (lo, hi) == v.intensity_range()  # deterministic
    assert len(dataset._chunk_sample(v.array)) <= 20_000


@pytest.mark.parametrize("shape,axes,match", [
    ((2, 4, 40, 24), "tzyx", "4D time series"),
    ((3, 4, 40, 24), "czyx", "3 channels .RGB."),
    ((1, 2, 4, 40, 24), "tczyx", "2 channels"),
])
def test_4d_and_rgb_ome_zarr_are_refused(tmp_path, shape, axes, match):
    _ome(tmp_path / "bad.zarr", np.zeros(shape, np.uint16), axes)
    with pytest.raises(PaserInputError, match=match):
        open_volume(tmp_path / "bad.zarr")


def test_bad_volumes_get_clear_errors(tmp_path, vol):
    folder = tmp_path / "slices"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", vol[0])
    tifffile.imwrite(folder / "b.tif", vol[0, :30])
    with pytest.raises(PaserInputError, match=r"differ in shape: a.tif is \(40, 24\) but b.tif is \(30, 24\)"):
        open_volume(folder)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("entry/data", data=vol)
    with pytest.raises(PaserInputError, match="has no dataset /entry/missing; its datasets are: /entry/data"):
        open_volume(f"{tmp_path}/scan.h5:/entry/missing")
    with pytest.raises(PaserInputError, match="name the dataset"):
        open_volume(tmp_path / "scan.h5")
    with pytest.raises(PaserInputError, match="does not exist"):
        open_volume(tmp_path / "nope.tif")
    zarr.save_array(str(tmp_path / "four.zarr"), np.zeros((2, 2, 8, 8), np.uint8), zarr_format=2)
    with pytest.raises(PaserInputError, match="4D"):
        open_volume(tmp_path / "four.zarr")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((30, 20, 3), np.uint8), photometric="rgb")
    with pytest.raises(PaserInputError, match="RGB"):
        open_volume(tmp_path / "rgb.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PaserInputError, match="no .tif"):
        open_volume(tmp_path / "empty")


def test_a_tiff_written_one_slice_at_a_time_opens_as_the_whole_stack(tmp_path):
    v = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    for z in range(4):  # tifffile.imwrite(..., append=True): one series per slice
        tifffile.imwrite(tmp_path / "appended.tif", v[z], append=True)
    vol = open_volume(tmp_path / "appended.tif")
    assert vol.shape == (4, 16, 16)
    np.testing.assert_array_equal(vol.read(slice(0, 4), slice(0, 16), slice(0, 16)), v)


def test_tifffile_lines_are_kept_per_thread(caplog):
    """A slice read inside `_TiffLog` on one thread keeps its own tifffile lines and leaves another thread's
    lines printed as usual (a threaded dask scheduler reads slices at once)."""
    import logging
    import threading

    from napari_paser.data.volumes import _TiffLog

    logger = logging.getLogger("tifffile")
    inside, outside_logged, kept = threading.Event(), threading.Event(), []

    def read_a_slice():
        with _TiffLog() as log:
            inside.set()
            outside_logged.wait(5)
            logger.warning("invalid page offset 123 (truncated)")
        kept.extend(log.seen)

    worker = threading.Thread(target=read_a_slice)
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        worker.start()
        assert inside.wait(5)
        logger.warning("a line from another thread")
        outside_logged.set()
        worker.join(5)
        logger.warning("after the read")
    printed = [r.getMessage() for r in caplog.records if r.name == "tifffile"]
    assert printed == ["a line from another thread", "after the read"]
    assert kept == ["invalid page offset 123 (truncated)"]
