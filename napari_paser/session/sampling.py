"""What a session hands the sampler registry (`sampling.registry`) when it proposes regions.

The registry builds the sampler and says what it reads; this module supplies it from the
session's folder: f0's stored maps (only slices whose maps come from the current f0 are
candidates), region embeddings computed for the regions a sampler asks about, the painted canvas as class indices, and the
DQN's fixed state set. The AL benchmark (`napari_paser.bench.al_sim`) supplies the same
inputs from its simulation, through the same registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from learners.training import IGNORE_INDEX
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.errors import PaserInputError
from sampling.base import Sampler
from sampling.dqn import random_state_set
from sampling.registry import gather_needs, needs_of, reads_maps, region_embedder
from sampling.regions import RegionPool


class CanvasClasses:
    """(Z, H, W) class indices of a layer-convention canvas (2D or 3D), read per index, with
    `IGNORE_INDEX` where not painted: the labeled set's classes for the DQN features."""

    def __init__(self, canvas, pool_shape: tuple[int, int, int]) -> None:
        self.canvas, self.shape = canvas, pool_shape

    def __getitem__(self, index):
        index = index if len(self.canvas.shape) == 3 else index[1:]
        classes, mask = layer_to_classes(np.asarray(self.canvas[index]))
        return np.where(mask, classes, IGNORE_INDEX)


def proposal_inputs(sampler: Sampler, pool: RegionPool, fresh: Sequence[int], f0: Callable[[], nn.Module],
                    maps: Callable[[], Mapping[str, object]], image_of: Callable[[int], np.ndarray],
                    canvas, n_classes: int, models: Callable[[], Sequence[nn.Module]] | None = None
                    ) -> tuple[np.ndarray, dict]:
    """(candidate ids, needs) for `sampler.select` in a session.

    `fresh`: slices whose maps come from the current f0; `maps()` -> the (Z, H, W) map arrays;
    `image_of(z)`: normalised slice z; `canvas`: the labels array (layer convention); `models()` ->
    f0, f1, ... (the routing sampler compares them).
    """
    candidates = pool.candidates()
    if not reads_maps(sampler):
        return candidates, gather_needs(needs_of(sampler), pool)
    model = f0()
    if not fresh:
        raise PaserInputError(
            f"the {sampler.name} sampler reads f0's uncertainty maps and none are current: compute maps (slice or "
            "volume) first, or use the random sampler"
        )
    sampler.check_classes(n_classes)
    candidates = candidates[np.isin(pool.z_of(candidates), fresh)]
    want = needs_of(sampler)
    state_ids = None
    if "state_ids" in want:  # the DQN's state set: held out of the candidates (RALIS keeps D_S apart)
        allowed = np.concatenate([pool.slice_ids(z) for z in fresh])
        state_ids = random_state_set(allowed, sampler.spec.state_regions)
        candidates = candidates[~np.isin(candidates, state_ids)]
    needs = gather_needs(want, pool, maps=maps, embeddings=lambda: region_embedder(model, pool, image_of),
                         labels=lambda: CanvasClasses(canvas, pool.shape), state_ids=lambda: state_ids,
                         disagreement=lambda: _disagreement(models, pool, image_of, maps, fresh),
                         model_costs=lambda: _costs(models))
    return candidates, needs


def _larger(models) -> list[nn.Module]:
    chosen = list(models()) if models is not None else []
    if len(chosen) < 2:
        raise PaserInputError("the routing sampler compares f0 with f1/f2: load a run folder with f1.pt and f2.pt, "
                              "or add them (new_models) and train them")
    return chosen


def _disagreement(models, pool, image_of, maps, fresh) -> np.ndarray:
    from sampling.routing_value import model_disagreement

    return model_disagreement(_larger(models)[1:], pool, image_of, maps()["prediction"], fresh)


def _costs(models) -> np.ndarray:
    from learners.routing.router import model_costs

    return model_costs(_larger(models))
