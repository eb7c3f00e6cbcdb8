"""Reader errors of a lazily read volume, turned into one line naming the file and the place that failed.

A whole volume is read chunk by chunk inside dask computations (the intensity-range sample, a
block on a dask worker, a session's tiles), far from any error boundary, and each reader fails
in its own way on a damaged file: tifffile ("corrupted strip cannot be reshaped"), zlib and
numcodecs ("Zstd decompression error"), h5py ("filter returned failure during read"), the OS
(permission denied, I/O error). `guarded_array` wraps a chunked source (a zarr array, tifffile's
zarr store, an HDF5 dataset) so every chunk it reads that fails raises `DamagedVolumeError`, a
`PaserInputError` whose message names the file, the slice or chunk (and z range) and what to do;
the CLI prints it as one line with exit status 2, the GUI as a notification. It pickles, so it
reaches the client intact from any dask worker.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from napari_paser.errors import PaserInputError

_READER_MODULES = ("tifffile", "zarr", "numcodecs", "h5py", "imagecodecs", "blosc", "zstandard", "fsspec")


class DamagedVolumeError(PaserInputError):
    """A part of a volume that cannot be read: `file`, `place` ("slice 5", "chunk (3, 0, 1)..."), the z
    range [z0, z1) it covers (None when unknown), what went wrong in the user's terms (`reason`), and the
    segmentation block it stopped (`block`, set by the job that was reading)."""

    def __init__(self, file: str, place: str, z: tuple[int, int] | None, reason: str, block: str | None = None,
                 context: str = "", hint: str = "") -> None:
        self.file, self.place, self.z, self.reason = str(file), place, (tuple(z) if z else None), reason
        self.block, self.context = block, context
        self.hint = hint or "the file is damaged or incomplete: re-export it (or copy it again)"
        where = f"{place} (block {block})" if block else place
        super().__init__(f"{self.file}: {where} cannot be read ({reason}){context}; {self.hint}")

    def __reduce__(self):
        return type(self), (self.file, self.place, self.z, self.reason, self.block, self.context, self.hint)

    def with_job(self, block: str, context: str, hint: str) -> DamagedVolumeError:
        """The same failure as a job reports it: the block it stopped, what was kept, what to do."""
        return DamagedVolumeError(self.file, self.place, self.z, self.reason, block, context, hint)

    def record(self) -> dict:
        """What an output's provenance keeps of the failure (JSON)."""
        return {"file": self.file, "place": self.place, "z": list(self.z) if self.z else None,
                "reason": self.reason, "block": self.block}


def is_reader_error(exc: BaseException) -> bool:
    """Whether `exc` is a reader's complaint about the data (damaged, truncated, unreadable), not a bug."""
    if isinstance(exc, DamagedVolumeError):
        return False
    if isinstance(exc, (OSError, EOFError, zlib.error)):
        return True
    module = type(exc).__module__.split(".")[0]
    if module in _READER_MODULES:
        return True
    # the readers' own checks surface as these builtins (tifffile's reshape, numcodecs' decompressors)
    return isinstance(exc, (ValueError, RuntimeError, KeyError))


