"""The one sampler registry: names, construction, and what each sampler reads.

Both the labeling session (`napari_paser.session`) and the active-learning simulation
(`napari_paser.bench.al_sim`) build samplers with `make_sampler` and hand them exactly the
inputs `needs_of` lists, gathered by `gather_needs`, so the benchmark measures the code a
person runs. Where the inputs come from differs (the session reads its stored f0 maps and
painted canvas, the simulation computes maps with its model and reveals ground truth), so
each caller passes its own sources; how they become a sampler's `needs` lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from learners.modes import eval_mode
from sampling.base import Sampler, SamplingError
from sampling.regions import RegionEmbedder, RegionPool

MAPS = ("prediction", "entropy", "bald")
"""f0's per-pixel maps a sampler may read, (Z, H, W) each (`learners.uncertainty.uncertainty_maps`)."""


@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler: how to build it and which inputs (besides `pool`) an instance reads."""

    name: str
    summary: str
    build: Callable[..., Sampler]
    needs: Callable[[Sampler | None], frozenset[str]]  # of an instance (None: with default options)
    options: tuple[str, ...] = ()  # keyword options `build` takes


def _random(**options) -> Sampler:
    from sampling.uncertainty import RandomSampler

    return RandomSampler(**options)


def _entropy(**options) -> Sampler:
    from sampling.uncertainty import EntropySampler

    return EntropySampler(**options)


def _bald(**options) -> Sampler:
    from sampling.uncertainty import BaldSampler

    return BaldSampler(**options)


def _taudis(**options) -> Sampler:
    from sampling.taudis import TaudisSampler

    return TaudisSampler(**options)


def _effort(**options) -> Sampler:
    from sampling.effort import EffortSampler

    return EffortSampler(**options)


def _routing(**options) -> Sampler:
    from sampling.routing_value import RoutingValueSampler

    return RoutingValueSampler(**options)


SHIPPED_AGENT = Path(__file__).parent / "agents" / "dqn-agent.pt"
"""The DQN agent the package ships (`paser al train-dqn --synthetic`, see the README); a session
that picks "dqn" with no agent file uses it."""


def _dqn(dqn_checkpoint: str | Path | None = None, pool_size: int = 10) -> Sampler:
    from sampling.dqn import DQNAgent, DQNSampler, FeatureSpec

    path = SHIPPED_AGENT if dqn_checkpoint is None else Path(dqn_checkpoint)
    if dqn_checkpoint is None and not path.exists():
        raise SamplingError(f"the shipped DQN agent {path} is missing from this installation; reinstall napari-paser "
                            "or train one with `paser al train-dqn` and pass its .pt file (dqn_checkpoint=, --dqn)")
    agent = DQNAgent.load(path)
    if "features" not in agent.meta:
        raise SamplingError(f"{path} has no feature sizes in its meta ('features'): it was not saved by "
                            "`paser al train-dqn`; train an agent with it")
    return DQNSampler(agent, FeatureSpec.from_dict(agent.meta["features"]), pool_size=pool_size,
                      policy=agent.meta.get("policy", "agent"))


REGISTRY: dict[str, SamplerInfo] = {
    info.name: info for info in (
        SamplerInfo("random", "uniform random regions", _random, lambda s: frozenset()),
        SamplerInfo("entropy", "highest summed predictive entropy", _entropy, lambda s: frozenset({"entropy"})),
        SamplerInfo("bald", "highest summed BALD (mutual information)", _bald, lambda s: frozenset({"bald"})),
        SamplerInfo("taudis", "uncertainty oversampling + similarity set cover", _taudis,
                    lambda s: frozenset({"bald" if s is None else s.measure, "embeddings"}),
                    ("alpha", "beta", "sigma", "measure", "center")),
        SamplerInfo("effort", "highest expected gain (summed BALD) per expected corrected pixel of the model's "
                              "suggestion", _effort,
                    lambda s: frozenset({"entropy", "bald" if s is None else s.measure}),
                    ("measure", "floor", "n_classes")),
        SamplerInfo("routing", "where f0 and the larger models disagree most per unit of cost (labels that decide "
                               "routing)", _routing, lambda s: frozenset({"prediction", "disagreement", "model_costs"})),
        SamplerInfo("dqn", "a trained RALIS query agent (the shipped one unless dqn_checkpoint is given)", _dqn,
                    lambda s: frozenset({"prediction", "entropy", "bald", "labels", "state_ids"}),
                    ("dqn_checkpoint", "pool_size")),
    )
}
SAMPLERS = tuple(REGISTRY)
"""Sampler names, in the order a menu lists them."""


def sampler_info(name: str) -> SamplerInfo:
    if name not in REGISTRY:
        raise SamplingError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return REGISTRY[name]


def make_sampler(name: str, context: Mapping[str, object] | None = None, **options) -> Sampler:
    """The sampler `name` built with `options` (TAUDIS: alpha, beta, sigma, measure, center; DQN:
    dqn_checkpoint, pool_size); an unknown name or option is a `SamplingError`.

    `context` holds settings a caller has for whichever sampler it builds (a benchmark's agent
    path and pool size): each sampler takes the ones it declares, and `options` override them.
    """
    info = sampler_info(name)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        takes = ", ".join(info.options) or "no options"
        raise SamplingError(f"the {name} sampler does not take {', '.join(unknown)}; it takes {takes}")
    given = {k: v for k, v in (context or {}).items() if k in info.options and v is not None}
    return info.build(**{**given, **options})


def needs_of(sampler: Sampler | str) -> frozenset[str]:
    """The inputs `select` reads besides `pool` (among MAPS, embeddings, labels, state_ids), of a
    sampler instance or, by name, of that sampler with default options."""
    if isinstance(sampler, str):
        return sampler_info(sampler).needs(None)
    return sampler_info(sampler.name).needs(sampler)


def reads_maps(sampler: Sampler | str) -> bool:
    """Whether the sampler ranks by f0's output (so only slices with current maps are candidates)."""
    return bool(needs_of(sampler) & {*MAPS, "embeddings"})


