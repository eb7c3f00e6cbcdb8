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

A Session is a thin front over its parts, each constructed with what it needs and owning one
concern (their methods do the work; a Session's methods forward to them):

- `store` (`session.store.Store`): the folder, its lock, session.json (`state`), the arrays, the
  region pool, crops and the commit point;
- `model_set` (`session.models.ModelSet`, on the store): models, routing policies, new models,
  installing a model version, retraining; after a retrain with new weights it runs its
  `on_retrained` subscribers;
- `maps_cache` (`session.maps.MapsCache`, on the store and the model set): f0's maps, which slices
  are current, f0's state per slice, the refresh (it subscribes to `on_retrained`; work that reads
  fresh maps subscribes to its `after_refresh`);
- `router` (`session.router.router.Router`, on the store, the model set and the maps cache):
  routing a slice, the routing bank, the run export (it subscribes the rethreshold of a stale
  ranked bank to `after_refresh`);
- `forest` (`session.forest.ForestAssist`, on the store and the model set): a random forest on 3D filter
  features of the accepted regions, scored against f0 on each region before f0 trains on it (it
  subscribes to `before_retrain`); its mode ("f0", "blend", "forest") says whether it joins the guesses;
- `suggestions` (`session.suggestions.Suggestions`, on the store, the model set, the maps cache, the
  router and the forest): the model's guess of each proposed region (f0's, assisted or routed), stored, and
  whether it is current;
- `proposer` (`session.proposals.Proposer`, on the store, the model set, the maps cache and the
  suggestions): proposals from the sampler registry, the spread of mapped slices, proposals on
  neighbouring slices (it subscribes the repeat of the last proposal request to `after_refresh`);
- `labeling` (`session.labeling.Labeling`, on the store, the suggestions and the proposer): accepting,
  taking back, skipping, edits, effort, the held-out regions.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from learners.grid import Grid
from learners.routing.bank import PolicyBank
from learners.routing.policy import PolicyNet
from learners.routing.router import F0State
from learners.training import TrainConfig
from learners.uncertainty import UncertaintyMaps
from learners.unet import UNet, UNetConfig
from napari_paser.session.effort import Effort
from napari_paser.session.export import export_session
from napari_paser.session.forest import ForestAssist
from napari_paser.session.labeling import Labeling, PartialRegionError  # noqa: F401 (re-exported)
from napari_paser.session.maps import MapsCache, View
from napari_paser.session.models import MODEL_ROLES, ModelSet
from napari_paser.session.progress import Progress
from napari_paser.session.proposals import SPREAD_PIXELS, Proposer
from napari_paser.session.refresh import RefreshReport
from napari_paser.session.router.config import RouterResult
from napari_paser.session.router.router import Router
from napari_paser.session.routing import SliceRouting
from napari_paser.session.store import (  # noqa: F401 (check_image, MIN_SIDE: re-exported)
    MIN_SIDE, AcceptedRegion, ClassSpec, CurvePoint, Proposal, State, Store, check_image,
)
from napari_paser.session.suggestions import Suggestions
from napari_paser.session.training import RetrainResult, TrainingData
from sampling.regions import Region, RegionPool
from sampling.registry import SAMPLERS  # noqa: F401 (the GUI's sampler menu)


class SessionWarning(UserWarning):
    """Something was repaired or is off on open (a restored session.json, a dropped record)."""


