"""Multiscale OME-Zarr: a result's pyramid written blockwise beside its level 0, recorded in its NGFF
metadata, and read back by the plugin's reader as one multiscale image layer."""

from __future__ import annotations

import numpy as np
import zarr

from napari_paser.data.pyramid import has_pyramid, pyramid_steps, write_pyramid
from napari_paser.data.volumes import ngff_attrs
from napari_paser.gui.io import read_path


def ome_group(path, data, chunks=(1, 32, 32)):
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs.update(ngff_attrs(path.stem))
    root.create_array("0", data=data, chunks=chunks)
    return root


def test_pyramid_steps_halve_until_small():
    assert pyramid_steps((4, 2048, 2048)) == 2 and pyramid_steps((100, 70), 32) == 2
    assert pyramid_steps((3, 500, 300)) == 0


def test_labels_levels_take_every_second_pixel_and_maps_average_skipping_nan(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (2, 100, 70)).astype(np.uint8)
    ome_group(tmp_path / "seg.zarr", labels)
    assert write_pyramid(tmp_path / "seg.zarr", min_side=32) == 2
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")
    np.testing.assert_array_equal(root["1"][:], labels[:, ::2, ::2])
    np.testing.assert_array_equal(root["2"][:], labels[:, ::4, ::4])
    datasets = root.attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2"]
    assert datasets[2]["coordinateTransformations"][0]["scale"] == [1.0, 4.0, 4.0]

    entropy = rng.random((1, 64, 66)).astype(np.float32)
    entropy[0, :2, :2] = np.nan  # a window wholly unfinished stays NaN, a partly finished one averages the rest
    entropy[0, 2, 2] = np.nan
    ome_group(tmp_path / "ent.zarr", entropy)
    assert write_pyramid(tmp_path / "ent.zarr", min_side=40) == 1
    level = zarr.open_group(str(tmp_path / "ent.zarr"), mode="r")["1"][:]
    assert level.shape == (1, 32, 33) and np.isnan(level[0, 0, 0])
    assert np.isclose(level[0, 1, 1], np.nanmean(entropy[0, 2:4, 2:4]))
    assert np.isclose(level[0, 5, 7], entropy[0, 10:12, 14:16].mean())


def test_the_reader_opens_a_pyramid_as_one_multiscale_layer(tmp_path):
    data = (np.arange(3 * 80 * 80) % 997).reshape(3, 80, 80).astype(np.uint16)
    ome_group(tmp_path / "scan.zarr", data)
    write_pyramid(tmp_path / "scan.zarr", min_side=32)
    [(levels, kwargs, kind)] = read_path(str(tmp_path / "scan.zarr"))
    assert kind == "image" and kwargs["multiscale"] and kwargs["metadata"]["source"] == str(tmp_path / "scan.zarr")
    assert [lv.shape for lv in levels] == [(3, 80, 80), (3, 40, 40), (3, 20, 20)]
    np.testing.assert_array_equal(levels[1][2], data[2, ::2, ::2])
    crop = levels[0][:, 8:24, 4:20]  # napari's first cut: lazy, no slice read yet
    assert not isinstance(crop, np.ndarray) and crop.shape == (3, 16, 16)
    np.testing.assert_array_equal(crop[1], data[1, 8:24, 4:20])
    lo, hi = kwargs["contrast_limits"]
    assert lo >= data.min() and hi <= data.max() and hi > lo


def test_has_pyramid_tells_a_complete_level_list_from_a_missing_or_partial_one(tmp_path):
    data = np.zeros((1, 100, 70), np.uint8)
    ome_group(tmp_path / "seg.zarr", data)
    assert not has_pyramid(tmp_path / "seg.zarr", min_side=32)  # level 0 only; two levels due
    assert has_pyramid(tmp_path / "seg.zarr", min_side=128)  # nothing to add at that size
    write_pyramid(tmp_path / "seg.zarr", min_side=32)
    assert has_pyramid(tmp_path / "seg.zarr", min_side=32)
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r+")
    del root["2"]  # a level listed but gone
    assert not has_pyramid(tmp_path / "seg.zarr", min_side=32)
    assert not has_pyramid(tmp_path / "missing.zarr")
