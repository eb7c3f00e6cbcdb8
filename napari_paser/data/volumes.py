"""Whole volumes, read lazily: multi-page TIFF, a folder of TIFF slices, zarr / OME-Zarr, HDF5.

A reconstruction is 1000-2000 slices of 2000^2 pixels or more (8-16 GB as uint16), so nothing
here reads a volume whole: `open_volume(spec)` returns a `Volume` whose `array` is a lazy
(Z, Y, X) dask array, read chunk by chunk (TIFF page by page through tifffile's zarr store,
a TIFF folder file by file, zarr and HDF5 by their own chunks). A volume is named by a
picklable spec string, so dask workers reopen it themselves (file handles do not travel):

    scan.tif                  multi-page TIFF (or one 2D page: Z = 1)
    slices/                   a folder of one TIFF per slice, in name order
    scan.zarr                 a zarr array, or an OME-Zarr image (NGFF multiscales: level 0)
    scan.h5:/entry/data       an HDF5 dataset (.h5, .hdf5, .hdf, .nxs)

Anything else (RGB, time series or multichannel images, slices of differing shapes, a missing
dataset) is a `PaserInputError` naming the file and the fix.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from napari_paser.data.dataset import robust_range
from napari_paser.errors import PaserInputError

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
_HDF5_SPEC = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|nxs)):(?P<path>/.*)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Volume:
    """A lazily read (Z, Y, X) greyscale volume and the spec (absolute) that reopens it anywhere."""

    spec: str
    array: da.Array
    kind: str  # "tiff", "tiff-folder", "zarr", "ome-zarr", "hdf5"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        """One block as numpy, read in this thread (never through a distributed client)."""
        return np.asarray(self.array[z, y, x].compute(scheduler="synchronous"))

    def intensity_range(self, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
        """Robust (lo, hi) percentiles from a sample of the volume's chunks (never the whole volume)."""
        return robust_range(self.array, low, high)


def open_volume(spec: str | Path) -> Volume:
    """The volume named by `spec` (see the module doc), lazily."""
    text = str(spec)
    m = _HDF5_SPEC.match(text)
    if m or Path(text).suffix.lower() in HDF5_SUFFIXES:
        return _open_hdf5(text, m)
    path = Path(text)
    if not path.exists():
        raise PaserInputError(f"volume {path} does not exist: give a TIFF stack, a folder of TIFF slices, "
                              "a .zarr folder or FILE.h5:/dataset")
    if path.is_dir() and not _is_zarr(path):
        return _open_tiff_folder(path)
    if path.is_dir():
        return _open_zarr(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _open_tiff(path)
    raise PaserInputError(f"{path}: unknown volume format {path.suffix!r}: use a TIFF stack, a folder of TIFF "
                          "slices, a .zarr folder (zarr or OME-Zarr) or FILE.h5:/dataset")


@functools.lru_cache(maxsize=8)
def cached_volume(spec: str) -> Volume:
    """`open_volume` once per process (dask workers read many blocks of one volume)."""
    return open_volume(spec)


IN_PLACE_KINDS = ("zarr", "ome-zarr", "hdf5")
"""Chunked formats a session reads in place instead of copying (any block reads fast)."""


class VolumeView:
    """A volume as a read-only array of a session's shape ((Y, X) for a 2D image, else (Z, Y, X)):
    each read is computed in the calling thread (never through a dask.distributed client that
    may be the process's default), so napari and the session read only what they show or use."""

    def __init__(self, volume: Volume, ndim: int = 3) -> None:
        self.volume = volume
        self.array = volume.array if ndim == 3 else volume.array[0]
        self.shape, self.dtype = tuple(int(s) for s in self.array.shape), np.dtype(volume.dtype)
        self.ndim = len(self.shape)

    @property
    def chunks(self) -> tuple:
        return self.array.chunks

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.array[index].compute(scheduler="synchronous"))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)


