"""The labeled-set export: crops + manifest (JSON and CSV) + optional volume, read back identically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_paser.errors import PaserInputError
from napari_paser.data.export import (
    labeled_set_from_layer, read_export, read_manifest_csv, write_labeled_set,
)
from learners.training import IGNORE_INDEX
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.session.core import Session


def image(z: int = 2, size: int = 48, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((z, size, size)) * 4000).astype(np.uint16)


@pytest.fixture
def labeled(tmp_path) -> Session:
    """Three accepted regions: a full one from a proposal, a partial border one, a manual one."""
    s = Session.create(tmp_path / "s", image(), region_size=32)
    (p,) = s.propose(1, "random", seed=3)
    r = s.region(p.region_id)
    s.accept(p.region_id, np.full((r.h, r.w), 2, np.uint8))
    border = s.region(3)  # 16 x 16 at the bottom right of slice 0
    patch = np.full((border.h, border.w), 3, np.uint8)
    patch[:2] = 0
    s.accept(3, patch, confirm_partial=True)
    s.labels[1, 32:48, 0:32] = 1
    s.accept_painted(z=1)
    s.labels[0, 0, 0] = 1  # painted, never accepted: only in the full volume
    return s


def expected_volume(s: Session) -> np.ndarray:
    classes, mask = layer_to_classes(np.asarray(s.labels), n_classes=3)
    return np.where(mask, classes, IGNORE_INDEX).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["tiff", "zarr"])
def test_round_trip_gives_identical_arrays(labeled, tmp_path, fmt):
    out = labeled.export(tmp_path / "export", full_volume=True, fmt=fmt)
    back = read_export(out)
    assert back.class_names == ("pore", "binder", "active") and back.image_shape == (2, 48, 48)
    assert [r["region_id"] for r in back.regions] == [a.region_id for a in labeled.accepted]
    for rec in labeled.accepted:
        region = labeled.region(rec.region_id)
        img, lab = back.images[rec.region_id], back.labels[rec.region_id]
        assert img.dtype == np.uint16 and lab.dtype == np.uint8
        np.testing.assert_array_equal(img, labeled.raw_crop(region))
        classes, mask = layer_to_classes(labeled.accepted_labels(rec.region_id), n_classes=3)
        np.testing.assert_array_equal(lab, np.where(mask, classes, IGNORE_INDEX))
    assert (back.labels[3][:2] == IGNORE_INDEX).all() and (back.labels[3][2:] == 2).all()
    np.testing.assert_array_equal(np.asarray(back.volume), expected_volume(labeled))
    assert np.asarray(back.volume)[0, 0, 0] == 0


def test_manifest_json_and_csv_hold_every_field(labeled, tmp_path):
    out = labeled.export(tmp_path / "export")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["unlabeled_value"] == 255 and manifest["volume"] is None
    rows = read_manifest_csv(out)
    assert [int(r["region_id"]) for r in rows] == [row["region_id"] for row in manifest["regions"]]
    for row, rec in zip(rows, labeled.accepted):
        assert (int(row["slice"]), int(row["y0"]), int(row["x0"])) == (rec.z, rec.y0, rec.x0)
        assert (int(row["height"]), int(row["width"])) == (rec.h, rec.w)
        assert row["sampler"] == rec.sampler and row["accepted_at"] == rec.accepted_at
        assert row["rank"] == ("" if rec.rank is None else str(rec.rank))
        for name, value in rec.fractions.items():
            assert float(row[f"fraction_{name}"]) == value
    assert rows[0]["sampler"] == "random" and rows[-1]["sampler"] == "manual"
    assert float(rows[1]["fraction_unlabeled"]) == pytest.approx(2 / 16)


def test_export_replaces_a_previous_export_and_refuses_other_folders(labeled, tmp_path):
    out = labeled.export(tmp_path / "export", full_volume=True)
    assert (out / "labels_volume.tif").exists()
    labeled.export(out)  # a re-export replaces the folder
    assert not (out / "labels_volume.tif").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(PaserInputError, match="not empty"):
        labeled.export(other)
    with pytest.raises(PaserInputError, match="tiff' or 'zarr"):
        labeled.export(tmp_path / "x", fmt="hdf5")


def test_export_errors(tmp_path):
    s = Session.create(tmp_path / "s", image(), region_size=32)
    with pytest.raises(PaserInputError, match="no accepted regions"):
        s.export(tmp_path / "e")
    s.export(tmp_path / "e", full_volume=True)  # an empty canvas is still a volume
    assert (read_export(tmp_path / "e").volume == IGNORE_INDEX).all()
    with pytest.raises(PaserInputError, match="not a labeled-set export"):
        read_export(tmp_path / "s")


def test_2d_session_export_has_one_slice(tmp_path):
    s = Session.create(tmp_path / "s", image()[0], region_size=32)
    s.accept(0, np.ones((32, 32), np.uint8))
    back = read_export(s.export(tmp_path / "e", full_volume=True))
    assert back.volume.shape == (1, 48, 48) and back.regions[0]["slice"] == 0 and back.image_shape == (48, 48)


def test_a_bare_labels_layer_exports_its_painted_regions(tmp_path):
    layer = np.zeros((2, 40, 40), np.uint8)
    layer[1, 0:5, 35:40] = 2
    data = labeled_set_from_layer(layer, ["a", "b"], region_size=32)
    assert [r["region_id"] for r in data.regions] == [5] and data.images == {}
    back = read_export(write_labeled_set(tmp_path / "e", data))
    lab = back.labels[5]
    assert lab.shape == (32, 8) and (lab[:5, 3:] == 1).all() and (lab[5:] == IGNORE_INDEX).all()
    with pytest.raises(PaserInputError, match="no painted"):
        labeled_set_from_layer(np.zeros((8, 8), np.uint8), ["a", "b"])
