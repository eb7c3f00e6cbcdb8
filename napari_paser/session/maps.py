"""The session's maps: f0's MC-dropout prediction, entropy and BALD per slice, stored in the
folder, which slices are current, and their refresh after a model change.

A slice larger than `MAP_TILE` on a side is mapped in tiles of that size, each run with f0's
receptive field as halo (`learners.uncertainty.receptive_halo`, so without dropout the tiles give
the whole-slice maps exactly), so memory is bounded by one tile whatever the slice size. Each
tile is stored as soon as it is done and reported, and the tiles of the part on screen (`view`)
come first, so a person sees the maps where they look before the rest of a 2048^2 slice is done.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence

import numpy as np

from learners.grid import Box, Grid
from learners.uncertainty import UncertaintyMaps, iter_tile_maps, receptive_halo
from learners.unet import UNet
from napari_paser.errors import PaserInputError
from napari_paser.session import refresh
from napari_paser.session.jobs import (
    Progress,
)

MAP_NAMES = {"prediction": np.uint8, "entropy": np.float32, "bald": np.float32}
MAP_TILE = 512
"""Slices with a side above this are mapped in tiles of this size (f0 tiny on a 576^2 tile with its halo:
about 0.3 GB; a whole 2048^2 slice at once took 6 GB)."""
View = tuple[int, int, int, int]
"""(y0, x0, y1, x1) of a slice: the part on screen, mapped first."""


class MapsMixin:
    """Maps of a `Session`: compute, store, refresh."""

    # ------------------------------------------------------------------ maps

    def maps_version(self) -> int:
        """The model version the maps are current for: f0's, since they are f0's alone (new f1/f2 weights or
        routing policies leave them current; measured in the model versions of `install_models`)."""
        f0 = self.state.models.get("f0")
        return int(f0["version"]) if f0 else self.state.model_version

    def fresh_slices(self) -> list[int]:
        """Slices whose maps come from the current f0 (recorded at its version or later)."""
        v = self.maps_version()
        return sorted(int(z) for z, ver in self.state.maps.items() if ver >= v)

    def slice_maps(self, z: int = 0) -> dict[str, np.ndarray]:
        """f0's prediction (class indices), entropy and BALD of slice z (zeros where not computed)."""
        return {name: np.asarray(arr[self.index(z)]) for name, arr in self.maps.items()}

    def compute_maps(self, z: int | Iterable[int] | None = None, samples: int = 5, tile: int | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     view: View | None = None) -> Generator[Progress, None, int]:
        """MC-dropout maps of slice(s) z (None: all) with f0, one slice at a time, large slices tile by tile
        (`tile`, default `MAP_TILE` where a side exceeds it) with the tiles meeting `view` first; returns
        slices done."""
        model = self.require_f0()
        zs = self._slices_arg(z)
        return self.map_steps(model, zs, samples, tile, should_stop, view)

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

    def map_tiles(self, shape: tuple[int, ...] | None = None, tile: int | None = None) -> Grid:
        """The tiles a slice's maps are computed in (one tile for slices up to `MAP_TILE`)."""
        h, w = (shape or self.shape)[-2:]
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
            tiles = self._map_tiles(model, z, samples, version, tile, view=view)
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
            if not self._commit_maps(z, version):
                return i
            yield Progress("maps", (i + 1) * n, len(zs) * n, f"maps of slice {z}", z=z)
        return len(zs)

    def slice_maps_now(self, model: UNet, z: int, samples: int, version: int, tile: int | None = None,
                       image: np.ndarray | None = None) -> tuple[UncertaintyMaps, bool]:
        """Compute `model`'s maps of slice z (of `image` if given) and store them as f0 `version`'s
        (`maps_version`): the one f0 pass per slice that maps, routing and proposals share. (maps, stored):
        not stored when that f0 was replaced meanwhile."""
        z = int(z)
        image = self.image_slice(z) if image is None else image
        h, w = image.shape
        mean = ent = mi = None
        stored = True
        for box, m, ok in self._map_tiles(model, z, samples, version, tile, image=image):
            if mean is None:
                mean = np.empty((m.mean_probs.shape[0], h, w), np.float32)
                ent, mi = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
            ys, xs = box.slices
            mean[:, ys, xs], ent[ys, xs], mi[ys, xs] = m.mean_probs, m.entropy, m.bald
            stored = stored and ok
        return UncertaintyMaps(mean, ent, mi), stored and self._commit_maps(z, version)

    def _map_tiles(self, model: UNet, z: int, samples: int, version: int, tile: int | None,
                   image: np.ndarray | None = None,
                   view: View | None = None) -> Generator[tuple[Box, UncertaintyMaps, bool], None, None]:
        """Slice z's maps tile by tile (those meeting `view` first), each written into the folder's maps while
        f0 `version` is current: (box, maps of the box, written). The slice is committed by `_commit_maps`."""
        z = int(z)
        image = self.image_slice(z) if image is None else image
        grid = self.map_tiles(image.shape, tile)
        tiles = iter_tile_maps(model, image, samples, grid.cell[0], receptive_halo(model), seed=z, view=view)
        for box, m in tiles:
            with self._lock:
                current = self.maps_version() == version
                if current:
                    ys, xs = box.slices
                    for name, arr in (("prediction", m.prediction), ("entropy", m.entropy), ("bald", m.bald)):
                        self.maps[name][self.index(z, ys, xs)] = arr
            yield box, m, current

    def _commit_maps(self, z: int, version: int) -> bool:
        """Record slice z's stored maps as f0 `version`'s; False if that f0 was replaced meanwhile."""
        with self._lock:
            if self.maps_version() != version:
                return False
            self.commit(lambda s: s.maps.__setitem__(str(z), version))
            return True

    def _map3d(self, name: str):
        arr = self.maps[name]
        return np.asarray(arr)[None] if len(self.shape) == 2 else arr
