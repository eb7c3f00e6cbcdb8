"""A labeling session's folder: its on-disk layout, its files, and the `Store` that holds it open (the lock,
the arrays, the commit point); the records session.json holds are in `session.records`.

A session folder holds

    session.json     the state: classes, accepted regions, proposals, model files, learning
                     curve; written atomically, it is the commit point of every change
    image.zarr       the image (raw values, the input's own 2D or 3D shape), one chunk per slice tile;
                     absent when session.json's image names a "path": a zarr, OME-Zarr or HDF5 image
                     read in place (`open_image`), never copied
    labels.zarr      the label canvas, uint8 in the napari Labels convention (0 = not labeled,
                     class k = k + 1), same shape as the image; napari paints into it directly
    maps.zarr/       f0's prediction (class indices), entropy and BALD, per slice
    regions/<id>-<seq>.npy the label crop of each accepted region (layer convention), written
                     atomically before session.json names it: the authoritative labeled set
    suggestions/<id>-<seq>.npy the model's guess shown for a proposed region (layer convention):
                     never a label; what the accepted labels are compared with to count corrections
    models/<role>-<version>.pt  checkpoints; session.json names the current file of each role

    session.json.bak the previous commit's session.json (a hard link to it, so no copy), kept at
                     every commit: a damaged session.json is restored from it on open
    session.lock     the holder of the folder (see `session.lock`)

Every file is written through a temporary file and a rename (zarr 3's LocalStore writes chunks
that way too), and session.json is written last, so a crash at any moment leaves the last
complete state: files that session.json does not name are ignored and overwritten later, and
temporary files a kill left behind are removed on the next open (`clean_temp_files`).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zarr

from learners.atomic import atomic_path, is_temp_name
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.errors import InputError, PaserInputError
from napari_paser.session import lock
from napari_paser.session.lock import LOCK_FILE
from napari_paser.session.records import (  # noqa: F401 (DEFAULT_CLASSES, CurvePoint: re-exported)
    BACKUP_FILE, DEFAULT_CLASSES, STATE_FILE, AcceptedRegion, ClassSpec, CurvePoint, Proposal, State, load_state,
    now_iso, state_digest, write_state,
)
from sampling.regions import Region, RegionPool

IMAGE, LABELS, MAPS, REGIONS, MODELS = "image.zarr", "labels.zarr", "maps.zarr", "regions", "models"
SUGGESTIONS = "suggestions"
OWN_NAMES = {STATE_FILE, BACKUP_FILE, LOCK_FILE, IMAGE, LABELS, MAPS, REGIONS, MODELS, SUGGESTIONS}
_ZARR_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr LocalStore's temporary chunk files
CHUNK = 512  # chunk edge in y and x; one slice per chunk in z
MAP_NAMES = {"prediction": np.uint8, "entropy": np.float32, "bald": np.float32}
"""f0's maps stored per slice in maps.zarr/ (see `session.maps`), by name and dtype."""
MIN_SIDE = 16

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- folder


def check_new_folder(folder: Path) -> None:
    """A new session needs an absent or empty folder, or one holding only an unfinished create."""
    if (folder / STATE_FILE).exists():
        raise PaserInputError(f"{folder} already holds a session: open it with Session.open, or choose another folder")
    if folder.exists() and not folder.is_dir():
        raise PaserInputError(f"{folder} is a file: choose a folder for the session")
    if folder.exists():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in OWN_NAMES)
        if foreign:
            raise PaserInputError(
                f"{folder} is not empty ({', '.join(foreign[:5])}): choose an empty or new folder for the session"
            )


def clean_temp_files(folder: Path) -> int:
    """Remove the temporary files a kill left in the folder (ours and zarr's); returns how many."""
    removed = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if is_temp_name(name) or _ZARR_PARTIAL.search(name):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def check_arrays(folder: Path, expected: dict[str, tuple[tuple[int, ...], np.dtype]], arrays: dict) -> None:
    """Each array must have the shape and dtype session.json records; one line says which does not."""
    for name, (shape, dtype) in expected.items():
        arr = arrays[name]
        got_shape, got_dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
        if got_shape != tuple(shape) or got_dtype != np.dtype(dtype):
            raise PaserInputError(
                f"session {folder}: {name} has shape {got_shape} and dtype {got_dtype} but session.json records "
                f"shape {tuple(shape)} and dtype {np.dtype(dtype)}: the folder's files do not belong together; "
                f"restore {name} from a copy of this session folder, or create a new session"
            )


