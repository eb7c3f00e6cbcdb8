"""The session's maps (`MapsCache`): f0's MC-dropout prediction, entropy and BALD per slice, stored in the
folder, which slices are current, f0's state of a slice for routing, and their refresh after a model change
(it subscribes to the model set's retrains; work that reads the fresh maps subscribes to its refresh).

A slice larger than `MAP_TILE` on a side is mapped in tiles of that size, each run with f0's
receptive field as halo (`learners.uncertainty.receptive_halo`, so without dropout the tiles give
the whole-slice maps exactly), so memory is bounded by one tile whatever the slice size. Each
tile is stored as soon as it is done and reported, and the tiles of the part on screen (`view`)
come first, so a person sees the maps where they look before the rest of a 2048^2 slice is done.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence

import numpy as np
import torch

from learners.grid import Box, Grid
from learners.routing.router import F0State
from learners.uncertainty import UncertaintyMaps, iter_tile_maps, receptive_halo
from learners.unet import UNet
from napari_paser.session.models import ModelSet
from napari_paser.session.progress import Progress
from napari_paser.session.refresh import RefreshReport
from napari_paser.session.store import MAP_NAMES, Store  # noqa: F401 (MAP_NAMES: re-exported)

MAP_TILE = 512
"""Slices with a side above this are mapped in tiles of this size (f0 tiny on a 576^2 tile with its halo:
about 0.3 GB; a whole 2048^2 slice at once took 6 GB)."""
View = tuple[int, int, int, int]
"""(y0, x0, y1, x1) of a slice: the part on screen, mapped first."""
RefreshHook = Callable[[RefreshReport, int, "Callable[[], bool] | None"], Generator[Progress, None, None]]
"""Work after a finished refresh: (report, samples, should_stop) -> progress; it notes what it did in the report."""


class MapsCache:
    """f0's maps of the session's slices (stored in the store's maps arrays, versioned in its state) and f0's
    state per slice for routing; refreshed after every retrain that installs new weights (`on_retrained`).

    `after_refresh`: work that reads the fresh maps, run after every refresh that was not cancelled, in
    the order subscribed (the router's rethreshold, the repeat of the last proposal request).
    """

    def __init__(self, store: Store, model_set: ModelSet) -> None:
        self.store, self.model_set = store, model_set
        self._states: dict[tuple, F0State] = {}  # f0 state per (z, samples, f0 version), a few slices
        self.after_refresh: list[RefreshHook] = []
        model_set.on_retrained.append(self._retrained)

    def _retrained(self, samples: int, should_stop: Callable[[], bool] | None) -> Generator[Progress, None, None]:
        """New weights: forget f0's states of the previous weights, recompute the stale maps."""
        with self.store.lock:
            self._states = {k: v for k, v in self._states.items() if k[2] == self._f0_version()}
        yield from self.refresh(samples=samples, should_stop=should_stop)

    def maps_version(self) -> int:
        """The model version the maps are current for: f0's, since they are f0's alone (new f1/f2 weights or
        routing policies leave them current; measured in the model versions of `install_models`)."""
        f0 = self.store.state.models.get("f0")
        return int(f0["version"]) if f0 else self.store.state.model_version

    def fresh_slices(self) -> list[int]:
        """Slices whose maps come from the current f0 (recorded at its version or later)."""
        v = self.maps_version()
        return sorted(int(z) for z, ver in self.store.state.maps.items() if ver >= v)

    def slice_maps(self, z: int = 0) -> dict[str, np.ndarray]:
        """f0's prediction (class indices), entropy and BALD of slice z (zeros where not computed)."""
        return {name: np.asarray(arr[self.store.index(z)]) for name, arr in self.store.maps.items()}

    def compute_maps(self, z: int | Iterable[int] | None = None, samples: int = 5, tile: int | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     view: View | None = None) -> Generator[Progress, None, int]:
        """MC-dropout maps of slice(s) z (None: all) with f0, one slice at a time, large slices tile by tile
        (`tile`, default `MAP_TILE` where a side exceeds it) with the tiles meeting `view` first; returns
        slices done."""
        model = self.model_set.require_f0()
        zs = self.store.slices(z)
        return self.map_steps(model, zs, samples, tile, should_stop, view)

    def stale_slices(self) -> list[int]:
        """Slices whose maps come from an older f0 (shown as they are until refreshed; samplers skip them)."""
        version = self.maps_version()
        return sorted(int(z) for z, v in self.store.state.maps.items() if v < version)

    def refresh_order(self, focus: int | None = None) -> tuple[list[int], list[int]]:
        """Stale slices as (now, later). now: the slice `focus` (on screen), then the slices of the proposals,
        pending ones first by rank (what the person visits next and what repeating the proposal reads);
        later: the other stale slices, nearest to `focus` first (see `session.refresh`)."""
        stale = set(self.stale_slices())
        proposals = sorted(self.store.state.proposals, key=lambda p: (self.store.is_accepted(p.region_id), p.rank))
        now: list[int] = []
        for z in ([int(focus)] if focus is not None else []) + [int(p.z) for p in proposals]:
            if z in stale and z not in now:
                now.append(z)
        centre = int(focus) if focus is not None else 0
        later = sorted(stale - set(now), key=lambda z: (abs(z - centre), z))
        return now, later

    def refresh(self, focus: int | None = None, everything: bool = True, samples: int = 5,
                should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, RefreshReport]:
        """After new weights: recompute stale maps in `refresh_order` (with everything=False only the slice
        on screen and the proposals' slices; the rest stay stale until shown), then run the `after_refresh`
        work (repeating the last proposal request). Returns a `RefreshReport` whose `message()` says exactly
        what was refreshed."""
        return self._refresh(self.model_set.require_f0(), focus, everything, samples, should_stop)

    def _refresh(self, f0: UNet, focus: int | None, everything: bool, samples: int,
                 should_stop: Callable[[], bool] | None) -> Generator[Progress, None, RefreshReport]:
        now, later = self.refresh_order(focus)
        todo = now + later if everything else now
        done = 0
        if todo:
            done = yield from self.map_steps(f0, todo, samples, None, should_stop)
        report = RefreshReport(refreshed=todo[:done], stale=self.stale_slices(), cancelled=done < len(todo),
                               volume=len(self.store.shape) == 3)
        if not report.cancelled:
            for hook in self.after_refresh:
                yield from hook(report, samples, should_stop)
        return report

    def map_tiles(self, shape: tuple[int, ...] | None = None, tile: int | None = None) -> Grid:
        """The tiles a slice's maps are computed in (one tile for slices up to `MAP_TILE`)."""
        h, w = (shape or self.store.shape)[-2:]
        tile = tile or (MAP_TILE if max(h, w) > MAP_TILE else max(h, w))
        return Grid((h, w), (tile, tile))

    def map_steps(self, model: UNet, zs: Sequence[int], samples: int, tile: int | None,
                  should_stop: Callable[[], bool] | None, view: View | None = None) -> Generator[Progress, None, int]:
        """Compute and store `model`'s maps of slices `zs`, one Progress per tile (per slice when a slice is
        one tile); returns slices done (what `compute_maps` and `refresh` run). A stop is honoured between
        tiles; a slice stopped midway keeps its previous maps' status (its stored tiles are recomputed)."""
        version = self.maps_version()
        n = len(self.map_tiles(tile=tile))
        stop = should_stop or (lambda: False)
        for i, z in enumerate(zs):
            if stop():
                yield Progress("cancelled", i * n, len(zs) * n, "maps cancelled")
                return i
            tiles = self.tile_maps(model, z, samples, version, tile, view=view)
            for j, (_box, _maps, stored) in enumerate(tiles, 1):
                if not stored:  # f0 replaced meanwhile
                    tiles.close()
                    return i
                if j < n:
                    yield Progress("maps", i * n + j, len(zs) * n, f"maps of slice {z}: tile {j} of {n}", z=z)
                    if stop():
                        tiles.close()
                        yield Progress("cancelled", i * n + j, len(zs) * n, "maps cancelled")
                        return i
            if not self.commit_maps(z, version):
                return i
            yield Progress("maps", (i + 1) * n, len(zs) * n, f"maps of slice {z}", z=z)
        return len(zs)

    def slice_maps_now(self, model: UNet, z: int, samples: int, version: int, tile: int | None = None,
                       image: np.ndarray | None = None) -> tuple[UncertaintyMaps, bool]:
        """Compute `model`'s maps of slice z (of `image` if given) and store them as f0 `version`'s
        (`maps_version`): the one f0 pass per slice that maps, routing and proposals share. (maps, stored):
        not stored when that f0 was replaced meanwhile."""
        z = int(z)
        image = self.store.image_slice(z) if image is None else image
        h, w = image.shape
        mean = ent = mi = None
        stored = True
        for box, m, ok in self.tile_maps(model, z, samples, version, tile, image=image):
            if mean is None:
                mean = np.empty((m.mean_probs.shape[0], h, w), np.float32)
                ent, mi = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
            ys, xs = box.slices
            mean[:, ys, xs], ent[ys, xs], mi[ys, xs] = m.mean_probs, m.entropy, m.bald
            stored = stored and ok
        return UncertaintyMaps(mean, ent, mi), stored and self.commit_maps(z, version)

    def tile_maps(self, model: UNet, z: int, samples: int, version: int, tile: int | None,
                   image: np.ndarray | None = None,
                   view: View | None = None) -> Generator[tuple[Box, UncertaintyMaps, bool], None, None]:
        """Slice z's maps tile by tile (those meeting `view` first), each written into the folder's maps while
        f0 `version` is current: (box, maps of the box, written). The slice is committed by `commit_maps`."""
        z = int(z)
        image = self.store.image_slice(z) if image is None else image
        grid = self.map_tiles(image.shape, tile)
        tiles = iter_tile_maps(model, image, samples, grid.cell[0], receptive_halo(model), seed=z, view=view)
        for box, m in tiles:
            with self.store.lock:
                current = self.maps_version() == version
                if current:
                    ys, xs = box.slices
                    for name, arr in (("prediction", m.prediction), ("entropy", m.entropy), ("bald", m.bald)):
                        self.store.maps[name][self.store.index(z, ys, xs)] = arr
            yield box, m, current

    def commit_maps(self, z: int, version: int) -> bool:
        """Record slice z's stored maps as f0 `version`'s; False if that f0 was replaced meanwhile."""
        with self.store.lock:
            if self.maps_version() != version:
                return False
            self.store.commit(lambda s: s.maps.__setitem__(str(z), version))
            return True

    def map3d(self, name: str):
        """The map `name` as (Z, H, W), whatever the image's dimensions (what samplers read)."""
        arr = self.store.maps[name]
        return np.asarray(arr)[None] if len(self.store.shape) == 2 else arr

    # ------------------------------------------------------------------ f0's state of a slice, for routing

    def has_state(self, z: int, samples: int = 5) -> bool:
        """Whether f0's state of slice z is known for the current f0 (routing it again is then instant)."""
        return self._state_key(z, samples) in self._states or int(z) in self.fresh_slices()

    def f0_state(self, z: int, samples: int = 5, image: np.ndarray | None = None) -> F0State:
        """f0's state of slice z (prediction and entropy) for routing: the slice's stored maps when
        they come from the current f0 (whatever `samples` they were computed with), else computed
        now with `uncertainty_maps` and stored as the slice's maps, so maps, routing and proposals
        share one f0 pass per slice and model version. Cached in memory for the current weights."""
        key = self._state_key(z, samples)
        with self.store.lock:
            if key in self._states:
                return self._states[key]
        f0 = self.model_set.require_f0()
        if int(z) in self.fresh_slices():  # the two maps the policy reads (not BALD)
            prediction, entropy = (np.asarray(self.store.maps[name][self.store.index(z)])
                                   for name in ("prediction", "entropy"))
        else:
            m, _ = self.slice_maps_now(f0, z, samples, self.maps_version(), image=image)
            prediction, entropy = m.prediction, m.entropy
        state = F0State(torch.from_numpy(np.asarray(prediction, np.uint8))[None],
                        torch.from_numpy(np.asarray(entropy, np.float32))[None], self.store.n_classes, samples)
        with self.store.lock:
            self._states = {k: v for k, v in self._states.items() if k[2] == key[2]}  # drop older weights'
            while len(self._states) >= 8:
                self._states.pop(next(iter(self._states)))
            self._states[key] = state
        return state

    def _f0_version(self) -> int | None:
        return self.store.state.models.get("f0", {}).get("version")

    def _state_key(self, z: int, samples: int) -> tuple:
        return (int(z), int(samples), self._f0_version())
