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
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from learners.checkpoint import load_checkpoint, save_checkpoint
from learners.routing.policy import PolicyNet, load_policy, save_policy
from learners.routing.bank import PolicyBank, load_bank
from learners.routing.router import F0State
from learners.training import TrainConfig
from learners.uncertainty import UncertaintyMaps, uncertainty_maps
from learners.unet import UNet, UNetConfig, preset_config
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.errors import InputError, PaserInputError
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.session.jobs import (
    RETRAIN_CONFIG, Progress, RetrainResult, TrainingData, retrain_steps, training_data,
)
from napari_paser.session import lock, refresh
from napari_paser.session.routing import SliceRouting, policy_models, route_slice

if TYPE_CHECKING:
    from napari_paser.session.router_jobs import RouterResult
from napari_paser.session.sampling import proposal_inputs
from napari_paser.session.store import (
    BACKUP_FILE, IMAGE, LABELS, MAPS, MODELS, STATE_FILE, AcceptedRegion, ClassSpec, CurvePoint, Proposal, State,
    check_arrays, check_new_folder, clean_temp_files, create_array, crop_path, crops_of, load_crop, load_state,
    now_iso, open_array, save_crop, state_digest, write_state,
)
from sampling.regions import Region, RegionPool
from sampling.registry import SAMPLERS, make_sampler  # noqa: F401 (SAMPLERS: the GUI's sampler menu)

MODEL_ROLES = ("f0", "f1", "f2")
POLICY, POLICY_FILE = "policy", "policy.pt"
BANK_ROLE = "policy@"  # + lambda: the policy bank's members, e.g. "policy@0.300"
MODEL_SIZES = ("tiny", "medium", "large")
MAP_NAMES = {"prediction": np.uint8, "entropy": np.float32, "bald": np.float32}
MIN_SIDE = 16


log = logging.getLogger(__name__)


class SessionWarning(UserWarning):
    """Something was repaired or is off on open (a restored session.json, a dropped record)."""


def bank_role(lam: float) -> str:
    """The session's model role of the bank's policy for `lam`."""
    return f"{BANK_ROLE}{lam:.3f}"


class PartialRegionError(PaserInputError):
    """Regions with unpainted pixels: ask the person, then accept with confirm_partial=True."""

    def __init__(self, message: str, region_ids: list[int], unpainted: list[int]) -> None:
        super().__init__(message)
        self.region_ids, self.unpainted = region_ids, unpainted


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


