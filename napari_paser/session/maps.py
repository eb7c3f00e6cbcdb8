"""The session's maps: f0's MC-dropout prediction, entropy and BALD per slice, stored in the
folder, which slices are current, and their refresh after a model change."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence

import numpy as np

from learners.uncertainty import UncertaintyMaps, uncertainty_maps
from learners.unet import UNet
from napari_paser.errors import PaserInputError
from napari_paser.session import refresh
from napari_paser.session.jobs import (
    Progress,
)

MAP_NAMES = {"prediction": np.uint8, "entropy": np.float32, "bald": np.float32}


class MapsMixin:
    """Maps of a `Session`: compute, store, refresh."""

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
            if not self.slice_maps_now(model, z, samples, version, tile=tile)[1]:  # models replaced meanwhile
                return i
            yield Progress("maps", i + 1, len(zs), f"maps of slice {z}", z=z)
        return len(zs)

    def slice_maps_now(self, model: UNet, z: int, samples: int, version: int, tile: int | None = None,
                       image: np.ndarray | None = None) -> tuple[UncertaintyMaps, bool]:
        """Compute `model`'s maps of slice z (of `image` if given) and store them as model `version`'s:
        the one f0 pass per slice that maps, routing and proposals share. (maps, stored): not stored
        when that version was replaced meanwhile."""
        z = int(z)
        m = uncertainty_maps(model, self.image_slice(z) if image is None else image, samples=samples, tile=tile,
                             seed=z)
        return m, self._store_maps(z, m, version)

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