def gather_needs(
    want: frozenset[str],
    pool: RegionPool,
    maps: Callable[[], Mapping[str, np.ndarray]] | None = None,
    embeddings: Callable[[], np.ndarray] | None = None,
    labels: Callable[[], object] | None = None,
    state_ids: Callable[[], np.ndarray] | None = None,
    disagreement: Callable[[], np.ndarray] | None = None,
    model_costs: Callable[[], np.ndarray] | None = None,
) -> dict:
    """The `needs` of a sampler's `select`: `pool` plus each input in `want` (`needs_of(sampler)`),
    each source called only if wanted.

    Sources: `maps()` -> {"prediction", "entropy", "bald"} (Z, H, W) arrays (lazy arrays welcome);
    `embeddings()` -> (len(pool), F); `labels()` -> (Z, H, W) class indices readable per region;
    `state_ids()` -> the DQN's fixed state set; `disagreement()` -> (len(pool), K) pixels where f_k and f0
    disagree and `model_costs()` -> (K,) Eq. 3 cost shares (`sampling.routing_value`).
    """
    sources = {"embeddings": embeddings, "labels": labels, "state_ids": state_ids, "disagreement": disagreement,
               "model_costs": model_costs}
    out: dict = {"pool": pool}
    if want & set(MAPS):
        if maps is None:
            raise SamplingError("this sampler reads f0's maps; compute maps first")
        m = maps()
        out.update({name: m[name] for name in MAPS if name in want})
    for name, source in sources.items():
        if name in want:
            if source is None:
                raise SamplingError(f"this sampler needs `{name}`, which the caller does not provide")
            out[name] = source()
    return out


@torch.no_grad()
def region_embeddings(model: nn.Module, pool: RegionPool, image_of: Callable[[int], np.ndarray],
                      slices: Iterable[int] | None = None) -> np.ndarray:
    """(len(pool), F) region embeddings: the model's decoder features (eval mode) averaged per region.

    `image_of(z)` gives normalised slice z; only `slices` (default all) are embedded, the rows of
    other slices' regions stay 0 (a sampler only ranks candidates of embedded slices).
    """
    zs = range(pool.shape[0]) if slices is None else slices
    one = RegionPool(pool.shape[1:], pool.size)
    out = None
    with eval_mode(model):
        for z in zs:
            image = np.ascontiguousarray(image_of(z), np.float32)
            feats = model.features(torch.from_numpy(image)[None, None])[0].numpy()
            emb = one.embed(feats)
            out = np.zeros((len(pool), emb.shape[1]), np.float64) if out is None else out
            out[pool.slice_ids(z)] = emb
    if out is None:
        raise SamplingError("no slices to embed: compute maps on at least one slice first")
    return out


class _SliceView:
    """(Z, H, W) indexing over `image_of(z)` for `RegionEmbedder`, keeping the last few slices read
    (the oversampled regions of one round fall on a handful of slices)."""

    def __init__(self, image_of: Callable[[int], np.ndarray], shape: tuple[int, int, int], keep: int = 4) -> None:
        self.image_of, self.shape, self.keep = image_of, tuple(shape), keep
        self._slices: dict[int, np.ndarray] = {}

    def __getitem__(self, index):
        z, ys, xs = index
        z = int(z)
        if z not in self._slices:
            if len(self._slices) >= self.keep:
                self._slices.pop(next(iter(self._slices)))
            self._slices[z] = np.asarray(self.image_of(z), np.float32)
        return self._slices[z][ys, xs]


def region_embedder(model: nn.Module, pool: RegionPool, image_of: Callable[[int], np.ndarray],
                    halo: int = 32) -> RegionEmbedder:
    """Region embeddings on demand: only the regions a sampler asks for are embedded (TAUDIS asks
    for its alpha*k oversampled ones), from crops with `halo` pixels of context, so a proposal over
    a large volume never runs the model on every slice. Session and simulation both use this."""

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        with eval_mode(model):
            return model.features(x.to(device)).cpu()

    return RegionEmbedder(features, _SliceView(image_of, pool.shape), pool, halo)