class Session:
    """Image, labels, regions, proposals, models and labeled set of one labeling session: a front over its
    parts (`store`, `model_set`, `maps_cache`, `router`, `forest`, `suggestions`, `proposer`, `labeling`; see
    the module doc)."""

    def __init__(self, store: Store) -> None:
        """Use `Session.create` or `Session.open`."""
        self.store = store
        self.model_set = ModelSet(store)
        self.maps_cache = MapsCache(store, self.model_set)
        # the router subscribes to the refresh before the proposer: the repeated proposals read the new bank
        self.router = Router(store, self.model_set, self.maps_cache)
        self.forest = ForestAssist(store, self.model_set)
        self.model_set.before_retrain.append(self.forest.learn)
        self.suggestions = Suggestions(store, self.model_set, self.maps_cache, self.router, self.forest)
        self.proposer = Proposer(store, self.model_set, self.maps_cache, self.suggestions)
        self.labeling = Labeling(store, self.suggestions, self.proposer)

    @classmethod
    def _held(cls, store: Store) -> Session:
        """The session on a store this call opened: a constructor that fails releases the folder."""
        try:
            return cls(store)
        except BaseException:
            store.close()
            raise

    # ------------------------------------------------------------------ create / open / close

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
        return cls._held(Store.create(folder, image, classes, colors, region_size, val_every, source, copy))

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
        session = cls._held(Store.open(folder, read_only))
        for note in session.warnings:
            warnings.warn(f"session {session.folder}: {note}", SessionWarning, stacklevel=2)
        return session

    @staticmethod
    def relink_image(folder: str | Path, image: str | Path) -> str:
        """Point a session that reads its image in place at the image's new place (after it moved);
        the new one must have the recorded shape and dtype. Returns the new volume spec."""
        return Store.relink_image(folder, image)

    def close(self) -> None:
        """Release the folder (its lock) and refuse further changes; reading stays possible."""
        self.store.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self.store.closed

    def _check_writable(self, action: str = "change") -> None:
        self.store.check_writable(action)

    def commit(self, mutate: Callable[[State], None]) -> None:
        """Apply `mutate` to a copy of the state and write it; memory changes only if the write succeeds."""
        self.store.commit(mutate)

    # ------------------------------------------------------------------ the store's views

    @property
    def folder(self) -> Path:
        return self.store.folder

    @property
    def state(self) -> State:
        return self.store.state

    @property
    def read_only(self) -> bool:
        return self.store.read_only

    @property
    def warnings(self) -> list[str]:
        """What open repaired or found off, for notifications."""
        return self.store.warnings

    @property
    def image(self):
        """The image (zarr array or in-place view), raw values, the image's own shape."""
        return self.store.image

    @property
    def labels(self):
        """The label canvas (zarr, uint8, napari Labels convention): give it to napari as it is."""
        return self.store.labels

    @property
    def maps(self) -> dict:
        """f0's stored maps by name (zarr arrays of the image's shape)."""
        return self.store.maps

    @property
    def pool(self) -> RegionPool:
        return self.store.pool

    @property
    def image_path(self) -> str | None:
        """The volume spec of an image read in place (None when the session holds its own copy)."""
        return self.store.image_path

    @property
    def volume_spec(self) -> str:
        """Where `open_volume` (and `paser segment --image`) reads the session's image."""
        return self.store.volume_spec

    @property
    def classes(self) -> ClassSpec:
        return self.store.classes

    @property
    def n_classes(self) -> int:
        return self.store.n_classes

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's own shape: (Y, X) or (Z, Y, X)."""
        return self.store.shape

    @property
    def n_slices(self) -> int:
        return self.store.n_slices

    @property
    def accepted(self) -> list[AcceptedRegion]:
        return list(self.store.state.accepted)

    @property
    def proposals(self) -> list[Proposal]:
        """The last proposals, best first (accepted ones included: see `is_accepted`)."""
        return list(self.store.state.proposals)

    @property
    def skipped(self) -> list[int]:
        """Region ids skipped in this round of proposals."""
        return list(self.store.state.skipped)

    @property
    def curve(self) -> list[CurvePoint]:
        return list(self.store.state.curve)

    def is_accepted(self, region_id: int) -> bool:
        return self.store.is_accepted(region_id)

    def region(self, region_id: int) -> Region:
        return self.store.region(region_id)

    def index(self, z: int, ys: slice = slice(None), xs: slice = slice(None)) -> tuple:
        """Index into the 2D or 3D arrays of the folder."""
        return self.store.index(z, ys, xs)

    def image_slice(self, z: int = 0) -> np.ndarray:
        """Slice z normalised to float32 [0, 1] by the volume's robust range (the model contract)."""
        return self.store.image_slice(z)

    def raw_crop(self, region: Region) -> np.ndarray:
        return self.store.raw_crop(region)

    def accepted_labels(self, region_id: int) -> np.ndarray:
        """The accepted label crop of a region, in the layer convention (0 = not labeled)."""
        return self.store.accepted_labels(region_id)

    def _record(self, region_id: int) -> AcceptedRegion:
        return self.store.record(region_id)

    def spread_slices(self, n: int = 8) -> list[int]:
        """n slices spread evenly over the volume (all of them when it has fewer)."""
        return self.store.spread_slices(n)

    # ------------------------------------------------------------------ proposals

    @property
    def pending_proposals(self) -> list[Proposal]:
        """The proposals neither accepted nor skipped this round."""
        return self.proposer.pending_proposals

    def next_proposal(self, after_rank: int = 0) -> Proposal | None:
        """The best pending proposal ranked after `after_rank` (wrapping around), for a "next" button."""
        return self.proposer.next_proposal(after_rank)

    def propose(self, k: int = 8, sampler: str = "entropy", seed: int = 0, max_per_slice: int | None = None,
                near: int = 0, suggest: bool = True, **options) -> list[Proposal]:
        """Rank k unlabeled regions with `sampler` and make them the current proposals (`Proposer.propose`)."""
        return self.proposer.propose(k, sampler, seed, max_per_slice, near, suggest, **options)

    def spread_count(self, most: int = 8, pixels: int = SPREAD_PIXELS) -> int:
        """How many slices a spread over the volume maps (`Proposer.spread_count`)."""
        return self.proposer.spread_count(most, pixels)

    def spread_maps(self, n: int = 8, samples: int = 5, should_stop: Callable[[], bool] | None = None
                    ) -> Generator[Progress, None, int]:
        """Compute the maps of the `spread_slices(n)` whose maps are not current; returns slices mapped."""
        return self.proposer.spread_maps(n, samples, should_stop)

    def neighbour_ids(self, depth: int = 2, around: Iterable[int] | None = None) -> np.ndarray:
        """Unlabeled regions at the place of the regions `around` on the slices z +- 1..depth."""
        return self.proposer.neighbour_ids(depth, around)

    def propose_neighbours(self, region_id: int, depth: int = 2) -> list[Proposal]:
        """Propose the region's place on the slices z +- 1..depth, after the pending proposals."""
        return self.proposer.propose_neighbours(region_id, depth)

    # ------------------------------------------------------------------ the labeled set

    def accept(self, region_id: int, labels_patch: np.ndarray | None = None, confirm_partial: bool = False,
               from_suggestion: bool = False, seconds: float | None = None) -> AcceptedRegion:
        """Accept the labels of one region and autosave (`Labeling.accept`)."""
        return self.labeling.accept(region_id, labels_patch, confirm_partial, from_suggestion, seconds)

    def painted_regions(self, z: int | None = None) -> np.ndarray:
        """Ids of regions not accepted yet that hold painted pixels in the canvas (slice z, or all)."""
        return self.labeling.painted_regions(z)

    def accept_painted(self, z: int | None = None, confirm_partial: bool = False) -> list[AcceptedRegion]:
        """Accept every region painted outside the accepted set (slice z, or all), in one commit."""
        return self.labeling.accept_painted(z, confirm_partial)

    def _patch(self, region: Region, labels_patch) -> np.ndarray:
        return self.labeling._patch(region, labels_patch)

    def _accept_all(self, items: list[tuple[Region, np.ndarray]], keep_origin: bool = False,
                    drop: Sequence[int] = (), effort: dict | None = None) -> list[AcceptedRegion]:
        return self.labeling._accept_all(items, keep_origin, drop, effort)

    def unaccept(self, region_id: int) -> None:
        """Take an accepted region back; its labels stay painted on the canvas (`Labeling.unaccept`)."""
        self.labeling.unaccept(region_id)

    def skip(self, region_id: int) -> None:
        """Drop a pending proposal for this round (saved); the next `propose` starts a new round."""
        self.labeling.skip(region_id)

    def edited_regions(self) -> list[int]:
        """Accepted regions whose canvas pixels differ from their saved (accepted) crop."""
        return self.labeling.edited_regions()

    def accept_edits(self, region_ids: Iterable[int] | None = None) -> list[AcceptedRegion]:
        """Save the canvas of edited accepted regions as their accepted labels (`Labeling.accept_edits`)."""
        return self.labeling.accept_edits(region_ids)

    def held_out_basis(self) -> tuple[int, int]:
        """How many accepted regions are held out now and from how many distinct slices."""
        return self.labeling.held_out_basis()

    def held_out_text(self, miou: float | None = None) -> str:
        """The held-out mIoU with the regions and slices it rests on, and what to label when too few."""
        return self.labeling.held_out_text(miou)

    def effort_of(self, region_id: int) -> Effort | None:
        """The correction effort of an accepted region (None when it was painted, not corrected)."""
        return self.labeling.effort_of(region_id)

    def effort_summary(self) -> dict:
        """Totals of the correction effort over the accepted set (`Labeling.effort_summary`)."""
        return self.labeling.effort_summary()

    def curve_effort(self) -> list[int]:
        """The x-axis of the learning curve in pixels a person touched."""
        return self.labeling.curve_effort()

    def sync_labels(self, layer_data) -> None:
        """Copy a Labels layer's data (layer convention, the image's shape) into the canvas."""
        self.labeling.sync_labels(layer_data)

    def export(self, out: str | Path, full_volume: bool = False, fmt: str = "tiff", edits: str = "refuse") -> Path:
        """Write the labeled set (crops + manifest, optionally the label volume); see `session.export`.

        edits: what to do with accepted regions edited since accepted (`edited_regions`):
        "refuse" (default: PaserInputError naming them), "accept" (`accept_edits` first), or
        "keep" (export the accepted crops as they are; the manifest lists the edited regions).
        """
        return export_session(self.labeling, out, full_volume=full_volume, fmt=fmt, edits=edits)

    # ------------------------------------------------------------------ suggestions

    def suggestion(self, region_id: int) -> np.ndarray:
        """The model's guess of a region shown when it was proposed, (h, w) in the layer convention."""
        return self.suggestions.suggestion(region_id)

    def stored_suggestion(self, region_id: int) -> np.ndarray | None:
        """The suggestion stored for a region (a file read), or None when none is stored."""
        return self.suggestions.stored(region_id)

    def set_forest_assist(self, enabled: bool) -> None:
        """Let the forest join f0's guesses where its scores say so (the default) or never (`session.forest`)."""
        self.forest.set_enabled(enabled)

    def assisted(self, volume, lo: float | None = None, hi: float | None = None, mode: str | None = None) -> np.ndarray:
        """(N, C, H, W) class probabilities of consecutive raw slices in the forest assist's mode (f0's, the
        forest's or their mean; `mode` overrides it; `ForestAssist.assisted`)."""
        return self.forest.assisted(volume, lo, hi, mode)

    def suggestion_source(self, region_id: int) -> str:
        """Where the stored suggestion of a region came from, in words ("" when none is stored)."""
        return self.suggestions.suggestion_source(region_id)

    def suggestions_current(self) -> bool:
        """Whether the stored suggestions come from the current models."""
        return self.suggestions.suggestions_current()

    @property
    def routes_suggestions(self) -> bool:
        """Whether suggestions are routed predictions: a routing policy and the models it routes between."""
        return self.suggestions.routes_suggestions

    def guessed_patch(self, region: Region, samples: int = 5, routes: dict | None = None) -> tuple[np.ndarray, dict]:
        """The current best guess of a region in the layer convention and where it came from."""
        return self.suggestions.guessed_patch(region, samples, routes)

    def predicted_patch(self, region: Region, samples: int = 5) -> np.ndarray:
        """f0's MC-mean prediction of a region in the layer convention."""
        return self.suggestions.predicted_patch(region, samples)

    def routed_patch(self, region: Region, samples: int = 5, lam: float | None = None,
                     routes: dict | None = None) -> tuple[np.ndarray, dict]:
        """The routed prediction of a region (layer convention) and where it came from."""
        return self.suggestions.routed_patch(region, samples, lam, routes)

    # ------------------------------------------------------------------ the maps

    def maps_version(self) -> int:
        """The model version the maps are current for: f0's."""
        return self.maps_cache.maps_version()

    def fresh_slices(self) -> list[int]:
        """Slices whose maps come from the current f0."""
        return self.maps_cache.fresh_slices()

    def stale_slices(self) -> list[int]:
        """Slices whose maps come from an older f0 (shown until refreshed; samplers skip them)."""
        return self.maps_cache.stale_slices()

    def slice_maps(self, z: int = 0) -> dict[str, np.ndarray]:
        """f0's prediction (class indices), entropy and BALD of slice z (zeros where not computed)."""
        return self.maps_cache.slice_maps(z)

    def compute_maps(self, z: int | Iterable[int] | None = None, samples: int = 5, tile: int | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     view: View | None = None) -> Generator[Progress, None, int]:
        """MC-dropout maps of slice(s) z (None: all) with f0 (`MapsCache.compute_maps`); returns slices done."""
        return self.maps_cache.compute_maps(z, samples, tile, should_stop, view)

    def refresh_order(self, focus: int | None = None) -> tuple[list[int], list[int]]:
        """Stale slices as (now, later): the slice `focus`, then the proposals' slices; then the rest."""
        return self.maps_cache.refresh_order(focus)

    def refresh(self, focus: int | None = None, everything: bool = True, samples: int = 5,
                should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, RefreshReport]:
        """After new weights: recompute stale maps, then repeat the last proposal request (`MapsCache.refresh`)."""
        return self.maps_cache.refresh(focus, everything, samples, should_stop)

    def map_tiles(self, shape: tuple[int, ...] | None = None, tile: int | None = None) -> Grid:
        """The tiles a slice's maps are computed in (one tile for slices up to `MAP_TILE`)."""
        return self.maps_cache.map_tiles(shape, tile)

    def map_steps(self, model: UNet, zs: Sequence[int], samples: int, tile: int | None,
                  should_stop: Callable[[], bool] | None, view: View | None = None) -> Generator[Progress, None, int]:
        """Compute and store `model`'s maps of slices `zs`, one Progress per tile; returns slices done."""
        return self.maps_cache.map_steps(model, zs, samples, tile, should_stop, view)

    def slice_maps_now(self, model: UNet, z: int, samples: int, version: int, tile: int | None = None,
                       image: np.ndarray | None = None) -> tuple[UncertaintyMaps, bool]:
        """Compute `model`'s maps of slice z and store them as f0 `version`'s: (maps, stored)."""
        return self.maps_cache.slice_maps_now(model, z, samples, version, tile, image)

    def _map_tiles(self, model: UNet, z: int, samples: int, version: int, tile: int | None,
                   image: np.ndarray | None = None, view: View | None = None):
        return self.maps_cache.tile_maps(model, z, samples, version, tile, image, view)

    def _commit_maps(self, z: int, version: int) -> bool:
        return self.maps_cache.commit_maps(z, version)

    def has_state(self, z: int, samples: int = 5) -> bool:
        """Whether f0's state of slice z is known for the current f0 (routing it again is then instant)."""
        return self.maps_cache.has_state(z, samples)

    def f0_state(self, z: int, samples: int = 5, image: np.ndarray | None = None) -> F0State:
        """f0's state of slice z (prediction and entropy) for routing (`MapsCache.f0_state`)."""
        return self.maps_cache.f0_state(z, samples, image)

    # ------------------------------------------------------------------ the models

    @property
    def models(self) -> dict[str, UNet]:
        """The models by role (f0, f1, f2)."""
        return self.model_set.models

    @property
    def policy(self) -> PolicyNet | None:
        """A loaded policy.pt (None without one)."""
        return self.model_set.policy

    @property
    def bank(self) -> PolicyBank:
        """The policy bank, by lambda or share (the live cost control)."""
        return self.model_set.bank

    @property
    def has_models(self) -> bool:
        return self.model_set.has_models

    @property
    def has_policy(self) -> bool:
        return self.model_set.has_policy

    @property
    def bank_stale(self) -> bool:
        """The policy bank was made with an older f0 than the current one."""
        return self.model_set.bank_stale

    @property
    def router_verdict(self) -> str:
        """What the held-out regions said about the session's routing bank ("" without one)."""
        return self.model_set.router_verdict

    @property
    def policy_lambdas(self) -> list[float]:
        """The cost weights of the policy bank (empty without one: then lambda is fixed)."""
        return self.model_set.policy_lambdas

    def load_models(self, run: str | Path, roles: Sequence[str] = MODEL_ROLES) -> list[str]:
        """Load f0 (required) and whichever of f1, f2 exist from a `paser train` run folder."""
        return self.model_set.load_models(run, roles)

    def load_policy(self, path: str | Path) -> None:
        """Load a trained routing policy (f_RL) for the routing overlay; it must fit the loaded models."""
        self.model_set.load_policy(path)

    def new_models(self, roles: dict[str, str | UNetConfig] | None = None, seed: int = 0,
                   start: str = "shipped") -> list[str]:
        """New models from size presets or configs, e.g. {"f0": "tiny"} (`ModelSet.new_models`)."""
        return self.model_set.new_models(roles, seed, start)

    def install_models(self, models: dict[str, nn.Module], source: str,
                       mutate_more: Callable[[State], None] | None = None, drop: Sequence[str] = ()) -> None:
        """Save `models` as the next model version (and forget roles in `drop`), commit, then remove old files."""
        self.model_set.install_models(models, source, mutate_more, drop)

    def require_f0(self) -> UNet:
        """f0, or a PaserInputError saying how to get one."""
        return self.model_set.require_f0()

    def pick_policy(self, lam: float | None = None) -> tuple[float | None, PolicyNet]:
        """The bank's policy nearest to `lam` (None: policy.pt, else the bank's middle one)."""
        return self.model_set.pick_policy(lam)

    def training_data(self) -> TrainingData:
        """Every painted pixel outside held-out regions (train) and the accepted "val" regions."""
        return self.model_set.training_data()

    def retrain(self, config: TrainConfig | None = None, roles: Sequence[str] = ("f0",),
                should_stop: Callable[[], bool] | None = None, refresh: bool = True,
                samples: int = 5, keep_if_worse: bool = True, focus: float = 0.0) -> Generator[Progress, None, RetrainResult]:
        """Retrain `roles` on the labels as a progress generator (`ModelSet.retrain`); with `refresh` and new
        weights the maps are refreshed and the last proposal request repeated."""
        return self.model_set.retrain(config, roles, should_stop, refresh, samples, keep_if_worse, focus)

    # ------------------------------------------------------------------ the router

    def route(self, z: int = 0, samples: int = 5, lam: float | None = None, execute: bool = True) -> SliceRouting:
        """PaSeR routing of slice z (`Router.route`)."""
        return self.router.route(z, samples, lam, execute)

    def train_router(self, lambdas: Sequence[float] | None = None, should_stop: Callable[[], bool] | None = None,
                     **options) -> Generator[Progress, None, RouterResult]:
        """Retrain the routed models, then make the routing policy bank (`Router.train_router`)."""
        return self.router.train_router(lambdas, should_stop, **options)

    def export_run(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the session's f0/f1/f2 and policies as a run folder for `paser route` / `paser segment`."""
        return self.router.export_run(out, overwrite)


READ_ONLY_REFUSES = ("propose", "propose_neighbours", "spread_maps", "accept", "accept_painted", "unaccept", "skip",
                     "accept_edits", "sync_labels", "load_models", "load_policy", "new_models", "compute_maps",
                     "retrain", "train_router")
"""The methods a read-only (or closed) session refuses with a PaserInputError (`commit` refuses any other)."""


def _refused_when_read_only(name: str, method: Callable) -> Callable:
    @functools.wraps(method)
    def guarded(self: Session, *args, **kwargs):
        self._check_writable(name.replace("_", " "))
        return method(self, *args, **kwargs)

    return guarded


for _name in READ_ONLY_REFUSES:
    setattr(Session, _name, _refused_when_read_only(_name, getattr(Session, _name)))
