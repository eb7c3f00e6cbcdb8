"""The session's router as one part of a session (`Router`): routing a slice, training the routing bank,
making a stale ranked bank again after a refresh, and exporting the session as a run folder."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np

from napari_paser.session.maps import MapsCache
from napari_paser.session.models import ModelSet
from napari_paser.session.progress import Progress
from napari_paser.session.refresh import RefreshReport
from napari_paser.session.router.config import RouterConfig, RouterResult
from napari_paser.session.router.export import export_run
from napari_paser.session.router.train import iter_train_router, rethreshold
from napari_paser.session.routing import SliceRouting, policy_models, route_slice
from napari_paser.session.store import Store


class Router:
    """Routing and the routing bank of a session, on its store, model set and maps cache.

    It subscribes to the maps' refresh: a refresh that leaves the slices a ranked bank's thresholds read
    with the new f0's maps makes that bank again (`rethreshold`).
    """

    def __init__(self, store: Store, model_set: ModelSet, maps_cache: MapsCache) -> None:
        self.store, self.model_set, self.maps_cache = store, model_set, maps_cache
        maps_cache.after_refresh.append(self._after_refresh)

    def _after_refresh(self, report: RefreshReport, samples: int, should_stop: Callable[[], bool] | None
                       ) -> Generator[Progress, None, None]:
        redone = yield from rethreshold(self, samples, should_stop)
        report.rethresholded = report.rethresholded or redone

    def route(self, z: int = 0, samples: int = 5, lam: float | None = None, execute: bool = True) -> SliceRouting:
        """PaSeR routing of slice z: model per patch, routed segmentation, GFLOPs vs the largest model.

        `lam` picks the bank's policy nearest to it. f0's state of the slice is cached, so routing
        the same slice again with another lambda and `execute=False` (map and cost only, no routed
        model runs) takes milliseconds: what the live control does.
        """
        lam, policy = self.model_set.pick_policy(lam)
        (z,) = self.store.slices(z)
        models = policy_models(policy, self.model_set.models, "the routing policy")
        if not execute and self.maps_cache.has_state(z, samples):  # the policy reads f0's state alone: no image read
            image = np.empty(self.store.shape[-2:], np.float32)
        else:
            image = self.store.image_slice(z)
        return route_slice(models, policy, image, z, samples, self.maps_cache.f0_state(z, samples, image), execute,
                           lam)

    def train_router(self, lambdas: Sequence[float] | None = None, should_stop: Callable[[], bool] | None = None,
                     **options) -> Generator[Progress, None, RouterResult]:
        """Retrain f2 (network: f1, f2) on the accepted regions, then make the routing policy bank, as a progress
        generator; see `session.router`. The bank is one uncertainty-ranked policy per share of
        patches (`shares=`), or with `lambdas` (or policy="network") one policy network per lambda. A
        cancel keeps the previous bank. `options` are `RouterConfig` fields (policy, shares, epochs,
        train_models, model_config, samples, ...)."""
        if lambdas is not None:
            options["lambdas"] = tuple(lambdas)
            options.setdefault("policy", "network")
        if "shares" in options:
            options["shares"] = tuple(options["shares"])
        return iter_train_router(self, RouterConfig(**options), should_stop)

    def export_run(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the session's f0/f1/f2 and policies as a run folder for `paser route` / `paser segment`."""
        return export_run(self, out, overwrite)
