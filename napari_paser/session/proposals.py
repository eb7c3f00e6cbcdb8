"""The sampler's proposals of a session (`Proposer`): ranking unlabeled regions with a sampler of the registry
(at most so many per slice, or only next to accepted regions), storing the model's suggestion of each, mapping a
spread of slices so proposals can span the volume, proposing a region's place on neighbouring slices, and
repeating the last proposal request after a refresh."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from pathlib import Path

import numpy as np

from napari_paser.errors import InputError, PaserInputError
from napari_paser.memory import release_memory
from napari_paser.session.maps import MapsCache
from napari_paser.session.models import MODEL_ROLES, ModelSet
from napari_paser.session.progress import Progress
from napari_paser.session.refresh import RefreshReport
from napari_paser.session.sampling import proposal_inputs
from napari_paser.session.store import MAP_NAMES, Proposal, State, Store
from napari_paser.session.suggestions import Suggestions
from sampling.registry import make_sampler


SPREAD_PIXELS = 8 * 512 * 512
"""Pixels of model work a spread over the volume maps before proposing (8 slices of 512^2, 2 of 2048^2)."""


def _plain(value):
    return str(value) if isinstance(value, Path) else value


class Proposer:
    """The current proposals of a session, on its store, model set, maps cache (which slices' maps are current)
    and suggestions (the guess stored with each proposal).

    It subscribes to the maps' refresh: the last proposal request is repeated on the fresh maps.
    """

    def __init__(self, store: Store, model_set: ModelSet, maps_cache: MapsCache, suggestions: Suggestions) -> None:
        self.store, self.model_set, self.maps_cache, self.suggestions = store, model_set, maps_cache, suggestions
        maps_cache.after_refresh.append(self._after_refresh)

    def _after_refresh(self, report: RefreshReport, samples: int, should_stop: Callable[[], bool] | None
                       ) -> Generator[Progress, None, None]:
        """Repeat the last proposal request on the fresh maps (the old proposals stay when it cannot run)."""
        request = dict(self.store.state.proposal_request or {})
        if not request or (should_stop is not None and should_stop()):
            return
        try:
            self.propose(**request)
        except PaserInputError as exc:  # e.g. fewer regions left than k: keep the old proposals
            report.proposals = f"proposals not refreshed: {exc}"
        else:
            report.proposals = f"{len(self.store.state.proposals)} new proposals"
        yield Progress("propose", 1, 1, report.proposals)

    @property
    def pending_proposals(self) -> list[Proposal]:
        """The proposals neither accepted nor skipped this round."""
        skipped = set(self.store.state.skipped)
        return [p for p in self.store.state.proposals
                if not self.store.is_accepted(p.region_id) and p.region_id not in skipped]

    def next_proposal(self, after_rank: int = 0) -> Proposal | None:
        """The best pending proposal ranked after `after_rank` (wrapping around), for a "next" button."""
        pending = self.pending_proposals
        later = [p for p in pending if p.rank > after_rank]
        return (later or pending or [None])[0]

    def propose(self, k: int = 8, sampler: str = "entropy", seed: int = 0, max_per_slice: int | None = None,
                near: int = 0, suggest: bool = True, **options) -> list[Proposal]:
        """Rank k unlabeled regions with `sampler` (one of SAMPLERS) and make them the current proposals.

        Samplers other than "random" choose among slices whose maps are current (`compute_maps`;
        `spread_maps` maps a spread sample of the volume's slices so proposals can span it).
        max_per_slice: at most this many proposals from one slice (the sampler's next best fill up).
        near: only regions at the place of an accepted region on the slices z +- 1..near (the
        neighbouring slices as the candidate set). suggest: store the model's guess of every
        proposed region (`suggestion`), so showing it costs a file read.
        options: TAUDIS alpha/beta/sigma/measure; DQN dqn_checkpoint (and pool_size).
        """
        try:
            chooser = make_sampler(sampler, **options)
            candidates, needs = self._map_needs(chooser)
            if near:
                candidates = candidates[np.isin(candidates, self.neighbour_ids(int(near)))]
            if candidates.size == 0:
                raise PaserInputError("no unlabeled regions left to propose" + (
                    " in the slices with current maps: compute maps on more slices" if needs.keys() - {"pool"} else "")
                    + (f" on the slices within {near} of an accepted region" if near else ""))
            ask = int(k) if not max_per_slice else min(candidates.size, int(k) * 4)
            ask = min(ask, candidates.size) if near else ask  # a few neighbours: as many as there are
            sel = chooser.select(candidates, ask, np.random.default_rng(seed), **needs)
        except PaserInputError:
            raise
        except InputError as exc:
            raise PaserInputError(str(exc)) from None
        ids, scores = sel.ids.tolist(), sel.scores.tolist()
        if max_per_slice:
            ids, scores = _capped(ids, scores, self.store.pool.z_of(np.array(ids, np.int64)).tolist(), int(k),
                                  int(max_per_slice))
        proposals = [self._proposal(rank, rid, score, sampler)
                     for rank, (rid, score) in enumerate(zip(ids, scores), 1)]
        request = {"k": int(k), "sampler": sampler, "seed": int(seed), **{n: _plain(v) for n, v in options.items()}}
        if max_per_slice:
            request["max_per_slice"] = int(max_per_slice)
        if near:
            request["near"] = int(near)
        release_memory()  # what ranking freed (the sampler's features), before the suggestions' model work
        made = self.suggestions.make([p.region_id for p in proposals]) if suggest and self.model_set.has_models else {}

        def mutate(s: State) -> None:
            s.proposals, s.proposal_request, s.skipped = proposals, request, []
            s.suggestions = made

        self.suggestions.commit(mutate, made)
        return proposals

    def _proposal(self, rank: int, region_id: int, score: float, sampler: str) -> Proposal:
        r = self.store.pool.region(region_id)
        return Proposal(rank, r.id, r.z, r.y0, r.x0, r.h, r.w, float(score), sampler)

    def _map_needs(self, sampler) -> tuple[np.ndarray, dict]:
        """Candidates and inputs of `sampler` from this session (see `session.sampling`)."""
        return proposal_inputs(sampler, self.store.pool, self.maps_cache.fresh_slices(), self.model_set.require_f0,
                               lambda: {name: self.maps_cache.map3d(name) for name in MAP_NAMES}, self.store.image_slice,
                               self.store.labels, self.store.n_classes,
                               lambda: [self.model_set.models[r] for r in MODEL_ROLES if r in self.model_set.models])

    def spread_count(self, most: int = 8, pixels: int = SPREAD_PIXELS) -> int:
        """How many slices a spread over the volume maps: `most`, fewer when the slices are large, so the
        maps before a proposal cost about `pixels` of model work at any slice size (at least 2, so proposals
        still leave the slice on screen)."""
        per = int(np.prod(self.store.shape[-2:]))
        return int(min(most, self.store.n_slices, max(2, pixels // per)))

    def spread_maps(self, n: int = 8, samples: int = 5, should_stop: Callable[[], bool] | None = None
                    ) -> Generator[Progress, None, int]:
        """Compute the maps of the `spread_slices(n)` whose maps are not current, so proposals can come from
        the whole volume and not only from the slices a person happened to map; returns slices mapped."""
        fresh = set(self.maps_cache.fresh_slices())
        missing = [z for z in self.store.spread_slices(n) if z not in fresh]
        if not missing:
            return 0
        return (yield from self.maps_cache.compute_maps(missing, samples, should_stop=should_stop))

    def neighbour_ids(self, depth: int = 2, around: Iterable[int] | None = None) -> np.ndarray:
        """Unlabeled regions at the place of the regions `around` (default: every accepted one) on the
        slices z +- 1..depth, nearest slices first."""
        around = [a.region_id for a in self.store.state.accepted] if around is None else [int(r) for r in around]
        per = self.store.pool.cells_per_slice
        found: dict[int, int] = {}
        for rid in around:
            z, cell = divmod(int(rid), per)
            for d in range(1, int(depth) + 1):
                for zz in (z - d, z + d):
                    if 0 <= zz < self.store.n_slices:
                        nid = zz * per + cell
                        found[nid] = min(found.get(nid, d), d)
        ids = np.array(sorted(found, key=lambda r: (found[r], r)), dtype=np.int64)
        return ids[~self.store.pool.is_labeled(ids)] if ids.size else ids

    def propose_neighbours(self, region_id: int, depth: int = 2) -> list[Proposal]:
        """Propose the region's place on the slices z +- 1..depth (nearest first), each with the model's
        suggestion, after the pending proposals; returns the new proposals."""
        region = self.store.region(region_id)
        if len(self.store.shape) != 3:
            raise PaserInputError("the image is a single slice: there are no neighbouring slices to propose")
        ids = self.neighbour_ids(depth, [region.id])
        pending = {p.region_id for p in self.pending_proposals}
        ids = [int(r) for r in ids if int(r) not in pending]
        if not ids:
            raise PaserInputError(f"region {region.id}'s place is labeled or proposed on every slice within "
                                  f"{depth} of slice {region.z}: raise the depth")
        top = max((p.rank for p in self.store.state.proposals), default=0)
        new = [self._proposal(top + i, rid, abs(self.store.pool.region(rid).z - region.z), "neighbours")
               for i, rid in enumerate(ids, 1)]
        made, added = self.suggestions.make(ids), set(ids)

        def mutate(s: State) -> None:
            s.proposals = [p for p in s.proposals if p.region_id not in added] + new
            s.skipped = [r for r in s.skipped if r not in added]
            s.suggestions.update(made)

        self.suggestions.commit(mutate, made)
        return new


def _capped(ids: list[int], scores: list[float], zs: list[int], k: int, cap: int) -> tuple[list[int], list[float]]:
    """The first k of a ranked list taking at most `cap` per slice; the rest fill up when too few slices."""
    taken, per, rest = [], {}, []
    for rid, score, z in zip(ids, scores, zs):
        if len(taken) < k and per.get(z, 0) < cap:
            taken.append((rid, score))
            per[z] = per.get(z, 0) + 1
        else:
            rest.append((rid, score))
    taken += rest[: max(0, k - len(taken))]
    return [t[0] for t in taken], [t[1] for t in taken]
