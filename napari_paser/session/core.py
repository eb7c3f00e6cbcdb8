"""The headless labeling session behind the napari plugin (and the CLI and tests).

A `Session` owns one image (2D or 3D), its class list, a label canvas on disk, the region
pool, the sampler's current proposals, the accepted (labeled) regions, the models and the
learning curve, all in one folder (layout in `session.store`). Every GUI action is a method
here; a widget only wires buttons and layers to it:

- layers: `session.image` and `session.labels` are zarr arrays of the image's own shape;
  give them to napari as they are (the labels canvas is uint8 in the napari Labels
  convention, class k = k + 1, 0 = not labeled, so napari paints into it directly), and
  `session.classes.layer_colors()` as the Labels colormap;
- long work (`compute_maps`, `retrain`) returns a generator of `Progress` for a napari
  `thread_worker`; each takes `should_stop` (checked between slices / optimiser steps) and
  may also be stopped by closing the generator (`worker.quit()`); a cancelled retrain keeps
  the previous weights;
- user mistakes raise `PaserInputError` (message says what to do); a partially painted
  region raises its subclass `PartialRegionError`, to be answered by a confirmation and a
  second call with `confirm_partial=True`.

Every change is committed by writing session.json atomically after the files it names, so a
crash leaves the last complete state and `Session.open` resumes it exactly. A session folder
is held by one process at a time (`session.lock`; `Session.open(folder, read_only=True)`
views a held folder), and a commit refuses to overwrite a session.json that another
`Session` object wrote meanwhile, so no accept is ever dropped silently. Call `close()` (or
use the session as a context manager) when done; the hold also ends at interpreter exit.
Methods may be called from a worker thread and the GUI thread at once: state changes hold a
lock, but run at most one `compute_maps` or `retrain` at a time (they share f0).

The methods live in modules by concern: `labeling` (proposals, accepting, taking back, skipping,
edits), `maps` (f0's maps and their refresh), `models` (runs, policies, new models, routing,
retraining, the session's own router); this module holds creating, opening and closing a
folder, the read-only views, the commit point and the export. The job modules (`jobs`,
`refresh`, `router`, `data.export`) use only the public, typed interface (`index`,
`commit`, `install_models`, `require_f0`, `map_steps`).
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from learners.checkpoint import load_checkpoint
from learners.routing.policy import PolicyNet, load_policy
from learners.routing.bank import PolicyBank
from learners.unet import UNet
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.errors import InputError, PaserInputError
from napari_paser.session import lock

from napari_paser.session.store import (
    BACKUP_FILE, IMAGE, LABELS, MAPS, STATE_FILE, AcceptedRegion, ClassSpec, CurvePoint, Proposal, State,
    check_arrays, check_new_folder, clean_temp_files, create_array, crop_path, crops_of, load_crop, load_state,
    now_iso, open_array, open_image, state_digest, write_state,
)
from sampling.regions import Region, RegionPool
from sampling.registry import SAMPLERS  # noqa: F401 (the GUI's sampler menu)
from napari_paser.session.labeling import LabelingMixin, PartialRegionError  # noqa: F401 (re-exported)
from napari_paser.session.maps import MAP_NAMES, MapsMixin
from napari_paser.session.models import POLICY, ModelsMixin

MIN_SIDE = 16


log = logging.getLogger(__name__)


class SessionWarning(UserWarning):
    """Something was repaired or is off on open (a restored session.json, a dropped record)."""


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


class Session(LabelingMixin, MapsMixin, ModelsMixin):
    """Image, labels, regions, proposals, models and labeled set of one labeling session."""

    def __init__(self, folder: Path, state: State, read_only: bool = False, digest: str | None = None,
                 notes: Sequence[str] = (), held: bool = False) -> None:
        """Use `Session.create` or `Session.open`."""
        self.folder, self.state = folder, state
        self.read_only, self._closed = bool(read_only), False
        self._digest = digest  # of session.json as this object last read or wrote it
        self.warnings: list[str] = list(notes)  # what open repaired or found off, for notifications
        self._release: weakref.finalize | None = None
        self._commit_guard = lock.commit_guard(folder)
        self._crop_keys: dict[tuple[int, int], bytes] = {}  # (region, seq) -> digest of its saved crop
        mode = "r" if read_only else "r+"
        self.image = open_image(folder, state.image)
        self.labels = open_array(folder / LABELS, mode)
        self.maps = {name: open_array(folder / MAPS / name, mode) for name in MAP_NAMES}
        self._check_arrays()
        self.pool = RegionPool(tuple(state.pool["shape"]), tuple(state.settings["region_size"]))
        self.pool.mark_labeled(np.array([a.region_id for a in state.accepted], dtype=np.int64))
        self.models: dict[str, UNet] = {}
        self.policy: PolicyNet | None = None
        self.bank = PolicyBank()  # policies by lambda, for the live cost control
        for role, info in state.models.items():
            path = folder / info["file"]
            self._hold(role, load_policy(path).policy if role.startswith(POLICY) else load_checkpoint(path).model)
        self._lock = threading.RLock()
        self._states: dict[tuple, object] = {}  # f0 state per (z, samples, f0 version), a few slices
        if held:  # last: a constructor that fails leaves the release to its caller
            self._release = weakref.finalize(self, lock.release, folder)

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(cls, folder: str | Path, image, classes: Sequence[str] | None = None,
               colors: Sequence[str] | None = None, region_size: int = 64, val_every: int = 5,
               source: str = "", copy: bool = False) -> Session:
        """A new session on `image` in an empty `folder`: an array (numpy, dask or zarr; (Y, X) or
        (Z, Y, X)) or the path of a volume (`napari_paser.data.volumes`: TIFF, TIFF folder, zarr,
        OME-Zarr, `FILE.h5:/dataset`).

        A zarr, OME-Zarr or HDF5 path is read in place (session.json records it; nothing is
        copied, so a scan of many GB starts at once) unless `copy`; anything else is copied slice
        by slice into the folder (so the session reopens without its source). Every
        `val_every`-th accepted region is held out for the learning curve (0: none).
        """
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
                       reference=None) -> Session:
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

    @staticmethod
    def relink_image(folder: str | Path, image: str | Path) -> str:
        """Point a session that reads its image in place at the image's new place (after it moved);
        the new one must have the recorded shape and dtype. Returns the new volume spec."""
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

    @property
    def image_path(self) -> str | None:
        """The volume spec of an image read in place (None when the session holds its own copy)."""
        return self.state.image.get("path") or None

    @property
    def volume_spec(self) -> str:
        """Where `open_volume` (and `paser segment --image`) reads the session's image: the source it reads
        in place, else the folder's own image.zarr."""
        return self.image_path or str((self.folder / IMAGE).resolve())

    @classmethod
    def open(cls, folder: str | Path, read_only: bool = False) -> Session:
        """Resume a session exactly as last committed (accepted regions are out of the candidates).

        Takes the folder's lock: a folder held by another live process raises PaserInputError
        (`lock.SessionLockedError`) naming it; `read_only=True` opens it for viewing (every
        change is refused). On open, temporary files of a killed process are removed, a damaged
        session.json is restored from session.json.bak, records whose files are missing are
        repaired or dropped, and the arrays are checked against session.json; what was
        repaired is in `session.warnings` (and issued as SessionWarning).
        """
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
            repaired = _repair_records(folder, state)
            notes += repaired
            digest = loaded.digest
            if repaired and not read_only:
                digest = write_state(folder, state)
            session = cls(folder, state, read_only=read_only, digest=digest, notes=notes, held=not read_only)
        except BaseException:
            if not read_only:
                lock.release(folder)
            raise
        for note in notes:
            warnings.warn(f"session {folder}: {note}", SessionWarning, stacklevel=2)
        return session

    def close(self) -> None:
        """Release the folder (its lock) and refuse further changes; reading stays possible."""
        self._closed = True
        if self._release is not None:
            self._release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_writable(self, action: str = "change") -> None:
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

    # ------------------------------------------------------------------ read-only views

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

    @property
    def accepted(self) -> list[AcceptedRegion]:
        return list(self.state.accepted)

    @property
    def proposals(self) -> list[Proposal]:
        """The last proposals, best first (accepted ones included: see `is_accepted`)."""
        return list(self.state.proposals)

    @property
    def pending_proposals(self) -> list[Proposal]:
        """The proposals neither accepted nor skipped this round."""
        skipped = set(self.state.skipped)
        return [p for p in self.state.proposals if not self.is_accepted(p.region_id) and p.region_id not in skipped]

    @property
    def skipped(self) -> list[int]:
        """Region ids skipped in this round of proposals."""
        return list(self.state.skipped)

    @property
    def curve(self) -> list[CurvePoint]:
        return list(self.state.curve)

    @property
    def has_models(self) -> bool:
        return "f0" in self.models

    def is_accepted(self, region_id: int) -> bool:
        return bool(self.pool.is_labeled(np.array([region_id]))[0])

    def region(self, region_id: int) -> Region:
        try:
            return self.pool.region(int(region_id))
        except InputError:
            raise PaserInputError(f"there is no region {region_id}: ids run from 0 to {len(self.pool) - 1}") from None

    def next_proposal(self, after_rank: int = 0) -> Proposal | None:
        """The best pending proposal ranked after `after_rank` (wrapping around), for a "next" button."""
        pending = self.pending_proposals
        later = [p for p in pending if p.rank > after_rank]
        return (later or pending or [None])[0]

    def index(self, z: int, ys: slice = slice(None), xs: slice = slice(None)) -> tuple:
        """Index into the 2D or 3D arrays of the folder."""
        return (z, ys, xs) if len(self.shape) == 3 else (ys, xs)

    def image_slice(self, z: int = 0) -> np.ndarray:
        """Slice z normalised to float32 [0, 1] by the volume's robust range (the model contract)."""
        return normalise(np.asarray(self.image[self.index(z)]), self.state.image["lo"], self.state.image["hi"])

    def raw_crop(self, region: Region) -> np.ndarray:
        return np.asarray(self.image[self.index(*region.slices)])

    def accepted_labels(self, region_id: int) -> np.ndarray:
        """The accepted label crop of a region, in the layer convention (0 = not labeled)."""
        rec = self._record(region_id)
        return load_crop(self.folder, rec.region_id, rec.seq)

    def _record(self, region_id: int) -> AcceptedRegion:
        for rec in self.state.accepted:
            if rec.region_id == int(region_id):
                return rec
        raise PaserInputError(f"region {region_id} is not accepted yet")

    # ------------------------------------------------------------------ commits

    def commit(self, mutate: Callable[[State], None]) -> None:
        """Apply `mutate` to a copy of the state and write it; memory changes only if the write succeeds."""
        self._check_writable()
        with self._lock, self._commit_guard:
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
            self.pool = RegionPool(tuple(new.pool["shape"]), tuple(new.settings["region_size"]))
            self.pool.mark_labeled(np.array([a.region_id for a in new.accepted], dtype=np.int64))

    # ------------------------------------------------------------------ export

    def export(self, out: str | Path, full_volume: bool = False, fmt: str = "tiff", edits: str = "refuse") -> Path:
        """Write the labeled set (crops + manifest, optionally the label volume); see `export`.

        edits: what to do with accepted regions edited since accepted (`edited_regions`):
        "refuse" (default: PaserInputError naming them), "accept" (`accept_edits` first), or
        "keep" (export the accepted crops as they are; the manifest lists the edited regions).
        """
        from napari_paser.data.export import export_session

        return export_session(self, out, full_volume=full_volume, fmt=fmt, edits=edits)


READ_ONLY_REFUSES = ("propose", "propose_neighbours", "spread_maps", "accept", "accept_painted", "unaccept", "skip", "accept_edits", "sync_labels",
                     "load_models", "load_policy", "new_models", "compute_maps", "retrain", "train_router")
"""The methods a read-only (or closed) session refuses with a PaserInputError (`commit` refuses any other)."""


def _refused_when_read_only(name: str, method: Callable) -> Callable:
    @functools.wraps(method)
    def guarded(self: Session, *args, **kwargs):
        self._check_writable(name.replace("_", " "))
        return method(self, *args, **kwargs)

    return guarded


for _name in READ_ONLY_REFUSES:
    if hasattr(Session, _name):
        setattr(Session, _name, _refused_when_read_only(_name, getattr(Session, _name)))


def _repair_records(folder: Path, state: State) -> list[str]:
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
