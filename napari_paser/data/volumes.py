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
dataset) is a `PaserInputError` naming the file and the fix. Every chunk is read through
`read_errors.guarded_array`, so a damaged part (a truncated TIFF page, a zarr or HDF5 chunk
that does not decode, an unreadable slice file) fails wherever it is read, on any dask worker,
as a `DamagedVolumeError` naming the file and the slice or chunk.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from napari_paser.data.dataset import _subsample, robust_range
from napari_paser.data.read_errors import DamagedVolumeError, guarded_array, guarded_call
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

    def intensity_range(self, low: float = 0.5, high: float = 99.5, skip_damaged: bool = False,
                        ) -> tuple[float, float]:
        """Robust (lo, hi) percentiles from a sample of the volume's chunks (never the whole volume).
        `skip_damaged`: chunks that cannot be read are left out of the sample instead of failing."""
        try:
            if not skip_damaged:
                return robust_range(self.array, low, high)
            sample = np.asarray(_subsample(_SkippingDamaged(self.array)), np.float64).ravel()
            sample = sample[sample.view(np.uint64) != _DAMAGED_BITS]
            if not sample.size:
                raise PaserInputError("no part of it can be read: re-export it")
            return robust_range(sample, low, high)
        except DamagedVolumeError:
            raise
        except PaserInputError as exc:  # NaN values, a constant image: say which volume
            raise PaserInputError(f"{self.spec}: {exc}") from None


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


_DAMAGED_BITS = np.uint64(0x7FF8_0000_DEAD_BEEF)
"""A NaN of its own: a voxel of a chunk that could not be read (the volume's own NaNs stay NaN and are refused)."""


class _SkippingDamaged:
    """A volume as the intensity sample reads it when damaged chunks are skipped: float64, each chunk
    that cannot be read filled with the `_DAMAGED_BITS` NaN (then left out of the sample)."""

    def __init__(self, array: da.Array) -> None:
        self.array, self.shape, self.chunks, self.dtype = array, array.shape, array.chunks, np.dtype(np.float64)

    def __getitem__(self, index) -> np.ndarray:
        from dask.array.core import slices_from_chunks

        part = self.array[index]
        out = np.empty(part.shape, np.float64)
        for box in slices_from_chunks(part.chunks):
            try:
                out[box] = part[box].compute(scheduler="synchronous")
            except DamagedVolumeError:
                out[box].view(np.uint64)[...] = _DAMAGED_BITS
        return out

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
        raise PaserInputError(f"{where} is a {arr.ndim}D {'stack' if arr.ndim > 3 else 'array'}, shape "
                              f"{tuple(arr.shape)}: a greyscale volume (Z, Y, X) is needed; save one channel and "
                              "one time point as a 3D stack")
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
        with _TiffLog() as log, tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            kind = series.kind
            # slices written one call each (tifffile's append=True) are one series each: read them as one stack
            one_per_slice = len(tf.series) > 1 and len(series.shape) == 2 and all(
                (s.shape, s.dtype) == (series.shape, series.dtype) for s in tf.series)
            _check_tiff_series(path, series, tifffile.PHOTOMETRIC.RGB)
        broken = log.broken()
        if broken and kind != "shaped":  # tifffile's own metadata gives a truncated file's shape; nothing else does
            raise DamagedVolumeError(str(path), "its list of pages", None,
                                     f"the list ends early, so the number of slices is unknown; tifffile: {broken}")
        with _TiffLog():
            z = zarr.open(tifffile.imread(path, aszarr=True, series=0, is_shaped=not one_per_slice), mode="r")
    except PaserInputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files; all mean the same to a user
        raise PaserInputError(f"{path} is not a readable TIFF ({type(exc).__name__}: {exc}): re-save it as a "
                              "multi-page TIFF") from None
    arr = guarded_array(z, str(path), z.chunks, z.chunks if z.ndim > 2 and z.chunks[0] > 1 else None, unit="page")
    return Volume(str(path.resolve()), as_zyx(arr, str(path)), "tiff")


def _check_tiff_series(path: Path, series, rgb) -> None:
    """Refuse colour and 4D+ TIFFs, saying what the file holds in the user's terms."""
    shape, axes = tuple(series.shape), series.axes
    colour = series.keyframe.photometric == rgb or "S" in axes
    if len(shape) > 3:
        tagged = " (the TIFF marks an axis of 3 or 4 as RGB(A) colour samples)" if colour else ""
        raise PaserInputError(f"{path} is a {len(shape)}D stack, shape {shape}, axes {axes}{tagged}: segmentation "
                              "needs one greyscale (Z, Y, X) volume; save one channel and one time point as a 3D "
                              "stack")
    if colour:
        raise PaserInputError(f"{path} is an RGB(A) colour TIFF, shape {shape}: convert it to greyscale "
                              "(e.g. Fiji Image > Type > 16-bit)")


