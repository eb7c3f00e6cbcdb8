"""The labeled-set export: region crops, a manifest, optionally the whole label volume.

Folder layout (what `read_export` reads back and other tools may read directly):

    manifest.json            {"format": "napari-paser/labeled-set", "version": 1, "classes": [...],
                              "unlabeled_value": 255, "image_shape": [...], "volume": file or null,
                              "regions": [row, ...]}
    manifest.csv             the same rows, one per region (fractions as fraction_<class> columns)
    images/region_<id>.tif   the raw image crop (the image's own dtype and values)
    labels/region_<id>.tif   uint8 class indices 0..C-1; 255 = unlabeled (unpainted pixels of a
                             region accepted as partial)
    labels_volume.tif|.zarr  optional: (Z, H, W) uint8 class indices of the whole label canvas,
                             255 where nothing is painted (a 2D image gives Z = 1)

A row holds region_id, slice, y0, x0, height, width, sampler, rank, accepted_at, split, the
correction effort of a region accepted from the model's suggestion (changed_px: pixels changed,
strokes: connected groups of them, seconds: from showing to accepting; empty for a painted
region) and the fractions of the region's pixels per class and "unlabeled"; meta["effort"] holds
the totals (`Session.effort_summary`; a session's export is `napari_paser.session.export`). Label values here are class
indices, not the napari layer values (`labels_convention` converts). The export is written into
a temporary sibling folder and renamed into place, so a failed export leaves no half folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import zarr

from learners.atomic import atomic_write_text
from learners.training import IGNORE_INDEX
from napari_paser.errors import PaserInputError
from napari_paser.data.labels_convention import layer_to_classes

FORMAT = "napari-paser/labeled-set"
VERSION = 1
FORMATS = ("tiff", "zarr")
MANIFEST_JSON, MANIFEST_CSV = "manifest.json", "manifest.csv"
FIELDS = ("region_id", "slice", "y0", "x0", "height", "width", "sampler", "rank", "accepted_at", "split",
          "changed_px", "strokes", "seconds")


@dataclass
class LabeledSet:
    """Regions (manifest rows) with their crops; `volume` is (Z, H, W)-indexable or None."""

    class_names: tuple[str, ...]
    regions: list[dict]
    labels: dict[int, np.ndarray]
    images: dict[int, np.ndarray] = field(default_factory=dict)
    volume: object | None = None
    image_shape: tuple[int, ...] | None = None
    meta: dict = field(default_factory=dict)


def layer_to_export(patch: np.ndarray, n_classes: int) -> np.ndarray:
    """Layer-convention labels -> uint8 class indices with IGNORE_INDEX where not painted."""
    classes, mask = layer_to_classes(np.asarray(patch), n_classes=n_classes)
    return np.where(mask, classes, IGNORE_INDEX).astype(np.uint8)


# ----------------------------------------------------------------------------- writing


def write_labeled_set(out: str | Path, data: LabeledSet, fmt: str = "tiff") -> Path:
    """Write `data` into folder `out` (new, empty, or a previous export, which is replaced)."""
    if fmt not in FORMATS:
        raise PaserInputError(f"unknown volume format {fmt!r}: choose 'tiff' or 'zarr'")
    out = Path(out)
    _check_target(out)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        rows = _write_crops(tmp, data)
        volume = _write_volume(tmp, data.volume, fmt) if data.volume is not None else None
        manifest = {"format": FORMAT, "version": VERSION, "classes": list(data.class_names),
                    "unlabeled_value": IGNORE_INDEX, "volume": volume,
                    "image_shape": list(data.image_shape) if data.image_shape else None,
                    "meta": data.meta, "regions": rows}
        atomic_write_text(tmp / MANIFEST_JSON, json.dumps(manifest, indent=1))
        atomic_write_text(tmp / MANIFEST_CSV, _csv(rows, data.class_names))
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PaserInputError(f"{out} is a file: choose a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_JSON).is_file():
        raise PaserInputError(f"{out} is not empty and not a previous export: choose an empty or new folder")


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_crops(folder: Path, data: LabeledSet) -> list[dict]:
    rows = []
    for row in data.regions:
        rid = int(row["region_id"])
        row = {**row, "labels_file": f"labels/region_{rid:06d}.tif", "image_file": None}
        _imwrite(folder / row["labels_file"], np.asarray(data.labels[rid], np.uint8))
        if rid in data.images:
            row["image_file"] = f"images/region_{rid:06d}.tif"
            _imwrite(folder / row["image_file"], np.asarray(data.images[rid]))
        rows.append(row)
    return rows


def _imwrite(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, photometric="minisblack", compression="zlib")


def _write_volume(folder: Path, volume, fmt: str) -> str:
    shape = tuple(int(s) for s in volume.shape)
    if fmt == "zarr":
        arr = zarr.create_array(str(folder / "labels_volume.zarr"), shape=shape, dtype=np.uint8,
                                chunks=(1, *(min(s, 512) for s in shape[1:])), fill_value=IGNORE_INDEX)
        for z in range(shape[0]):
            arr[z] = np.asarray(volume[z], np.uint8)
        return "labels_volume.zarr"
    pages = (np.asarray(volume[z], np.uint8) for z in range(shape[0]))
    tifffile.imwrite(folder / "labels_volume.tif", data=pages, shape=shape, dtype=np.uint8,
                     photometric="minisblack", compression="zlib")
    return "labels_volume.tif"


def _csv(rows: list[dict], class_names) -> str:
    names = ["unlabeled", *class_names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*FIELDS, *(f"fraction_{n}" for n in names), "image_file", "labels_file"])
    for r in rows:
        writer.writerow([_cell(r.get(f)) for f in FIELDS] + [repr(float(r["fractions"].get(n, 0.0))) for n in names]
                        + [r["image_file"] or "", r["labels_file"]])
    return buf.getvalue()


def _cell(value) -> str:
    return "" if value is None else str(value)


# ----------------------------------------------------------------------------- reading


def read_export(folder: str | Path) -> LabeledSet:
    """Read an export back: manifest rows, crops (numpy) and the volume (numpy or lazy zarr)."""
    folder = Path(folder)
    path = folder / MANIFEST_JSON
    if not path.is_file():
        raise PaserInputError(f"{folder} is not a labeled-set export (no {MANIFEST_JSON}); export a session first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PaserInputError(f"{path} is not valid JSON ({exc}); export again") from None
    if manifest.get("format") != FORMAT:
        raise PaserInputError(f"{path} is not a napari-paser labeled-set manifest (no '{FORMAT}' tag)")
    if manifest.get("version", 0) > VERSION:
        raise PaserInputError(f"{path} has export version {manifest['version']}; upgrade napari-paser to read it")
    labels, images = {}, {}
    for row in manifest["regions"]:
        rid = int(row["region_id"])
        labels[rid] = _imread(folder / row["labels_file"])
        if row.get("image_file"):
            images[rid] = _imread(folder / row["image_file"])
    volume = _read_volume(folder, manifest.get("volume"))
    shape = tuple(manifest["image_shape"]) if manifest.get("image_shape") else None
    return LabeledSet(tuple(manifest["classes"]), manifest["regions"], labels, images, volume, shape,
                      manifest.get("meta", {}))


def read_manifest_csv(folder: str | Path) -> list[dict]:
    """The CSV manifest as dicts of strings (for tools that do not read JSON)."""
    with open(Path(folder) / MANIFEST_CSV, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _imread(path: Path) -> np.ndarray:
    try:
        return tifffile.imread(path)
    except (OSError, tifffile.TiffFileError) as exc:
        raise PaserInputError(f"cannot read {path} ({exc}); the export is incomplete: export again") from None


def _read_volume(folder: Path, name: str | None):
    if not name:
        return None
    if name.endswith(".zarr"):
        return zarr.open_array(str(folder / name), mode="r")
    vol = _imread(folder / name)
    return vol[None] if vol.ndim == 2 else vol


# ----------------------------------------------------------------------------- from a layer


def labeled_set_from_layer(layer_data, class_names, region_size: int = 64) -> LabeledSet:
    """Every grid region holding painted pixels of a bare Labels layer (no image, no session)."""
    from sampling.regions import RegionPool

    arr = layer_data if hasattr(layer_data, "shape") else np.asarray(layer_data)
    if len(arr.shape) not in (2, 3):
        raise PaserInputError(f"the labels layer has {len(arr.shape)} dimensions: export needs 2D or 3D labels")
    pool = RegionPool(tuple(arr.shape), region_size)
    rows, labels, n = [], {}, len(class_names)
    for z in range(pool.shape[0]):
        plane = np.asarray(arr[z] if len(arr.shape) == 3 else arr)
        for rid in pool.slice_ids(z):
            r = pool.region(rid)
            patch = plane[r.slices[1:]]
            if not (patch > 0).any():
                continue
            labels[r.id] = layer_to_export(patch, n)
            counts = np.bincount(labels[r.id].ravel(), minlength=256) / patch.size
            fr = {"unlabeled": float(counts[IGNORE_INDEX]), **{c: float(counts[k]) for k, c in enumerate(class_names)}}
            rows.append({"region_id": r.id, "slice": r.z, "y0": r.y0, "x0": r.x0, "height": r.h, "width": r.w,
                         "sampler": "painted", "rank": None, "accepted_at": None, "split": None, "fractions": fr})
    if not rows:
        raise PaserInputError("the labels layer holds no painted pixels: paint some labels before exporting")
    return LabeledSet(tuple(class_names), rows, labels, image_shape=tuple(arr.shape),
                      meta={"region_size": list(pool.size)})