def reason_of(exc: BaseException) -> str:
    """What went wrong, in the user's terms first, then the reader's own words (shortened)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    low = text.lower()
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        said = exc.strerror
    elif isinstance(exc, zlib.error) or any(w in low for w in ("decompress", "filter returned failure", "codec",
                                                               "decode", "blosc", "zstd", "lz4")):
        said = "its compressed data does not decode"
    elif "not a tiff" in low or "file signature not found" in low:
        said = "it is empty or not in its format"
    elif any(w in low for w in ("reshape", "failed to read", "truncated", "unexpected end", "corrupt")):
        said = "the data ends early or is corrupt (truncated file?)"
    else:
        said = "the reader failed"
    detail = f"{type(exc).__name__}: {text}"
    if len(detail) > 140:
        detail = detail[:137] + "..."
    return f"{said}; {detail}"


def box_of(index, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The [start, stop) range on each axis of a basic index (ints, slices, Ellipsis) into `shape`."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape) - len(index) + 1) + index[k + 1:]
    index = index + (slice(None),) * (len(shape) - len(index))
    box = []
    for i, n in zip(index, shape):
        if isinstance(i, slice):
            start, stop, _ = i.indices(n)
            box.append((start, max(start, stop)))
        else:
            try:
                j = int(i) % n if n else 0
                box.append((j, j + 1))
            except TypeError:  # fancy index: the whole axis
                box.append((0, n))
    return tuple(box)


def place_of(box: tuple[tuple[int, int], ...], shape: tuple[int, ...], chunks: tuple[int, ...] | None = None,
             unit: str = "slice") -> tuple[str, tuple[int, int] | None]:
    """("slice 5, y 0-31, x 32-63" or "chunk (3, 0, 1): slices 3-4, ...", z range) of a box in a (..., Z, Y, X)
    or (Y, X) array; the y and x ranges only when the box is not whole slices."""
    if len(box) < 2:
        return "the whole array", None
    (y0, y1), (x0, x1) = box[-2:]
    parts = []
    z = None
    if len(box) >= 3:
        z = box[-3]
        parts.append(f"{unit} {z[0]}" if z[1] - z[0] <= 1 else f"{unit}s {z[0]}-{z[1] - 1}")
    else:
        parts.append("the slice")
    if (y0, y1) != (0, shape[-2]) or (x0, x1) != (0, shape[-1]):
        parts.append(f"y {y0}-{y1 - 1}, x {x0}-{x1 - 1}")
    text = ", ".join(parts)
    if chunks is not None and len(chunks) == len(box) and all(c > 0 for c in chunks):
        grid = tuple(a // c for (a, _), c in zip(box, chunks))
        text = f"chunk {grid} ({text})"
    return text, (None if z is None else (int(z[0]), int(z[1])))


class GuardedReads:
    """An array-like over a chunked source whose failing reads raise `DamagedVolumeError` naming the place.

    `chunks` (the storage chunks, for the message) may be None; `unit` names the z axis ("page" for a
    multi-page TIFF)."""

    def __init__(self, source, file: str, chunks: tuple[int, ...] | None = None, unit: str = "slice") -> None:
        self.source, self.file, self.storage_chunks, self.unit = source, str(file), chunks, unit
        self.shape = tuple(int(s) for s in source.shape)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        try:
            return np.asarray(self.source[index])
        except Exception as exc:
            if not is_reader_error(exc):
                raise
            place, z = place_of(box_of(index, self.shape), self.shape, self.storage_chunks, self.unit)
            raise DamagedVolumeError(self.file, place, z, reason_of(exc)) from None


def guarded_array(source, file: str, chunks: tuple[int, ...], storage_chunks: tuple[int, ...] | None = None,
                  unit: str = "slice", lock: bool = False):
    """A lazy dask array over `source` (dask chunks `chunks`) whose failing chunk reads name the place."""
    import dask.array as da
    from dask.base import tokenize

    guarded = GuardedReads(source, file, storage_chunks, unit)
    name = "paser-read-" + tokenize(str(file), guarded.shape, str(guarded.dtype), chunks)
    return da.from_array(guarded, chunks=chunks, lock=lock, name=name, asarray=True,
                         meta=np.empty((0,) * guarded.ndim, guarded.dtype))


def guarded_call(read: Callable[[], np.ndarray], file: str, place: str, z: tuple[int, int] | None) -> np.ndarray:
    """`read()`, its reader errors raised as `DamagedVolumeError` at `place` of `file` (one TIFF of a folder)."""
    try:
        return read()
    except Exception as exc:
        if not is_reader_error(exc):
            raise
        raise DamagedVolumeError(file, place, z, reason_of(exc)) from None