def crops_of(folder: Path, region_id: int) -> list[int]:
    """The seqs of the saved crops of a region, oldest first."""
    return sorted(int(p.stem.split("-")[1]) for p in (folder / REGIONS).glob(f"{int(region_id)}-*.npy")
                  if p.stem.split("-")[1].isdigit())


def chunks_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    yx = tuple(min(s, CHUNK) for s in shape[-2:])
    return (1,) * (len(shape) - 2) + yx


def create_array(path: Path, shape: tuple[int, ...], dtype, fill=0) -> zarr.Array:
    return zarr.create_array(str(path), shape=shape, chunks=chunks_for(shape), dtype=dtype,
                             fill_value=fill, overwrite=True)


def open_array(path: Path, mode: str = "r+") -> zarr.Array:
    try:
        return zarr.open_array(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for a missing or damaged store
        raise PaserInputError(f"cannot open {path} ({type(exc).__name__}: {exc}); the session folder is incomplete") from None


def open_image(folder: Path, image: dict):
    """The session's image: its own image.zarr, or the source it reads in place (`image["path"]`, a volume
    spec), checked against the shape and dtype session.json records; a source that moved, changed or
    cannot be read is one PaserInputError line naming the path and the fix."""
    from napari_paser.data.volumes import VolumeView, open_volume, spec_file

    spec = image.get("path")
    if not spec:
        return open_array(folder / IMAGE, "r")
    fix = (f"move it back there, or point the session at its new place: paser session relink --session {folder} "
           "--image NEW_PATH")
    if not spec_file(spec).exists():
        raise PaserInputError(f"session {folder}: its image is read in place from {spec}, which does not exist any "
                              f"more (moved or deleted?): {fix}")
    try:
        view = VolumeView(open_volume(spec), len(image["shape"]))
    except PaserInputError as exc:
        raise PaserInputError(f"session {folder}: its image {spec} cannot be read ({exc}): {fix}") from None
    if view.shape != tuple(image["shape"]) or view.dtype != np.dtype(image["dtype"]):
        raise PaserInputError(
            f"session {folder}: the image at {spec} has shape {view.shape} and dtype {view.dtype}, but the session "
            f"was made on shape {tuple(image['shape'])} and dtype {np.dtype(image['dtype'])}: it is another image; "
            f"{fix}")
    return view


def crop_path(folder: Path, region_id: int, seq: int, kind: str = REGIONS) -> Path:
    """The crop file of a region: its accepted labels (`REGIONS`) or the suggestion shown (`SUGGESTIONS`)."""
    return folder / kind / f"{region_id}-{seq}.npy"


def save_crop(folder: Path, region_id: int, seq: int, crop: np.ndarray, kind: str = REGIONS) -> Path:
    path = crop_path(folder, region_id, seq, kind)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(crop, dtype=np.uint8))
    return path


def load_crop(folder: Path, region_id: int, seq: int, kind: str = REGIONS) -> np.ndarray:
    path = crop_path(folder, region_id, seq, kind)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PaserInputError(f"the labels of accepted region {region_id} ({path}) cannot be read: {exc}") from None


# ----------------------------------------------------------------------------- the store