def spec_file(spec: str | Path) -> Path:
    """The file or folder a volume spec names (the HDF5 file of `scan.h5:/entry/data`)."""
    m = _HDF5_SPEC.match(str(spec))
    return Path(m.group("file") if m else str(spec))


# ----------------------------------------------------------------------------- checks


def as_zyx(arr: da.Array, where: str) -> da.Array:
    """(Y, X) -> (1, Y, X); (Z, Y, X) kept; anything else refused with the reason."""
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise PaserInputError(f"{where} has shape {tuple(arr.shape)} ({arr.ndim}D): a greyscale volume (Z, Y, X) "
                              "is needed; export one channel and one time point")
    if arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4:
        raise PaserInputError(f"{where} looks like an RGB(A) image, shape {tuple(arr.shape)}: convert it to "
                              "greyscale (one value per voxel)")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise PaserInputError(f"{where} holds {arr.dtype} values: a real-valued greyscale volume is needed")
    if min(arr.shape) < 1:
        raise PaserInputError(f"{where} is empty, shape {tuple(arr.shape)}")
    return arr


# ----------------------------------------------------------------------------- TIFF


def _open_tiff(path: Path) -> Volume:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            if series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB or "S" in series.axes:
                raise PaserInputError(f"{path} is an RGB(A) TIFF, shape {series.shape}: convert it to greyscale "
                                      "(e.g. Fiji Image > Type > 16-bit)")
        store = tifffile.imread(path, aszarr=True, series=0)
        arr = da.from_zarr(zarr.open(store, mode="r"))
    except PaserInputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files; all mean the same to a user
        raise PaserInputError(f"{path} is not a readable TIFF ({type(exc).__name__}: {exc}): re-save it as a "
                              "multi-page TIFF") from None
    return Volume(str(path.resolve()), as_zyx(arr, str(path)), "tiff")


def _open_tiff_folder(folder: Path) -> Volume:
    import tifffile

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file())
    if not files:
        raise PaserInputError(f"{folder} holds no .tif/.tiff slices (and is not a zarr folder): point --image at "
                              "a TIFF stack, a folder of TIFF slices or a .zarr")
    shapes, dtype = [], None
    for f in files:
        try:
            with tifffile.TiffFile(f) as tf:
                page = tf.series[0]
                shapes.append(tuple(page.shape))
                dtype = dtype or page.dtype
        except Exception as exc:
            raise PaserInputError(f"{f} is not a readable TIFF ({type(exc).__name__}): remove or re-save it") from None
    first = shapes[0]
    if len(first) != 2:
        raise PaserInputError(f"{files[0]} has shape {first}: a folder of slices needs one 2D greyscale TIFF "
                              "per slice")
    odd = next((f for f, s in zip(files, shapes) if s != first), None)
    if odd is not None:
        raise PaserInputError(f"the slices in {folder} differ in shape: {files[0].name} is {first} but {odd.name} "
                              f"is {shapes[files.index(odd)]}; every slice of a volume must have the same size")
    read = dask.delayed(_read_page, pure=True)
    arr = da.stack([da.from_delayed(read(str(f)), first, dtype=dtype) for f in files])
    return Volume(str(folder.resolve()), as_zyx(arr, str(folder)), "tiff-folder")


