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
crash leaves the last complete state and `Session.open` resumes it exactly. Methods may be
called from a worker thread and the GUI thread at once: state changes hold a lock, but run
at most one `compute_maps` or `retrain` at a time (they share f0).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from learners.checkpoint import load_checkpoint, save_checkpoint
from learners.routing.policy import PolicyNet, load_policy, save_policy
from learners.routing.bank import PolicyBank, load_bank
from learners.training import UNLABELED, TrainConfig
from learners.uncertainty import uncertainty_maps
from learners.unet import UNet, UNetConfig, preset_config
from napari_paser.data.dataset import normalise, robust_range
from napari_paser.errors import InputError, PaserInputError
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.session.jobs import (
    RETRAIN_CONFIG, Progress, RetrainResult, TrainingData, retrain_steps, training_data,
)
from napari_paser.session.routing import SliceRouting, check_policy, route_slice, slice_state
from napari_paser.session.sampling import SAMPLERS, dqn_state_ids, make_sampler, slice_embeddings  # noqa: F401 (SAMPLERS re-exported)
from napari_paser.session.store import (
    IMAGE, LABELS, MAPS, MODELS, AcceptedRegion, ClassSpec, CurvePoint, Proposal, State, check_new_folder,
    create_array, crop_path, load_crop, now_iso, open_array, read_state, save_crop, write_state,
)
from sampling.regions import Region, RegionPool