class Store:
    """One session folder held open: its state (session.json), lock, arrays (image, label canvas, f0's maps),
    region pool and crops, and the commit point every change goes through.

    The other parts of a session (`LabeledSet`, `ModelSet`, `MapsCache`, `Router`) read and change the
    session only through a Store: `commit` writes session.json atomically after the files it names and
    refuses to overwrite one another Store object wrote meanwhile; `lock` is held by every change of
    state, from whatever thread. Use `Store.create` or `Store.open`.
    """

    def __init__(self, folder: Path, state: State, read_only: bool = False, digest: str | None = None,
                 notes: Sequence[str] = (), held: bool = False) -> None:
        self.folder, self.state = folder, state
        self.read_only, self._closed = bool(read_only), False
        self._digest = digest  # of session.json as this object last read or wrote it
        self.warnings: list[str] = list(notes)  # what open repaired or found off, for notifications
        self._release: weakref.finalize | None = None
        self._commit_guard = lock.commit_guard(folder)
        mode = "r" if read_only else "r+"
        self.image = open_image(folder, state.image)
        self.labels = open_array(folder / LABELS, mode)
        self.maps = {name: open_array(folder / MAPS / name, mode) for name in MAP_NAMES}
        self._check_arrays()
        self.pool = self._pool(state)
        self.lock = threading.RLock()
        if held:  # last: a constructor that fails leaves the release to its caller
            self._release = weakref.finalize(self, lock.release, folder)

    # ------------------------------------------------------------------ create / open / close

    @classmethod
    def create(cls, folder: str | Path, image, classes: Sequence[str] | None = None,
               colors: Sequence[str] | None = None, region_size: int = 64, val_every: int = 5,
               source: str = "", copy: bool = False) -> Store:
        """A new session folder on `image` (see `Session.create`), held by this process."""
        folder = Path(folder)
        check_new_folder(folder)
        reference = None
        if isinstance(image, (str, Path)):
            image, reference, source = _image_at(image, copy, source)
        shape, dtype = check_image(image)
        spec = ClassSpec(tuple(classes) if classes else ClassSpec().names, tuple(colors or ()))
        if region_size < 8 or val_every < 0:
            raise PaserInputError(f"region_size must be >= 8 and val_every >= 0, got {region_size} and {val_every}")
        lo, hi = robust_range(image)
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(folder)
        try:
            check_new_folder(folder)  # again, under the lock: another process may have created it meanwhile
            return cls._create_locked(folder, image, shape, dtype, spec, region_size, val_every, lo, hi, source,
                                      reference)
        except BaseException:
            lock.release(folder)
            raise

    @classmethod
    def _create_locked(cls, folder, image, shape, dtype, spec, region_size, val_every, lo, hi, source,
                       reference=None) -> Store:
        if reference is None:
            _copy_image(image, create_array(folder / IMAGE, shape, dtype))
        create_array(folder / LABELS, shape, np.uint8)
        for name, dt in MAP_NAMES.items():
            create_array(folder / MAPS / name, shape, dt)
        pool = RegionPool(shape, region_size)
        state = State(
            image={"shape": list(shape), "dtype": dtype.str, "lo": lo, "hi": hi, "source": str(source),
                   **(reference or {})},
            classes=spec, pool={"shape": list(pool.shape), "size": list(pool.size)},
            settings={"region_size": list(pool.size), "val_every": int(val_every), "next_seq": 0},
            created=now_iso(),
        )
        return cls(folder, state, digest=write_state(folder, state), held=True)

    @classmethod
    def open(cls, folder: str | Path, read_only: bool = False) -> Store:
        """The folder's last committed state (see `Session.open`); what was repaired is in `warnings`."""
        folder = Path(folder)
        if not (folder / STATE_FILE).is_file() and not (folder / BACKUP_FILE).is_file():
            load_state(folder, restore=False)  # raises the "not a session" error, before any lock file is written
        fresh = False if read_only else lock.acquire(folder)
        try:
            if fresh:
                removed = clean_temp_files(folder)
                if removed:
                    log.info("removed %d temporary file(s) an interrupted write left in %s", removed, folder)
            loaded = load_state(folder, restore=not read_only)
            state, notes = loaded.state, list(loaded.warnings)
            repaired = repair_records(folder, state)
            notes += repaired
            digest = loaded.digest
            if repaired and not read_only:
                digest = write_state(folder, state)
            return cls(folder, state, read_only=read_only, digest=digest, notes=notes, held=not read_only)
        except BaseException:
            if not read_only:
                lock.release(folder)
            raise

    @staticmethod
    def relink_image(folder: str | Path, image: str | Path) -> str:
        """Point a session that reads its image in place at the image's new place (see `Session.relink_image`)."""
        from napari_paser.data.volumes import VolumeView, open_volume

        folder = Path(folder)
        fresh = lock.acquire(folder)
        try:
            loaded = load_state(folder, restore=True)
            state = loaded.state
            if not state.image.get("path"):
                raise PaserInputError(f"session {folder} keeps its own copy of the image ({IMAGE}): nothing to relink")
            view = VolumeView(open_volume(image), len(state.image["shape"]))
            if view.shape != tuple(state.image["shape"]) or view.dtype != np.dtype(state.image["dtype"]):
                raise PaserInputError(
                    f"{image} has shape {view.shape} and dtype {view.dtype}, but session {folder} was made on shape "
                    f"{tuple(state.image['shape'])} and dtype {np.dtype(state.image['dtype'])}: choose the same image")
            state.image["path"] = view.volume.spec
            write_state(folder, state)
            return view.volume.spec
        finally:
            if fresh:
                lock.release(folder)

    def close(self) -> None:
        """Release the folder (its lock) and refuse further changes; reading stays possible."""
        self._closed = True
        if self._release is not None:
            self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def check_writable(self, action: str = "change") -> None:
        """A PaserInputError saying why when the folder may not be changed (closed, or open read-only)."""
        if self._closed:
            raise PaserInputError(f"session {self.folder} is closed: open it again (Session.open) to {action} it")
        if self.read_only:
            holder = lock.read_holder(self.folder)
            by = f" (it is held by {holder.describe()})" if holder and not lock.held_here(self.folder) else ""
            raise PaserInputError(
                f"session {self.folder} is open read-only{by}: cannot {action} it; close it where it is open "
                "and open it again without read_only to make changes"
            )

    def _check_arrays(self) -> None:
        shape = self.shape
        expected = {IMAGE: (shape, np.dtype(self.state.image["dtype"])), LABELS: (shape, np.dtype(np.uint8)),
                    **{f"{MAPS}/{n}": (shape, np.dtype(dt)) for n, dt in MAP_NAMES.items()}}
        arrays = {IMAGE: self.image, LABELS: self.labels, **{f"{MAPS}/{n}": a for n, a in self.maps.items()}}
        check_arrays(self.folder, expected, arrays)

    @staticmethod
    def _pool(state: State) -> RegionPool:
        pool = RegionPool(tuple(state.pool["shape"]), tuple(state.settings["region_size"]))
        pool.mark_labeled(np.array([a.region_id for a in state.accepted], dtype=np.int64))
        return pool

    # ------------------------------------------------------------------ the image and its geometry

    @property
    def image_path(self) -> str | None:
        """The volume spec of an image read in place (None when the session holds its own copy)."""
        return self.state.image.get("path") or None

    @property
    def volume_spec(self) -> str:
        """Where `open_volume` (and `paser segment --image`) reads the session's image: the source it reads
        in place, else the folder's own image.zarr."""
        return self.image_path or str((self.folder / IMAGE).resolve())

    @property
    def classes(self) -> ClassSpec:
        return self.state.classes

    @property
    def n_classes(self) -> int:
        return self.state.classes.n_classes

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's own shape: (Y, X) or (Z, Y, X)."""
        return tuple(self.state.image["shape"])

    @property
    def n_slices(self) -> int:
        return self.pool.shape[0]

    def index(self, z: int, ys: slice = slice(None), xs: slice = slice(None)) -> tuple:
        """Index into the 2D or 3D arrays of the folder."""
        return (z, ys, xs) if len(self.shape) == 3 else (ys, xs)

    def image_slice(self, z: int = 0) -> np.ndarray:
        """Slice z normalised to float32 [0, 1] by the volume's robust range (the model contract)."""
        return normalise(np.asarray(self.image[self.index(z)]), self.state.image["lo"], self.state.image["hi"])

    def raw_crop(self, region: Region) -> np.ndarray:
        return np.asarray(self.image[self.index(*region.slices)])

    def slices(self, z) -> list[int]:
        """Slice(s) z (None: all) as a list; out of range is a PaserInputError."""
        zs = list(range(self.n_slices)) if z is None else [z] if np.isscalar(z) else list(z)
        bad = [int(v) for v in zs if not 0 <= int(v) < self.n_slices]
        if bad:
            raise PaserInputError(f"slice(s) {bad} out of range: the image has slices 0..{self.n_slices - 1}")
        return [int(v) for v in zs]

    def spread_slices(self, n: int = 8) -> list[int]:
        """n slices spread evenly over the volume (all of them when it has fewer)."""
        return sorted({int(v) for v in np.linspace(0, self.n_slices - 1, min(int(n), self.n_slices)).round()})

    # ------------------------------------------------------------------ regions and records

    def is_accepted(self, region_id: int) -> bool:
        return bool(self.pool.is_labeled(np.array([region_id]))[0])

    def region(self, region_id: int) -> Region:
        try:
            return self.pool.region(int(region_id))
        except InputError:
            raise PaserInputError(f"there is no region {region_id}: ids run from 0 to {len(self.pool) - 1}") from None

    def record(self, region_id: int) -> AcceptedRegion:
        """The accepted record of a region; a PaserInputError when it is not accepted."""
        for rec in self.state.accepted:
            if rec.region_id == int(region_id):
                return rec
        raise PaserInputError(f"region {region_id} is not accepted yet")

    def accepted_labels(self, region_id: int) -> np.ndarray:
        """The accepted label crop of a region, in the layer convention (0 = not labeled)."""
        rec = self.record(region_id)
        return load_crop(self.folder, rec.region_id, rec.seq)

    # ------------------------------------------------------------------ the commit point

    def commit(self, mutate: Callable[[State], None]) -> None:
        """Apply `mutate` to a copy of the state and write it; memory changes only if the write succeeds."""
        self.check_writable()
        with self.lock, self._commit_guard:
            new = copy.deepcopy(self.state)
            mutate(new)
            if state_digest(self.folder) not in (self._digest, None):
                raise PaserInputError(
                    f"session {self.folder}: session.json was changed by another Session object since this one read "
                    "it; this change was not saved (saving would drop the other's work): open the session again "
                    "(Session.open) and repeat it there"
                )
            self._digest = write_state(self.folder, new)
            self.state = new
            self.pool = self._pool(new)