class _TiffLog:
    """While open, tifffile's log lines from this thread are kept instead of printed: a broken page list (a
    truncated or corrupt file, which tifffile reads as fewer pages than it had) is a damaged file, not a log
    line. One filter on tifffile's logger routes each record to the collector of the thread that logged it,
    so slices read at once on a threaded dask scheduler neither swallow nor steal each other's lines."""

    _local = threading.local()
    _installed = False
    _install_lock = threading.Lock()

    def __enter__(self) -> _TiffLog:
        self._install()
        self.seen: list[str] = []
        self._outer = getattr(self._local, "seen", None)
        self._local.seen = self.seen
        return self

    def __exit__(self, *_) -> None:
        self._local.seen = self._outer

    @classmethod
    def _install(cls) -> None:
        with cls._install_lock:
            if not cls._installed:
                logging.getLogger("tifffile").addFilter(cls._route)
                cls._installed = True

    @classmethod
    def _route(cls, record: logging.LogRecord) -> bool:
        """False (not printed) for a record logged inside a `_TiffLog` of its thread, kept there when a warning."""
        seen = getattr(cls._local, "seen", None)
        if seen is None:
            return True
        if record.levelno >= logging.WARNING:
            seen.append(" ".join(record.getMessage().split()))
        return False

    def broken(self) -> str:
        """The first line that says the file's structure is broken ("" when none)."""
        words = ("invalid page offset", "truncat", "corrupt")
        return next((m[:120] for m in self.seen if any(w in m.lower() for w in words)), "")


def _open_tiff_folder(folder: Path) -> Volume:
    import tifffile

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file())
    if not files:
        raise PaserInputError(f"{folder} holds no .tif/.tiff slices (and is not a zarr folder): point --image at "
                              "a TIFF stack, a folder of TIFF slices or a .zarr")
    shapes, dtype = [], None
    for f in files:  # a slice whose header cannot be read fails (named, skippable) when it is read
        try:
            with _TiffLog(), tifffile.TiffFile(f) as tf:
                page = tf.series[0]
                shapes.append(tuple(page.shape))
                dtype = dtype or page.dtype
        except Exception:
            shapes.append(None)
    readable = [(f, s) for f, s in zip(files, shapes) if s is not None]
    if not readable:
        raise PaserInputError(f"no slice in {folder} is a readable TIFF (e.g. {files[0].name}): re-export the slices")
    first_file, first = readable[0]
    if len(first) != 2:
        raise PaserInputError(f"{first_file} has shape {first}: a folder of slices needs one 2D greyscale TIFF "
                              "per slice")
    odd = next(((f, s) for f, s in readable if s != first), None)
    if odd is not None:
        raise PaserInputError(f"the slices in {folder} differ in shape: {first_file.name} is {first} but "
                              f"{odd[0].name} is {odd[1]}; every slice of a volume must have the same size")
    read = dask.delayed(_read_page, pure=True)
    arr = da.stack([da.from_delayed(read(str(f), z), first, dtype=dtype) for z, f in enumerate(files)])
    return Volume(str(folder.resolve()), as_zyx(arr, str(folder)), "tiff-folder")


def _read_page(path: str, z: int) -> np.ndarray:
    """Slice z of a TIFF folder: its file, read whole (a damaged one names the file and the slice)."""
    import tifffile

    def read() -> np.ndarray:
        with _TiffLog():
            return tifffile.imread(path, key=0)

    return guarded_call(read, path, f"slice {z} of its folder", (z, z + 1))


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
        return Volume(str(path.resolve()), as_zyx(_zarr_reads(node, path), str(path)), "zarr")
    ms = ngff_multiscales(dict(node.attrs))
    if ms is None:
        arrays = sorted(name for name, _ in node.arrays())
        raise PaserInputError(f"{path} is a zarr group without OME-Zarr multiscales metadata; point at one of its "
                              f"arrays instead ({', '.join(path.name + '/' + a for a in arrays[:5]) or 'none found'})")
    level0 = ms[0]["datasets"][0]["path"]
    arr = _zarr_reads(node[level0], path)
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms[0].get("axes", [])]
    if axes and len(axes) == arr.ndim:
        arr = _squeeze_ngff(arr, axes, path)
    return Volume(str(path.resolve()), as_zyx(arr, f"{path} (OME-Zarr level {level0})"), "ome-zarr")


def _zarr_reads(array, path: Path) -> da.Array:
    """A zarr array read lazily by its own chunks, each failing chunk named (see `read_errors`)."""
    chunks = tuple(int(c) for c in array.chunks)
    return guarded_array(array, str(path), chunks, chunks)


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
    arr = guarded_array(dset, f"{file}:{inner}", chunks, dset.chunks, lock=True)
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