class Session:
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
        self.image = open_array(folder / IMAGE, "r")
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
               source: str = "") -> Session:
        """A new session on `image` (numpy, dask or zarr; (Y, X) or (Z, Y, X)) in an empty `folder`.

        The image is copied slice by slice into the folder (so the session reopens without its
        source). Every `val_every`-th accepted region is held out for the learning curve (0: none).
        """
        folder = Path(folder)
        check_new_folder(folder)
        shape, dtype = check_image(image)
        spec = ClassSpec(tuple(classes) if classes else ClassSpec().names, tuple(colors or ()))
        if region_size < 8 or val_every < 0:
            raise PaserInputError(f"region_size must be >= 8 and val_every >= 0, got {region_size} and {val_every}")
        lo, hi = robust_range(image)
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(folder)
        try:
            check_new_folder(folder)  # again, under the lock: another process may have created it meanwhile
            return cls._create_locked(folder, image, shape, dtype, spec, region_size, val_every, lo, hi, source)
        except BaseException:
            lock.release(folder)
            raise

    @classmethod
    def _create_locked(cls, folder, image, shape, dtype, spec, region_size, val_every, lo, hi, source) -> Session:
        _copy_image(image, create_array(folder / IMAGE, shape, dtype))
        create_array(folder / LABELS, shape, np.uint8)
        for name, dt in MAP_NAMES.items():
            create_array(folder / MAPS / name, shape, dt)
        pool = RegionPool(shape, region_size)
        state = State(
            image={"shape": list(shape), "dtype": dtype.str, "lo": lo, "hi": hi, "source": str(source)},
            classes=spec, pool={"shape": list(pool.shape), "size": list(pool.size)},
            settings={"region_size": list(pool.size), "val_every": int(val_every), "next_seq": 0},
            created=now_iso(),
        )
        return cls(folder, state, digest=write_state(folder, state), held=True)

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

    # ------------------------------------------------------------------ models

    def load_models(self, run: str | Path, roles: Sequence[str] = MODEL_ROLES) -> list[str]:
        """Load f0 (required) and whichever of f1, f2 exist from a `paser train` run folder."""
        run = Path(run)
        if not (run / "f0.pt").is_file():
            raise PaserInputError(
                f"{run} holds no f0.pt: choose a run folder written by `paser train` (f0.pt, f1.pt, f2.pt), "
                "or start from scratch (new_models)"
            )
        loaded = {}
        for role in roles:
            if (run / f"{role}.pt").is_file():
                loaded[role] = self._checked(load_checkpoint(run / f"{role}.pt").model, str(run / f"{role}.pt"))
        if (run / POLICY_FILE).is_file():  # optional: routing needs it
            policy = load_policy(run / POLICY_FILE).policy
            policy_models(policy, loaded, str(run / POLICY_FILE))
            loaded[POLICY] = policy
        for lam, policy in load_bank(run).policies.items():  # optional: the live lambda control
            policy_models(policy, loaded, f"{run}/policies (lambda {lam})")
            loaded[bank_role(lam)] = policy
        dropped = [r for r in self.state.models if r not in loaded]  # a run replaces the whole set
        self.install_models(loaded, source=str(run.resolve()), drop=dropped)
        return list(loaded)

    def load_policy(self, path: str | Path) -> None:
        """Load a trained routing policy (f_RL) for the routing overlay; it must fit the loaded models."""
        policy = load_policy(path).policy
        policy_models(policy, self.models, str(path))
        self.install_models({POLICY: policy}, source=str(Path(path).resolve()))

    @property
    def has_policy(self) -> bool:
        return self.policy is not None or len(self.bank) > 0

    @property
    def policy_lambdas(self) -> list[float]:
        """The cost weights of the policy bank (empty without one: then lambda is fixed)."""
        return self.bank.lambdas

    def pick_policy(self, lam: float | None = None) -> tuple[float | None, PolicyNet]:
        """The bank's policy nearest to `lam` (None: policy.pt, else the bank's middle one)."""
        chosen = self.bank.pick(lam, None if self.policy is None else (None, self.policy))
        if chosen is not None:
            return chosen
        raise PaserInputError(
            "no routing policy loaded: load a run folder holding policy.pt or policies/ (train them with "
            "`paser policy --data DIR --run RUN`), or a policy file (load_policy)"
        )

    def route(self, z: int = 0, samples: int = 5, lam: float | None = None, execute: bool = True) -> SliceRouting:
        """PaSeR routing of slice z: model per patch, routed segmentation, GFLOPs vs the largest model.

        `lam` picks the bank's policy nearest to it. f0's state of the slice is cached, so routing
        the same slice again with another lambda and `execute=False` (map and cost only, no routed
        model runs) takes milliseconds: what the live control does.
        """
        lam, policy = self.pick_policy(lam)
        (z,) = self._slices_arg(z)
        models = policy_models(policy, self.models, "the routing policy")
        image = self.image_slice(z)
        return route_slice(models, policy, image, z, samples, self.f0_state(z, samples, image), execute, lam)

    def has_state(self, z: int, samples: int = 5) -> bool:
        """Whether f0's state of slice z is known for the current f0 (routing it again is then instant)."""
        return self._state_key(z, samples) in self._states or int(z) in self.fresh_slices()

    def f0_state(self, z: int, samples: int = 5, image: np.ndarray | None = None) -> F0State:
        """f0's state of slice z (prediction and entropy) for routing: the slice's stored maps when
        they come from the current f0 (whatever `samples` they were computed with), else computed
        now with `uncertainty_maps` and stored as the slice's maps, so maps, routing and proposals
        share one f0 pass per slice and model version. Cached in memory for the current weights."""
        key = self._state_key(z, samples)
        with self._lock:
            if key in self._states:
                return self._states[key]
        f0 = self.require_f0()
        if int(z) in self.fresh_slices():
            maps = self.slice_maps(z)
            prediction, entropy = maps["prediction"], maps["entropy"]
        else:
            version = self.state.model_version
            m = uncertainty_maps(f0, self.image_slice(z) if image is None else image, samples=samples, seed=int(z))
            self._store_maps(int(z), m, version)
            prediction, entropy = m.prediction, m.entropy
        state = F0State(torch.from_numpy(np.asarray(prediction, np.uint8))[None],
                        torch.from_numpy(np.asarray(entropy, np.float32))[None], self.n_classes, samples)
        with self._lock:
            self._states = {k: v for k, v in self._states.items() if k[2] == key[2]}  # drop older weights'
            while len(self._states) >= 8:
                self._states.pop(next(iter(self._states)))
            self._states[key] = state
        return state

    def _state_key(self, z: int, samples: int) -> tuple:
        return (int(z), int(samples), self.state.models.get("f0", {}).get("version"))

    def new_models(self, roles: dict[str, str | UNetConfig] | None = None, seed: int = 0,
                   start: str = "shipped") -> list[str]:
        """New models from size presets ("tiny", "medium", "large") or configs, e.g. {"f0": "tiny"}.

        start="shipped" (default): roles with starting weights in the package (f0 tiny, see
        napari_paser.weights) begin from them (another class count: their body, a fresh head),
        the others from a seeded random init; start="scratch": every role from a random init.
        """
        from napari_paser.weights import has_starting_weights, starting_model

        if start not in ("shipped", "scratch"):
            raise PaserInputError(f"start must be 'shipped' or 'scratch', got {start!r}")
        roles = roles or {"f0": "tiny"}
        built, sources = {}, {}
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for role, spec in roles.items():
                if role not in MODEL_ROLES:
                    raise PaserInputError(f"unknown model role {role!r}; use {', '.join(MODEL_ROLES)}")
                if isinstance(spec, str) and spec not in MODEL_SIZES:
                    raise PaserInputError(f"unknown model size {spec!r}; choose one of {', '.join(MODEL_SIZES)}")
                cfg = preset_config(spec, n_classes=self.n_classes) if isinstance(spec, str) else spec
                shipped = start == "shipped" and has_starting_weights(role, cfg)
                model = starting_model(role, cfg, seed) if shipped else UNet(cfg).eval()
                built[role], sources[role] = self._checked(model, f"the new {role} model"), "shipped" if shipped else "scratch"
        for source in ("shipped", "scratch"):
            group = {r: m for r, m in built.items() if sources[r] == source}
            if group:
                self.install_models(group, source=source)
        return list(built)

    def _checked(self, model: UNet, what: str) -> UNet:
        cfg = model.config
        if cfg.n_classes != self.n_classes:
            raise PaserInputError(
                f"{what} was trained for {cfg.n_classes} classes but this session has {self.n_classes} "
                f"({', '.join(self.classes.names)}): load a run trained on {self.n_classes} classes, or start from scratch"
            )
        if cfg.in_channels != 1:
            raise PaserInputError(f"{what} takes {cfg.in_channels} input channels; sessions hold greyscale images (1)")
        return model

    def install_models(self, models: dict[str, nn.Module], source: str,
                       mutate_more: Callable[[State], None] | None = None, drop: Sequence[str] = ()) -> None:
        """Save `models` as the next model version (and forget roles in `drop`), commit, then remove old files."""
        with self._lock:  # one model version at a time, whatever thread installs it
            version = self.state.model_version + 1
            files = {}
            for role, model in models.items():
                files[role] = f"{MODELS}/{role}-{version:04d}.pt"
                meta = {"class_names": list(self.classes.names), "role": role, "source": source, "session_version": version}
                (save_policy if role.startswith(POLICY) else save_checkpoint)(self.folder / files[role], model, meta)

            def mutate(s: State) -> None:
                s.model_version = version
                for role in models:
                    s.models[role] = {"file": files[role], "version": version, "source": source}
                for role in drop:
                    s.models.pop(role, None)
                if mutate_more:
                    mutate_more(s)

            old = [self.folder / info["file"] for role, info in self.state.models.items() if role in models or role in drop]
            self.commit(mutate)
            for role in drop:
                self._hold(role, None)
            for role, model in models.items():
                self._hold(role, model)
            for path in old:
                path.unlink(missing_ok=True)

    def _hold(self, role: str, model: nn.Module | None) -> None:
        """Keep `model` in its role's place (None forgets the role): models, policy or the bank."""
        if role == POLICY:
            self.policy = model
        elif role.startswith(BANK_ROLE):
            lam = float(role[len(BANK_ROLE):])
            if model is None:
                self.bank.policies.pop(lam, None)
            else:
                self.bank.policies[lam] = model
        elif model is None:
            self.models.pop(role, None)
        else:
            self.models[role] = model

    def require_f0(self) -> UNet:
        """f0, or a PaserInputError saying how to get one."""
        if "f0" not in self.models:
            raise PaserInputError(
                "no models yet: load a run folder (f0.pt from `paser train`) or start from scratch, then try again"
            )
        return self.models["f0"]

    # ------------------------------------------------------------------ maps

    def fresh_slices(self) -> list[int]:
        """Slices whose maps come from the current f0."""
        v = self.state.model_version
        return sorted(int(z) for z, ver in self.state.maps.items() if ver == v)

    def slice_maps(self, z: int = 0) -> dict[str, np.ndarray]:
        """f0's prediction (class indices), entropy and BALD of slice z (zeros where not computed)."""
        return {name: np.asarray(arr[self.index(z)]) for name, arr in self.maps.items()}

    def compute_maps(self, z: int | Iterable[int] | None = None, samples: int = 5, tile: int | None = None,
                     should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, int]:
        """MC-dropout maps of slice(s) z (None: all) with f0, one slice at a time; returns slices done."""
        model = self.require_f0()
        zs = self._slices_arg(z)
        return self.map_steps(model, zs, samples, tile, should_stop)

    def stale_slices(self) -> list[int]:
        """Slices whose maps come from an older f0 (shown until refreshed; samplers skip them)."""
        return refresh.stale_slices(self)

    def refresh_order(self, focus: int | None = None) -> tuple[list[int], list[int]]:
        """Stale slices as (now, later): the slice `focus`, then the proposals' slices; then the rest (see
        `session.refresh`)."""
        return refresh.refresh_order(self, focus)

    def refresh(self, focus: int | None = None, everything: bool = True, samples: int = 5,
                should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, refresh.RefreshReport]:
        """After new weights: recompute stale maps in `refresh_order` (with everything=False only the slice
        on screen and the proposals' slices; the rest stay stale until shown), then repeat the last
        proposal request. Returns a `RefreshReport` whose `message()` says exactly what was refreshed."""
        self.require_f0()
        return refresh.refresh(self, focus, everything, samples, should_stop)

    def _slices_arg(self, z) -> list[int]:
        zs = list(range(self.n_slices)) if z is None else [z] if np.isscalar(z) else list(z)
        bad = [int(v) for v in zs if not 0 <= int(v) < self.n_slices]
        if bad:
            raise PaserInputError(f"slice(s) {bad} out of range: the image has slices 0..{self.n_slices - 1}")
        return [int(v) for v in zs]

    def map_steps(self, model: UNet, zs: Sequence[int], samples: int, tile: int | None,
                  should_stop: Callable[[], bool] | None) -> Generator[Progress, None, int]:
        """Compute and store `model`'s maps of slices `zs`, one Progress per slice; returns slices done
        (what `compute_maps` and `refresh` run)."""
        version = self.state.model_version
        for i, z in enumerate(zs):
            if should_stop is not None and should_stop():
                yield Progress("cancelled", i, len(zs), "maps cancelled")
                return i
            m = uncertainty_maps(model, self.image_slice(z), samples=samples, tile=tile, seed=z)
            if not self._store_maps(z, m, version):  # models replaced meanwhile: these maps are stale
                return i
            yield Progress("maps", i + 1, len(zs), f"maps of slice {z}", z=z)
        return len(zs)

    def _store_maps(self, z: int, m: UncertaintyMaps, version: int) -> bool:
        """Write slice z's maps computed by f0 of model `version` and commit; False if that version is gone."""
        with self._lock:
            if self.state.model_version != version:
                return False
            for name, arr in (("prediction", m.prediction), ("entropy", m.entropy), ("bald", m.bald)):
                self.maps[name][self.index(z)] = arr
            self.commit(lambda s: s.maps.__setitem__(str(z), version))
            return True

    def _map3d(self, name: str):
        arr = self.maps[name]
        return np.asarray(arr)[None] if len(self.shape) == 2 else arr

    # ------------------------------------------------------------------ proposals

    def propose(self, k: int = 8, sampler: str = "entropy", seed: int = 0, **options) -> list[Proposal]:
        """Rank k unlabeled regions with `sampler` (one of SAMPLERS) and make them the current proposals.

        Samplers other than "random" choose among slices whose maps are current (`compute_maps`).
        options: TAUDIS alpha/beta/sigma/measure; DQN dqn_checkpoint (and pool_size).
        """
        try:
            chooser = make_sampler(sampler, **options)
            candidates, needs = self._map_needs(chooser)
            if candidates.size == 0:
                raise PaserInputError("no unlabeled regions left to propose" + (
                    " in the slices with current maps: compute maps on more slices" if needs.keys() - {"pool"} else ""))
            sel = chooser.select(candidates, int(k), np.random.default_rng(seed), **needs)
        except PaserInputError:
            raise
        except InputError as exc:
            raise PaserInputError(str(exc)) from None
        proposals = [self._proposal(rank, rid, score, sampler)
                     for rank, (rid, score) in enumerate(zip(sel.ids.tolist(), sel.scores.tolist()), 1)]
        request = {"k": int(k), "sampler": sampler, "seed": int(seed), **{n: _plain(v) for n, v in options.items()}}

        def mutate(s: State) -> None:
            s.proposals, s.proposal_request, s.skipped = proposals, request, []

        self.commit(mutate)
        return proposals

    def _proposal(self, rank: int, region_id: int, score: float, sampler: str) -> Proposal:
        r = self.pool.region(region_id)
        return Proposal(rank, r.id, r.z, r.y0, r.x0, r.h, r.w, float(score), sampler)

    def _map_needs(self, sampler) -> tuple[np.ndarray, dict]:
        """Candidates and inputs of `sampler` from this session (see `session.sampling`)."""
        return proposal_inputs(sampler, self.pool, self.fresh_slices(), self.require_f0,
                               lambda: {name: self._map3d(name) for name in MAP_NAMES}, self.image_slice,
                               self.labels, self.n_classes,
                               lambda: [self.models[r] for r in MODEL_ROLES if r in self.models])

    # ------------------------------------------------------------------ accepting labels

    def accept(self, region_id: int, labels_patch: np.ndarray | None = None,
               confirm_partial: bool = False) -> AcceptedRegion:
        """Accept the labels of one region and autosave.

        labels_patch: the region's labels in the layer convention (0 = not painted, class k =
        k + 1), shape (h, w) of the region; it is written into the canvas. None reads the
        canvas (napari painted into `session.labels`). Unpainted pixels raise
        `PartialRegionError` unless confirm_partial (they are then stored as unlabeled and
        ignored by training). Accepting an accepted region again replaces its labels.
        """
        region = self.region(region_id)
        patch = self._patch(region, labels_patch)
        self._check_painted([(region, patch)], confirm_partial)
        with self._lock:
            if labels_patch is not None:
                self.labels[self.index(*region.slices)] = patch
            return self._accept_all([(region, patch)])[0]

    def painted_regions(self, z: int | None = None) -> np.ndarray:
        """Ids of regions not accepted yet that hold painted pixels in the canvas (slice z, or all)."""
        one = RegionPool(self.pool.shape[1:], self.pool.size)
        found = []
        for zz in self._slices_arg(z):
            painted = np.asarray(self.labels[self.index(zz)]) > 0
            if painted.any():
                counts = one.reduce(painted.astype(np.uint8), "sum")
                found.append(self.pool.slice_ids(zz)[counts > 0])
        ids = np.concatenate(found) if found else np.zeros(0, np.int64)
        return ids[~self.pool.is_labeled(ids)] if ids.size else ids

    def accept_painted(self, z: int | None = None, confirm_partial: bool = False) -> list[AcceptedRegion]:
        """Accept every region painted outside the accepted set (slice z, or all), in one commit."""
        ids = self.painted_regions(z)
        if ids.size == 0:
            where = "anywhere" if z is None else f"in slice {z}"
            raise PaserInputError(f"no painted labels outside accepted regions {where}: paint a region first")
        items = [(r, self._patch(r, None)) for r in self.pool.regions(ids)]
        self._check_painted(items, confirm_partial)
        return self._accept_all(items)

    def _patch(self, region: Region, labels_patch) -> np.ndarray:
        if labels_patch is None:
            patch = np.asarray(self.labels[self.index(*region.slices)])
        else:
            patch = np.asarray(labels_patch)
            if patch.shape != (region.h, region.w):
                raise PaserInputError(
                    f"labels for region {region.id} have shape {patch.shape} but the region is {region.h}x{region.w} "
                    f"(slice {region.z}, y {region.y0}, x {region.x0}): crop the labels to the region, or pass "
                    "nothing to read the session's labels layer"
                )
        if patch.size and np.issubdtype(patch.dtype, np.signedinteger) and patch.min() < 0:
            raise PaserInputError(f"labels for region {region.id} hold negative values; paint with 1..{self.n_classes}")
        layer_to_classes(patch, n_classes=self.n_classes)  # integer dtype and values 0..C
        return patch.astype(np.uint8)

    def _check_painted(self, items: list[tuple[Region, np.ndarray]], confirm: bool) -> None:
        partial, counts = [], []
        for region, patch in items:
            unpainted = int((patch == 0).sum())
            if unpainted == patch.size:
                raise PaserInputError(f"region {region.id} has no painted pixels: paint it (labels 1..{self.n_classes}) first")
            if unpainted:
                partial.append(region.id)
                counts.append(unpainted)
        if partial and not confirm:
            detail = ", ".join(f"{r} ({c} px)" for r, c in zip(partial[:5], counts[:5]))
            raise PartialRegionError(
                f"region(s) {detail}{' ...' if len(partial) > 5 else ''} have unpainted pixels: paint them, or confirm "
                "to accept them as they are (unpainted pixels stay unlabeled and are ignored by training)",
                partial, counts,
            )

    def _accept_all(self, items: list[tuple[Region, np.ndarray]], keep_origin: bool = False,
                    drop: Sequence[int] = ()) -> list[AcceptedRegion]:
        """Save the crops, then commit the records in one state write (and forget the regions in `drop`).

        keep_origin: a region accepted before keeps its sampler and rank (re-saving edits).
        """
        with self._lock:
            by_prop = {p.region_id: p for p in self.state.proposals}
            seq0, records, crops = int(self.state.settings.get("next_seq", 0)), [], {}
            old = {a.region_id: a for a in self.state.accepted}
            former = self.state.settings.get("former_splits", {})
            n_before = len(self.state.accepted)
            for i, (region, patch) in enumerate(items):
                prop = by_prop.get(region.id)
                split = (old[region.id].split if region.id in old else former.get(str(region.id))
                         or self._split_for(n_before + len(records)))
                sampler, rank = (prop.sampler, prop.rank) if prop else ("manual", None)
                if keep_origin and region.id in old:
                    sampler, rank = old[region.id].sampler, old[region.id].rank
                records.append(AcceptedRegion(
                    region.id, region.z, region.y0, region.x0, region.h, region.w,
                    sampler, rank, now_iso(), self._fractions(patch), split, seq0 + i,
                ))
                crops[region.id] = save_crop(self.folder, region.id, seq0 + i, patch)
                self._crop_keys[(region.id, seq0 + i)] = _crop_key(patch)
            gone = [old[int(r)] for r in drop if int(r) in old]

            def mutate(s: State) -> None:
                ids = {r.region_id for r in records} | {g.region_id for g in gone}
                s.accepted = [a for a in s.accepted if a.region_id not in ids] + records
                s.settings["next_seq"] = seq0 + len(records)
                kept = s.settings.setdefault("former_splits", {})
                for r in records:
                    kept.pop(str(r.region_id), None)
                for g in gone:  # a region taken back keeps its split if it is accepted again
                    kept[str(g.region_id)] = g.split

            self.commit(mutate)
            for rid, rec in old.items():
                if rid in crops or rec in gone:
                    crop_path(self.folder, rid, rec.seq).unlink(missing_ok=True)
            return records

    # ------------------------------------------------------------------ taking back, skipping, edits

    def unaccept(self, region_id: int) -> None:
        """Take an accepted region back: its labels stay painted on the canvas, its saved crop is
        removed, it leaves the labeled set and the export, and it can be accepted again (same split).
        Its painted pixels are scribbles then: they train, as any painted pixel does, until erased."""
        rec = self._record(region_id)
        self._accept_all([], drop=[rec.region_id])

    def skip(self, region_id: int) -> None:
        """Drop a pending proposal for this round (saved); the next `propose` starts a new round."""
        rid = int(region_id)
        if rid not in {p.region_id for p in self.pending_proposals}:
            why = "it is accepted (unaccept it instead)" if self.is_accepted(rid) else (
                "it was skipped already" if rid in self.state.skipped else "it is not among the current proposals")
            raise PaserInputError(f"cannot skip region {rid}: {why}")
        self.commit(lambda s: s.skipped.append(rid))

    def edited_regions(self) -> list[int]:
        """Accepted regions whose canvas pixels differ from their saved (accepted) crop: painted
        over since they were accepted. `accept_edits` saves them; until then training uses the
        accepted crop while the canvas (and a full-volume export) shows the edits."""
        edited = []
        by_z: dict[int, list[AcceptedRegion]] = {}
        for rec in self.state.accepted:
            by_z.setdefault(rec.z, []).append(rec)
        for z, recs in sorted(by_z.items()):
            y0, x0 = min(r.y0 for r in recs), min(r.x0 for r in recs)
            y1, x1 = max(r.y0 + r.h for r in recs), max(r.x0 + r.w for r in recs)
            window = np.asarray(self.labels[self.index(z, slice(y0, y1), slice(x0, x1))])
            for rec in recs:
                canvas = window[rec.y0 - y0:rec.y0 - y0 + rec.h, rec.x0 - x0:rec.x0 - x0 + rec.w]
                if _crop_key(canvas) != self._saved_key(rec):
                    edited.append(rec.region_id)
        return sorted(edited)

    def _saved_key(self, rec: AcceptedRegion) -> bytes:
        """A digest of a region's saved crop, remembered per (region, seq): crops never change in place."""
        key = (rec.region_id, rec.seq)
        if key not in self._crop_keys:
            self._crop_keys[key] = _crop_key(load_crop(self.folder, rec.region_id, rec.seq))
        return self._crop_keys[key]

    def accept_edits(self, region_ids: Iterable[int] | None = None) -> list[AcceptedRegion]:
        """Save the canvas of edited accepted regions (all `edited_regions()` by default) as their
        accepted labels, in one commit, so training and export agree with what is painted.

        A region keeps its sampler, rank and split. A region whose pixels were all erased is
        taken back (`unaccept`): there is nothing left to accept. Returns the re-saved records.
        """
        with self._lock:
            ids = self.edited_regions() if region_ids is None else [self._record(r).region_id for r in region_ids]
            items, erased = [], []
            for region in self.pool.regions(np.array(ids, dtype=np.int64)) if ids else []:
                patch = self._patch(region, None)
                if patch.any():
                    items.append((region, patch))
                else:
                    erased.append(region.id)
            if not items and not erased:
                return []
            return self._accept_all(items, keep_origin=True, drop=erased)

    def _split_for(self, index: int) -> str:
        every = int(self.state.settings.get("val_every", 0))
        return "val" if every and index % every == every - 1 else "train"

    def _fractions(self, patch: np.ndarray) -> dict[str, float]:
        counts = np.bincount(patch.ravel(), minlength=self.n_classes + 1) / patch.size
        return {"unlabeled": float(counts[0]), **{n: float(counts[k + 1]) for k, n in enumerate(self.classes.names)}}

    def sync_labels(self, layer_data) -> None:
        """Copy a Labels layer's data (layer convention, the image's shape) into the canvas."""
        if layer_data is self.labels:
            return
        shape = tuple(int(s) for s in np.shape(layer_data))
        if shape != self.shape:
            raise PaserInputError(
                f"the labels layer has shape {shape} but the session image has shape {self.shape}: use the "
                "session's labels layer, or labels made for this image"
            )
        for z in range(self.n_slices):
            ix = self.index(z)
            data = np.asarray(layer_data[ix])
            layer_to_classes(data, n_classes=self.n_classes)
            self.labels[ix] = data.astype(np.uint8)

    # ------------------------------------------------------------------ training

    def training_data(self) -> TrainingData:
        """Every painted pixel outside held-out regions (train) and the accepted "val" regions (see session.jobs)."""
        return training_data(self)

    def retrain(self, config: TrainConfig | None = None, roles: Sequence[str] = ("f0",),
                should_stop: Callable[[], bool] | None = None, refresh: bool = True,
                samples: int = 5, keep_if_worse: bool = True) -> Generator[Progress, None, RetrainResult]:
        """Retrain `roles` on the labels (a snapshot taken now), as a progress generator.

        Labels are every painted pixel (accepted regions, partial regions, strokes in any slice);
        accepted "val" regions are held out. Models train on copies (RETRAIN_CONFIG: a fixed
        number of steps on class-balanced augmented crops); then, with held-out regions, each
        role's new weights replace the old ones only if they score at least as well there
        (keep_if_worse); the RetrainResult's message says which were kept and why. Every
        finished retrain adds a learning-curve point; a cancel (via should_stop or closing the
        generator) changes nothing. Then, with `refresh` and new weights, maps of the slices that
        had maps are recomputed and the last proposal request is repeated.
        """
        cfg = config or RETRAIN_CONFIG
        missing = [r for r in roles if r not in self.models]
        if missing:
            raise PaserInputError(f"no model {', '.join(missing)} yet: load a run folder or start new models first")
        data = self.training_data()
        if not data.images:
            raise PaserInputError("no training labels yet: paint some pixels in any slice, or label and accept at "
                                  "least one region first")
        return retrain_steps(self, cfg, list(roles), data, should_stop, refresh, samples, keep_if_worse)

    def train_router(self, lambdas: Sequence[float] | None = None, should_stop: Callable[[], bool] | None = None,
                     **options) -> Generator[Progress, None, RouterResult]:
        """Retrain f1, f2 on the accepted regions, then train the routing policy bank (one policy per
        lambda) on them, as a progress generator; see `session.router_jobs`. A cancel keeps the previous
        bank. `options` are `RouterConfig` fields (epochs, train_models, model_config, samples, ...)."""
        from napari_paser.session.router_jobs import RouterConfig, iter_train_router

        if lambdas is not None:
            options["lambdas"] = tuple(lambdas)
        return iter_train_router(self, RouterConfig(**options), should_stop)

    def export_run(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the session's f0/f1/f2 and policies as a run folder for `paser route` / `paser segment`."""
        from napari_paser.session.router_jobs import export_run

        return export_run(self, out, overwrite)

    # ------------------------------------------------------------------ export

    def export(self, out: str | Path, full_volume: bool = False, fmt: str = "tiff", edits: str = "refuse") -> Path:
        """Write the labeled set (crops + manifest, optionally the label volume); see `export`.

        edits: what to do with accepted regions edited since accepted (`edited_regions`):
        "refuse" (default: PaserInputError naming them), "accept" (`accept_edits` first), or
        "keep" (export the accepted crops as they are; the manifest lists the edited regions).
        """
        from napari_paser.data.export import export_session

        return export_session(self, out, full_volume=full_volume, fmt=fmt, edits=edits)


READ_ONLY_REFUSES = ("propose", "accept", "accept_painted", "unaccept", "skip", "accept_edits", "sync_labels",
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


def _crop_key(crop: np.ndarray) -> bytes:
    crop = np.ascontiguousarray(crop, dtype=np.uint8)
    return hashlib.blake2b(crop.tobytes() + str(crop.shape).encode(), digest_size=16).digest()


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


def _plain(value):
    return str(value) if isinstance(value, Path) else value


def _copy_image(image, target) -> None:
    """Copy slice by slice (never the whole dask/zarr volume in memory); refuse NaN and inf."""
    slices = [(...,)] if len(target.shape) == 2 else [(z,) for z in range(target.shape[0])]
    for ix in slices:
        data = np.asarray(image[ix])
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            where = "" if ix == (...,) else f" in slice {ix[0]}"
            raise PaserInputError(f"the image holds NaN or inf values{where}: replace them (np.nan_to_num) first")
        target[ix] = data