def _read_page(path: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(path, key=0)


# ----------------------------------------------------------------------------- zarr and OME-Zarr


def _is_zarr(path: Path) -> bool:
    return any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup", ".zattrs"))


def ngff_multiscales(attrs: dict) -> list | None:
    """The NGFF `multiscales` list of a group's attributes (v0.4 top level, v0.5 under "ome")."""
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _open_zarr(path: Path) -> Volume:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise PaserInputError(f"{path} is not a readable zarr store ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Array):
        return Volume(str(path.resolve()), as_zyx(da.from_zarr(node), str(path)), "zarr")
    ms = ngff_multiscales(dict(node.attrs))
    if ms is None:
        arrays = sorted(name for name, _ in node.arrays())
        raise PaserInputError(f"{path} is a zarr group without OME-Zarr multiscales metadata; point at one of its "
                              f"arrays instead ({', '.join(path.name + '/' + a for a in arrays[:5]) or 'none found'})")
    level0 = ms[0]["datasets"][0]["path"]
    arr = da.from_zarr(node[level0])
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms[0].get("axes", [])]
    if axes and len(axes) == arr.ndim:
        arr = _squeeze_ngff(arr, axes, path)
    return Volume(str(path.resolve()), as_zyx(arr, f"{path} (OME-Zarr level {level0})"), "ome-zarr")


def _squeeze_ngff(arr: da.Array, axes: list[dict], path: Path) -> da.Array:
    """Drop singleton time/channel axes; refuse several channels (RGB, multichannel) or time points."""
    keep = []
    for i, ax in enumerate(axes):
        kind = ax.get("type") or {"t": "time", "c": "channel"}.get(ax.get("name"), "space")
        if kind == "channel" and arr.shape[i] > 1:
            rgb = " (RGB)" if arr.shape[i] in (3, 4) else ""
            raise PaserInputError(f"{path} has {arr.shape[i]} channels{rgb}, axes "
                                  f"{''.join(a.get('name', '?') for a in axes)} shape {tuple(arr.shape)}: "
                                  "segmentation needs one greyscale channel; write that channel as its own image")
        if kind == "time" and arr.shape[i] > 1:
            raise PaserInputError(f"{path} is a 4D time series ({arr.shape[i]} time points, shape "
                                  f"{tuple(arr.shape)}): write one time point as its own (Z, Y, X) image")
        if kind in ("channel", "time"):
            continue
        keep.append(i)
    return arr[tuple(slice(None) if i in keep else 0 for i in range(arr.ndim))]


# ----------------------------------------------------------------------------- HDF5


def _open_hdf5(text: str, m: re.Match | None) -> Volume:
    import h5py

    file, inner = (m.group("file"), m.group("path")) if m else (text, None)
    if not Path(file).is_file():
        raise PaserInputError(f"HDF5 file {file} does not exist: check the path (FILE.h5:/dataset)")
    try:
        h5 = h5py.File(file, "r")
    except OSError as exc:
        raise PaserInputError(f"{file} is not a readable HDF5 file ({exc})") from None
    datasets = _h5_datasets(h5)
    if not inner:
        raise PaserInputError(f"name the dataset inside {file}: {file}:/path, e.g. "
                              f"{', '.join(f'{file}:{d}' for d in datasets[:3]) or '(the file holds no datasets)'}")
    if inner not in h5 or not isinstance(h5[inner], h5py.Dataset):
        raise PaserInputError(f"{file} has no dataset {inner}; its datasets are: "
                              f"{', '.join(datasets[:8]) or 'none'}")
    dset = h5[inner]
    chunks = dset.chunks or (1,) * (dset.ndim - 2) + tuple(dset.shape[-2:])
    arr = da.from_array(dset, chunks=chunks, lock=True)
    return Volume(f"{Path(file).resolve()}:{inner}", as_zyx(arr, f"{file}:{inner}"), "hdf5")


def _h5_datasets(h5) -> list[str]:
    import h5py

    found: list[str] = []
    h5.visititems(lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
    return found


# ----------------------------------------------------------------------------- OME-Zarr writing


def ngff_attrs(name: str, axes: str = "zyx", level0: str = "0", scale: tuple[float, ...] | None = None) -> dict:
    """NGFF v0.4 `multiscales` attributes for one single-level image (what napari and Fiji read)."""
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    scale = scale or (1.0,) * len(axes)
    return {"multiscales": [{
        "version": "0.4",
        "name": name,
        "axes": [{"name": a, "type": kinds[a]} for a in axes],
        "datasets": [{"path": level0, "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}],
    }]}


def describe(volume: Volume) -> str:
    """One line for logs: kind, shape, dtype, size."""
    gb = np.prod(volume.shape) * volume.dtype.itemsize / 1e9
    return f"{volume.kind} {json.dumps(list(volume.shape))} {volume.dtype} ({gb:.2f} GB)"