def check_image(image) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a greyscale 2D slice or 3D volume; anything else is a PaserInputError."""
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        image = np.asarray(image)
    shape, dtype = tuple(int(s) for s in image.shape), np.dtype(image.dtype)
    if len(shape) in (3, 4) and shape[-1] in (3, 4):
        raise PaserInputError(
            f"the image looks like RGB(A) colour data, shape {shape}: convert it to greyscale (one value per "
            "pixel), e.g. with skimage.color.rgb2gray, or pick the greyscale image layer"
        )
    if len(shape) not in (2, 3):
        raise PaserInputError(
            f"the image has {len(shape)} dimensions, shape {shape}: a session needs a 2D slice (Y, X) or a "
            "volume (Z, Y, X); split channels or time points first"
        )
    if dtype.kind not in "iuf":
        raise PaserInputError(f"the image has dtype {dtype}: a session needs real numbers (int or float)")
    if min(shape[-2:]) < MIN_SIDE:
        raise PaserInputError(f"slices of {shape[-2]}x{shape[-1]} are too small: need at least {MIN_SIDE}x{MIN_SIDE}")
    return shape, dtype


def repair_records(folder: Path, state: State) -> list[str]:
    """Point accepted records at a crop that exists, and forget models whose file is gone (a
    session.json restored from its backup may name files the last commit replaced)."""
    notes = []
    for rec in list(state.accepted):
        if crop_path(folder, rec.region_id, rec.seq).is_file():
            continue
        seqs = crops_of(folder, rec.region_id)
        if seqs:
            rec.seq = seqs[-1]
            notes.append(f"region {rec.region_id}'s labels file was replaced; using its newest saved labels")
        else:
            state.accepted.remove(rec)
            notes.append(f"region {rec.region_id}'s labels file is missing: it is no longer accepted (its labels "
                         "are still painted on the canvas: accept it again)")
    if state.accepted:
        state.settings["next_seq"] = max(int(state.settings.get("next_seq", 0)), max(r.seq for r in state.accepted) + 1)
    for role, info in list(state.models.items()):
        if not (folder / info["file"]).is_file():
            del state.models[role]
            notes.append(f"the {role} model file {info['file']} is missing: load a run folder or start from scratch")
    return notes


def _image_at(path: str | Path, copy: bool, source: str) -> tuple[object, dict | None, str]:
    """(array, reference, source name) of an image given by path: read in place (reference = its spec and
    kind for session.json) when it is chunked (zarr, OME-Zarr, HDF5) and not `copy`; else to be copied."""
    from napari_paser.data.volumes import IN_PLACE_KINDS, VolumeView, open_volume

    volume = open_volume(path)
    view = VolumeView(volume, 2 if volume.shape[0] == 1 else 3)
    reference = None if copy or volume.kind not in IN_PLACE_KINDS else {"path": volume.spec, "kind": volume.kind}
    return view, reference, source or Path(str(path)).name


def _copy_image(image, target) -> None:
    """Copy slice by slice (never the whole dask/zarr volume in memory); refuse NaN and inf."""
    slices = [(...,)] if len(target.shape) == 2 else [(z,) for z in range(target.shape[0])]
    for ix in slices:
        data = np.asarray(image[ix])
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            where = "" if ix == (...,) else f" in slice {ix[0]}"
            raise PaserInputError(f"the image holds NaN or inf values{where}: replace them (np.nan_to_num) first")
        target[ix] = data