MODEL_ROLES = ("f0", "f1", "f2")
POLICY, POLICY_FILE = "policy", "policy.pt"
BANK_ROLE = "policy@"  # + lambda: the policy bank's members, e.g. "policy@0.300"
MODEL_SIZES = ("tiny", "medium", "large")
MAP_NAMES = {"prediction": np.uint8, "entropy": np.float32, "bald": np.float32}
MIN_SIDE = 16


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

    def __init__(self, folder: Path, state: State) -> None:
        """Use `Session.create` or `Session.open`."""
        self.folder, self.state = folder, state
        self.image = open_array(folder / IMAGE, "r")
        self.labels = open_array(folder / LABELS, "r+")
        self.maps = {name: open_array(folder / MAPS / name, "r+") for name in MAP_NAMES}
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
        write_state(folder, state)
        return cls(folder, state)

    @classmethod
    def open(cls, folder: str | Path) -> Session:
        """Resume a session exactly as last committed (accepted regions are out of the candidates)."""
        folder = Path(folder)
        return cls(folder, read_state(folder))

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
        return [p for p in self.state.proposals if not self.is_accepted(p.region_id)]

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

    def _ix(self, z: int, ys: slice = slice(None), xs: slice = slice(None)) -> tuple:
        """Index into the 2D or 3D arrays of the folder."""
        return (z, ys, xs) if len(self.shape) == 3 else (ys, xs)

    def image_slice(self, z: int = 0) -> np.ndarray:
        """Slice z normalised to float32 [0, 1] by the volume's robust range (the model contract)."""
        return normalise(np.asarray(self.image[self._ix(z)]), self.state.image["lo"], self.state.image["hi"])

    def raw_crop(self, region: Region) -> np.ndarray:
        return np.asarray(self.image[self._ix(*region.slices)])

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

    def _commit(self, mutate: Callable[[State], None]) -> None:
        """Apply `mutate` to a copy of the state and write it; memory changes only if the write succeeds."""
        with self._lock:
            new = copy.deepcopy(self.state)
            mutate(new)
            write_state(self.folder, new)
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
            check_policy(policy, loaded, self.n_classes, str(run / POLICY_FILE))
            loaded[POLICY] = policy
        for lam, policy in load_bank(run).policies.items():  # optional: the live lambda control
            check_policy(policy, loaded, self.n_classes, f"{run}/policies (lambda {lam})")
            loaded[bank_role(lam)] = policy
        dropped = [r for r in self.state.models if r not in loaded]  # a run replaces the whole set
        self._install(loaded, source=str(run.resolve()), drop=dropped)
        return list(loaded)

    def load_policy(self, path: str | Path) -> None:
        """Load a trained routing policy (f_RL) for the routing overlay; it must fit the loaded models."""
        policy = load_policy(path).policy
        check_policy(policy, self.models, self.n_classes, str(path))
        self._install({POLICY: policy}, source=str(Path(path).resolve()))

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
        check_policy(policy, self.models, self.n_classes, "the routing policy")
        models = [self.models[f"f{k}"] for k in range(policy.config.n_models)]
        image = self.image_slice(z)
        return route_slice(models, policy, image, z, samples, self.f0_state(z, samples, image), execute, lam)

    def has_state(self, z: int, samples: int = 5) -> bool:
        """Whether f0's state of slice z is cached (routing it again is then instant)."""
        return self._state_key(z, samples) in self._states

    def f0_state(self, z: int, samples: int = 5, image: np.ndarray | None = None):
        """f0's MC-dropout state of slice z for routing, cached for the current f0 weights."""
        key = self._state_key(z, samples)
        with self._lock:
            if key in self._states:
                return self._states[key]
        state = slice_state(self._require_f0(), self.image_slice(z) if image is None else image, z, samples)
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
                self._install(group, source=source)
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

    def _install(self, models: dict[str, UNet], source: str, mutate_more: Callable[[State], None] | None = None,
                 drop: Sequence[str] = ()) -> None:
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
            self._commit(mutate)
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

    def _require_f0(self) -> UNet:
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
        return {name: np.asarray(arr[self._ix(z)]) for name, arr in self.maps.items()}

    def compute_maps(self, z: int | Iterable[int] | None = None, samples: int = 5, tile: int | None = None,
                     should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, int]:
        """MC-dropout maps of slice(s) z (None: all) with f0, one slice at a time; returns slices done."""
        model = self._require_f0()
        zs = self._slices_arg(z)
        return self._maps_gen(model, zs, samples, tile, should_stop)

    def _slices_arg(self, z) -> list[int]:
        zs = list(range(self.n_slices)) if z is None else [z] if np.isscalar(z) else list(z)
        bad = [int(v) for v in zs if not 0 <= int(v) < self.n_slices]
        if bad:
            raise PaserInputError(f"slice(s) {bad} out of range: the image has slices 0..{self.n_slices - 1}")
        return [int(v) for v in zs]

    def _maps_gen(self, model, zs, samples, tile, should_stop) -> Generator[Progress, None, int]:
        version = self.state.model_version
        for i, z in enumerate(zs):
            if should_stop is not None and should_stop():
                yield Progress("cancelled", i, len(zs), "maps cancelled")
                return i
            m = uncertainty_maps(model, self.image_slice(z), samples=samples, tile=tile, seed=z)
            with self._lock:
                if self.state.model_version != version:  # models replaced meanwhile: these maps are stale
                    return i
                for name, arr in (("prediction", m.prediction), ("entropy", m.entropy), ("bald", m.bald)):
                    self.maps[name][self._ix(z)] = arr
                self._commit(lambda s: s.maps.__setitem__(str(z), version))
            yield Progress("maps", i + 1, len(zs), f"maps of slice {z}", z=z)
        return len(zs)

    def _map3d(self, name: str):
        arr = self.maps[name]
        return np.asarray(arr)[None] if len(self.shape) == 2 else arr

    # ------------------------------------------------------------------ proposals

    def propose(self, k: int = 8, sampler: str = "entropy", seed: int = 0, **options) -> list[Proposal]:
        """Rank k unlabeled regions with `sampler` (one of SAMPLERS) and make them the current proposals.

        Samplers other than "random" choose among slices whose maps are current (`compute_maps`).
        options: TAUDIS alpha/beta/sigma/measure; DQN dqn_checkpoint (and pool_size).
        """
        chooser = make_sampler(sampler, **options)
        candidates, needs = self.pool.candidates(), {"pool": self.pool}
        if sampler != "random":
            candidates, needs = self._map_needs(sampler, candidates, needs, chooser)
        if candidates.size == 0:
            raise PaserInputError("no unlabeled regions left to propose" + ("" if sampler == "random" else
                                  " in the slices with current maps: compute maps on more slices"))
        try:
            sel = chooser.select(candidates, int(k), np.random.default_rng(seed), **needs)
        except InputError as exc:
            raise PaserInputError(str(exc)) from None
        proposals = [self._proposal(rank, rid, score, sampler)
                     for rank, (rid, score) in enumerate(zip(sel.ids.tolist(), sel.scores.tolist()), 1)]
        request = {"k": int(k), "sampler": sampler, "seed": int(seed), **{n: _plain(v) for n, v in options.items()}}

        def mutate(s: State) -> None:
            s.proposals, s.proposal_request = proposals, request

        self._commit(mutate)
        return proposals

    def _proposal(self, rank: int, region_id: int, score: float, sampler: str) -> Proposal:
        r = self.pool.region(region_id)
        return Proposal(rank, r.id, r.z, r.y0, r.x0, r.h, r.w, float(score), sampler)

    def _map_needs(self, sampler, candidates, needs, chooser):
        model = self._require_f0()
        fresh = self.fresh_slices()
        if not fresh:
            raise PaserInputError(
                f"the {sampler} sampler reads f0's uncertainty maps and none are current: compute maps (slice or "
                "volume) first, or use the random sampler"
            )
        candidates = candidates[np.isin(self.pool.z_of(candidates), fresh)]
        needs.update(entropy=self._map3d("entropy"), bald=self._map3d("bald"), prediction=self._map3d("prediction"))
        if sampler == "taudis":
            emb = None
            for z in fresh:
                e = slice_embeddings(model, self.image_slice(z), self.pool.size)
                emb = np.zeros((len(self.pool), e.shape[1])) if emb is None else emb
                emb[self.pool.slice_ids(z)] = e
            needs["embeddings"] = emb
        if sampler == "dqn":
            if chooser.spec.n_classes != self.n_classes:
                raise PaserInputError(f"the DQN agent was trained for {chooser.spec.n_classes} classes but this session "
                                      f"has {self.n_classes}: use an agent trained on {self.n_classes}-class data")
            allowed = np.concatenate([self.pool.slice_ids(z) for z in fresh])
            state_ids = dqn_state_ids(self.pool, allowed, chooser.spec.state_regions)
            needs.update(state_ids=state_ids, labels=_CanvasClasses(self))
            candidates = candidates[~np.isin(candidates, state_ids)]
        return candidates, needs

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
                self.labels[self._ix(*region.slices)] = patch
            return self._accept_all([(region, patch)])[0]

    def painted_regions(self, z: int | None = None) -> np.ndarray:
        """Ids of regions not accepted yet that hold painted pixels in the canvas (slice z, or all)."""
        one = RegionPool(self.pool.shape[1:], self.pool.size)
        found = []
        for zz in self._slices_arg(z):
            painted = np.asarray(self.labels[self._ix(zz)]) > 0
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
            patch = np.asarray(self.labels[self._ix(*region.slices)])
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

    def _accept_all(self, items: list[tuple[Region, np.ndarray]]) -> list[AcceptedRegion]:
        """Save the crops, then commit the records in one state write."""
        with self._lock:
            by_prop = {p.region_id: p for p in self.state.proposals}
            seq0, records, crops = int(self.state.settings.get("next_seq", 0)), [], {}
            old = {a.region_id: a for a in self.state.accepted}
            n_before = len(self.state.accepted)
            for i, (region, patch) in enumerate(items):
                prop = by_prop.get(region.id)
                split = old[region.id].split if region.id in old else self._split_for(n_before + len(records))
                records.append(AcceptedRegion(
                    region.id, region.z, region.y0, region.x0, region.h, region.w,
                    prop.sampler if prop else "manual", prop.rank if prop else None, now_iso(),
                    self._fractions(patch), split, seq0 + i,
                ))
                crops[region.id] = save_crop(self.folder, region.id, seq0 + i, patch)

            def mutate(s: State) -> None:
                ids = {r.region_id for r in records}
                s.accepted = [a for a in s.accepted if a.region_id not in ids] + records
                s.settings["next_seq"] = seq0 + len(records)

            self._commit(mutate)
            for rid, rec in old.items():
                if rid in crops:
                    crop_path(self.folder, rid, rec.seq).unlink(missing_ok=True)
            return records

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
            ix = self._ix(z)
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

    # ------------------------------------------------------------------ export

    def export(self, out: str | Path, full_volume: bool = False, fmt: str = "tiff") -> Path:
        """Write the labeled set (crops + manifest, optionally the label volume); see `export`."""
        from napari_paser.data.export import export_session

        return export_session(self, out, full_volume=full_volume, fmt=fmt)


class _CanvasClasses:
    """(Z, H, W) class indices of the canvas, read per index (255 where not labeled), for the DQN."""

    def __init__(self, session: Session) -> None:
        self.session, self.shape = session, session.pool.shape

    def __getitem__(self, index):
        data = np.asarray(self.session.labels[self.session._ix(*index)])
        classes, mask = layer_to_classes(data)
        return np.where(mask, classes, UNLABELED)


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
