"""Dataset folders: exact round trip, one clear error per bad input, splits, normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_paser.data.dataset import (
    SPLIT_NAMES,
    Dataset,
    fingerprint,
    load_split,
    make_splits,
    normalise,
    read_dataset,
    robust_range,
    save_split,
    validate_arrays,
    write_dataset,
)
from napari_paser.errors import PaserInputError

def _arrays(n: int = 6, h: int = 12, w: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60000, (n, h, w), dtype=np.uint16)
    labels = rng.integers(0, 3, (n, h, w), dtype=np.uint8)
    return images, labels


def _folder(tmp_path: Path, images, labels, classes=None) -> Path:
    """A dataset folder written with plain tifffile, so bad content is possible."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if images is not None:
        tifffile.imwrite(tmp_path / "images.tif", images)
    if labels is not None:
        tifffile.imwrite(tmp_path / "labels.tif", labels)
    if classes is not None:
        (tmp_path / "classes.json").write_text(json.dumps(classes))
    return tmp_path


# ----------------------------------------------------------------------------- round trip


def test_write_read_round_trip_exact(tmp_path):
    images, labels = _arrays()
    split = {"pretrain": [0], "rl": [1], "finetune": [2, 3], "val": [4], "test": [5]}
    root = write_dataset(tmp_path / "ds", images, labels, ("pore", "ysz", "ni"), split)
    files = sorted(p.name for p in root.iterdir())
    assert files == ["classes.json", "images.tif", "labels.tif", "split.json"]
    ds = read_dataset(root)
    assert isinstance(ds, Dataset) and ds.root == root
    assert ds.images.dtype == np.uint16 and np.array_equal(ds.images, images)
    assert ds.labels.dtype == np.uint8 and np.array_equal(ds.labels, labels)
    assert ds.class_names == ("pore", "ysz", "ni") and ds.n_classes == 3
    assert ds.split == split
    assert fingerprint(ds.images, ds.labels) == fingerprint(images, labels)
    x, y = ds.take("finetune")
    assert np.array_equal(x, images[2:4]) and np.array_equal(y, labels[2:4])
    with tifffile.TiffFile(root / "images.tif") as tf:
        assert tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert not list(root.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_round_trip_float_2d_and_default_split(tmp_path):
    image = np.linspace(0, 1, 12 * 5, dtype=np.float32).reshape(12, 5)  # width 5: not RGB
    labels = (image > 0.5).astype(np.int64)
    ds = read_dataset(write_dataset(tmp_path, image, labels))
    assert ds.images.shape == (1, 12, 5) and ds.images.dtype == np.float32
    assert np.array_equal(ds.images[0], image) and ds.n_classes == 2
    assert ds.split == {}  # one slice: too few to split
    with pytest.raises(PaserInputError, match="no split 'test'"):
        ds.take("test")
    images, labels = _arrays(n=10, w=3)  # width 3 must not be taken for RGB
    ds = read_dataset(write_dataset(tmp_path / "b", images, labels))
    assert ds.images.shape == (10, 12, 3) and ds.split == make_splits(10)
    ds = read_dataset(write_dataset(tmp_path / "b", images[:2], labels[:2]))  # stale split.json goes
    assert ds.images.shape == (2, 12, 3) and ds.split == {}


def test_fingerprint_changes_with_content_and_dtype():
    images, labels = _arrays()
    fp = fingerprint(images, labels)
    assert len(fp) == 16 and int(fp, 16) >= 0
    changed = images.copy()
    changed[0, 0, 0] += 1
    assert fingerprint(changed, labels) != fp
    assert fingerprint(images.astype(np.int32), labels) != fp
    assert fingerprint(images.reshape(6, 10, 12), labels.reshape(6, 10, 12)) != fp


# ----------------------------------------------------------------------------- bad inputs


def _error(folder: Path, **kw) -> str:
    with pytest.raises(PaserInputError) as info:
        read_dataset(folder, **kw)
    return str(info.value)


def test_missing_folder_and_files(tmp_path):
    msg = _error(tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg
    (tmp_path / "empty").mkdir()
    assert "empty" in _error(tmp_path / "empty") and "images.tif" in _error(tmp_path / "empty")
    images, labels = _arrays()
    msg = _error(_folder(tmp_path / "a", None, labels))
    assert "images.tif" in msg and "labels.tif" in msg.split("has:")[1]  # lists what is there
    msg = _error(_folder(tmp_path / "b", images, None))
    assert "labels.tif" in msg and "has no" in msg
    (tmp_path / "afile").write_text("x")
    assert "not a dataset folder" in _error(tmp_path / "afile")


def test_unreadable_tiff(tmp_path):
    images, labels = _arrays()
    root = _folder(tmp_path, images, labels)
    (root / "labels.tif").write_bytes(b"this is not a tiff at all")
    msg = _error(root)
    assert "labels.tif" in msg and "not a readable TIFF" in msg


def test_rgb_images_refused(tmp_path):
    images, labels = _arrays(n=1)
    rgb = np.stack([images[0]] * 3, axis=-1)
    msg = _error(_folder(tmp_path / "a", rgb, labels))
    assert "images.tif" in msg and "RGB" in msg and "greyscale" in msg
    msg = _error(_folder(tmp_path / "b", np.stack([rgb, rgb]), labels))
    assert "RGB" in msg


def test_shape_mismatch_names_both_shapes(tmp_path):
    images, labels = _arrays()
    msg = _error(_folder(tmp_path, images, labels[:, :-1]))
    assert "images.tif" in msg and "shape" in msg
    assert "(6, 12, 10)" in msg and "(6, 11, 10)" in msg


def test_labels_non_integer_and_out_of_range(tmp_path):
    images, labels = _arrays()
    msg = _error(_folder(tmp_path / "a", images, labels.astype(np.float32)))
    assert "labels.tif" in msg and "integer" in msg
    bad = labels.astype(np.int16)
    bad[4, 0, 0] = -2
    msg = _error(_folder(tmp_path / "b", images, bad))
    assert "labels.tif" in msg and "outside" in msg and "-2" in msg and "slice(s) 4" in msg
    msg = _error(_folder(tmp_path / "c", images, labels), n_classes=2)
    assert "outside 0..1" in msg and "values 2" in msg
    msg = _error(_folder(tmp_path / "d", images, labels, classes=["pore", "solid"]))
    assert "outside" in msg and "classes.json" in msg
    msg = _error(_folder(tmp_path / "e", images, labels, classes=["a", "b", "c"]), n_classes=4)
    assert "classes.json" in msg and "n_classes=4" in msg


def test_nan_and_dimensions(tmp_path):
    images, labels = _arrays()
    floats = images.astype(np.float32)
    floats[3, 2, 2] = np.nan
    msg = _error(_folder(tmp_path / "a", floats, labels))
    assert "images.tif" in msg and "NaN" in msg and "slice(s) 3" in msg
    floats[3, 2, 2] = np.inf
    assert "slice(s) 3" in _error(_folder(tmp_path / "b", floats, labels))
    with pytest.raises(PaserInputError, match="dimensions"):
        validate_arrays(np.zeros(5), np.zeros(5, np.uint8), source="layer")
    with pytest.raises(PaserInputError, match="dimensions"):
        validate_arrays(np.zeros((2, 2, 4, 4, 4)), np.zeros((2, 2, 4, 4, 4), np.uint8))


def test_validate_arrays_in_memory():
    images, labels = _arrays()
    x, y, n = validate_arrays(images[0], labels[0].astype(np.int32), None, "layer 'scan'")
    assert x.shape == y.shape == (1, 12, 10) and y.dtype == np.uint8 and n == 3
    with pytest.raises(PaserInputError, match="layer 'scan'.*shape"):
        validate_arrays(images, labels[:3], 3, "layer 'scan'")


def test_bad_split_json(tmp_path):
    images, labels = _arrays()
    root = _folder(tmp_path, images, labels)
    (root / "split.json").write_text(json.dumps({"test": [0, 9]}))
    msg = _error(root)
    assert "split.json" in msg and "outside" in msg and "9" in msg
    (root / "split.json").write_text(json.dumps({"test": [0, 1], "val": [1]}))
    assert "disjoint" in _error(root)
    (root / "split.json").write_text(json.dumps({"train": [0]}))
    assert "unknown split" in _error(root)
    (root / "split.json").write_text("{")
    assert "split.json" in _error(root) and "JSON" in _error(root)


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("mode", ["blocks", "interleaved"])
@pytest.mark.parametrize("n", [5, 7, 50, 101])
def test_splits_partition_all_slices(n, mode):
    split = make_splits(n, seed=3, mode=mode)
    assert tuple(split) == SPLIT_NAMES
    everything = sorted(i for v in split.values() for i in v)
    assert everything == list(range(n))  # disjoint and covering
    assert all(v == sorted(v) and len(v) >= 1 for v in split.values())
    sizes = [len(split[k]) for k in ("pretrain", "rl", "finetune")]
    assert max(sizes) - min(sizes) <= 1
    assert split == make_splits(n, seed=3, mode=mode)
    assert make_splits(n, seed=4, mode=mode) != split


def test_split_sizes_and_blocks_contiguous():
    split = make_splits(50)
    assert len(split["test"]) == 10 and len(split["val"]) == 5
    for v in split.values():
        assert v == list(range(v[0], v[0] + len(v)))  # each split one z range
    interleaved = make_splits(50, mode="interleaved")
    assert any(np.diff(v).max() > 1 for v in interleaved.values())


def test_too_few_slices_and_bad_mode():
    with pytest.raises(PaserInputError, match="at least 5"):
        make_splits(4)
    with pytest.raises(PaserInputError, match="blocks"):
        make_splits(10, mode="random")
    with pytest.raises(PaserInputError, match="lower them"):
        make_splits(10, val=0.4, test=0.4)


def test_save_load_split(tmp_path):
    split = make_splits(20, seed=1)
    save_split(tmp_path / "split.json", split, 20)
    assert load_split(tmp_path / "split.json", 20) == split
    with pytest.raises(PaserInputError, match="outside"):
        load_split(tmp_path / "split.json", 10)


# ----------------------------------------------------------------------------- normalisation


def test_robust_range_and_normalise():
    x = np.arange(10_000, dtype=np.float64).reshape(1, 100, 100)
    lo, hi = robust_range(x)
    assert lo == pytest.approx(np.percentile(x, 0.5)) and hi == pytest.approx(np.percentile(x, 99.5))
    y = normalise(x, lo, hi)
    assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == 1.0
    assert y.ravel()[int(round(lo))] == pytest.approx(0.0, abs=1e-4)
    assert np.isclose(y, 0.5, atol=1e-3).any()
    assert (y == 0).mean() == pytest.approx(0.005, abs=0.001)  # below the 0.5 percentile
    with pytest.raises(PaserInputError, match="constant image"):
        robust_range(np.full((3, 4, 4), 7, np.uint16))
    with pytest.raises(PaserInputError, match="greater"):
        normalise(x, 2.0, 2.0)


def test_robust_range_subsamples_large_volumes():
    big = np.broadcast_to(np.arange(4096, dtype=np.uint16).reshape(1, 64, 64), (5000, 64, 64))
    lo, hi = robust_range(big)  # 20M elements: estimated on a subsample
    assert lo == pytest.approx(np.percentile(big[0], 0.5), abs=1)
    assert hi == pytest.approx(np.percentile(big[0], 99.5), abs=1)
    assert robust_range(big) == (lo, hi)


# ----------------------------------------------------------------------------- real data


def test_read_real_soc_data(soc_data):
    ds = read_dataset(soc_data)
    assert ds.images.shape == ds.labels.shape == (50, 501, 501)
    assert ds.images.dtype == np.uint16
    assert set(np.unique(ds.labels)) == {0, 1, 2} and ds.n_classes == 3
    assert sorted(i for v in ds.split.values() for i in v) == list(range(50))
    lo, hi = robust_range(ds.images)
    assert 15000 < lo < hi < 50000
