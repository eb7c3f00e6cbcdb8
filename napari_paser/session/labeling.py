"""The session's labeled set (`Labeling`): proposals from the sampler registry, the model's suggestion for
each proposed region, accepting painted or corrected regions (with their correction effort), taking
them back, skipping proposals, edits inside accepted regions, proposals on neighbouring slices."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from learners.grid import Patching
from learners.routing.router import F0State, execute_routing, policy_probabilities
from learners.uncertainty import receptive_halo, uncertainty_maps
from napari_paser.data.dataset import normalise
from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.errors import InputError, PaserInputError
from napari_paser.memory import release_memory
from napari_paser.session.effort import Effort, correction_effort
from napari_paser.session.maps import MapsCache
from napari_paser.session.models import MODEL_ROLES, ModelSet
from napari_paser.session.progress import Progress
from napari_paser.session.refresh import RefreshReport
from napari_paser.session.router.router import Router
from napari_paser.session.routing import ROUTE_BATCH, policy_models, route_slice
from napari_paser.session.sampling import proposal_inputs
from napari_paser.session.store import (
    MAP_NAMES,
    SUGGESTIONS,
    AcceptedRegion,
    Proposal,
    State,
    Store,
    crop_path,
    load_crop,
    now_iso,
    save_crop,
)
from sampling.regions import Region, RegionPool
from sampling.registry import make_sampler


SPREAD_PIXELS = 8 * 512 * 512
"""Pixels of model work a spread over the volume maps before proposing (8 slices of 512^2, 2 of 2048^2)."""

class PartialRegionError(PaserInputError):
    """Regions with unpainted pixels: ask the person, then accept with confirm_partial=True."""

    def __init__(self, message: str, region_ids: list[int], unpainted: list[int]) -> None:
        super().__init__(message)
        self.region_ids, self.unpainted = region_ids, unpainted


def _crop_key(crop: np.ndarray) -> bytes:
    crop = np.ascontiguousarray(crop, dtype=np.uint8)
    return hashlib.blake2b(crop.tobytes() + str(crop.shape).encode(), digest_size=16).digest()


def _plain(value):
    return str(value) if isinstance(value, Path) else value



class Labeling:
    """The proposals and the labeled set of a session: proposing regions, the model's suggestion for each,
    accepting, taking back, skipping, edits inside accepted regions, effort, proposals across the volume.

    It subscribes to the maps' refresh: the last proposal request is repeated on the fresh maps.
    """

    def __init__(self, store: Store, model_set: ModelSet, maps_cache: MapsCache, router: Router) -> None:
        self.store, self.model_set, self.maps_cache, self.router = store, model_set, maps_cache, router
        self._crop_keys: dict[tuple[int, int], bytes] = {}  # (region, seq) -> digest of its saved crop
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

    # ------------------------------------------------------------------ proposals

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
        made = self._make_suggestions([p.region_id for p in proposals]) if suggest and self.model_set.has_models else {}

        def mutate(s: State) -> None:
            s.proposals, s.proposal_request, s.skipped = proposals, request, []
            s.suggestions = made

        self._commit_suggestions(mutate, made)
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

    # ------------------------------------------------------------------ accepting labels

    def accept(self, region_id: int, labels_patch: np.ndarray | None = None,
               confirm_partial: bool = False, from_suggestion: bool = False,
               seconds: float | None = None) -> AcceptedRegion:
        """Accept the labels of one region and autosave.

        labels_patch: the region's labels in the layer convention (0 = not painted, class k =
        k + 1), shape (h, w) of the region; it is written into the canvas. None reads the
        canvas (napari painted into `session.labels`). Unpainted pixels raise
        `PartialRegionError` unless confirm_partial (they are then stored as unlabeled and
        ignored by training). Accepting an accepted region again replaces its labels.

        from_suggestion: the labels are the model's `suggestion` as the person corrected it
        (labels_patch; None accepts the suggestion unchanged); the record keeps the effort
        (`changed_px`, `strokes`) and `seconds` from showing to accepting when given.
        """
        region = self.store.region(region_id)
        effort = None
        if from_suggestion:
            shown = self.suggestion(region.id)
            labels_patch = shown if labels_patch is None else labels_patch
        patch = self._patch(region, labels_patch)
        if from_suggestion:
            effort = correction_effort(shown, patch)
        self._check_painted([(region, patch)], confirm_partial)
        with self.store.lock:
            if labels_patch is not None:
                self.store.labels[self.store.index(*region.slices)] = patch
            done = {region.id: (effort, None if seconds is None else round(float(seconds), 2))} if effort else {}
            return self._accept_all([(region, patch)], effort=done)[0]

    def painted_regions(self, z: int | None = None) -> np.ndarray:
        """Ids of regions not accepted yet that hold painted pixels in the canvas (slice z, or all)."""
        one = RegionPool(self.store.pool.shape[1:], self.store.pool.size)
        found = []
        for zz in self.store.slices(z):
            painted = np.asarray(self.store.labels[self.store.index(zz)]) > 0
            if painted.any():
                counts = one.reduce(painted.astype(np.uint8), "sum")
                found.append(self.store.pool.slice_ids(zz)[counts > 0])
        ids = np.concatenate(found) if found else np.zeros(0, np.int64)
        return ids[~self.store.pool.is_labeled(ids)] if ids.size else ids

    def accept_painted(self, z: int | None = None, confirm_partial: bool = False) -> list[AcceptedRegion]:
        """Accept every region painted outside the accepted set (slice z, or all), in one commit."""
        ids = self.painted_regions(z)
        if ids.size == 0:
            where = "anywhere" if z is None else f"in slice {z}"
            raise PaserInputError(f"no painted labels outside accepted regions {where}: paint a region first")
        items = [(r, self._patch(r, None)) for r in self.store.pool.regions(ids)]
        self._check_painted(items, confirm_partial)
        return self._accept_all(items)

    def _patch(self, region: Region, labels_patch) -> np.ndarray:
        if labels_patch is None:
            patch = np.asarray(self.store.labels[self.store.index(*region.slices)])
        else:
            patch = np.asarray(labels_patch)
            if patch.shape != (region.h, region.w):
                raise PaserInputError(
                    f"labels for region {region.id} have shape {patch.shape} but the region is {region.h}x{region.w} "
                    f"(slice {region.z}, y {region.y0}, x {region.x0}): crop the labels to the region, or pass "
                    "nothing to read the session's labels layer"
                )
        if patch.size and np.issubdtype(patch.dtype, np.signedinteger) and patch.min() < 0:
            raise PaserInputError(f"labels for region {region.id} hold negative values; paint with 1..{self.store.n_classes}")
        layer_to_classes(patch, n_classes=self.store.n_classes)  # integer dtype and values 0..C
        return patch.astype(np.uint8)

    def _check_painted(self, items: list[tuple[Region, np.ndarray]], confirm: bool) -> None:
        partial, counts = [], []
        for region, patch in items:
            unpainted = int((patch == 0).sum())
            if unpainted == patch.size:
                raise PaserInputError(f"region {region.id} has no painted pixels: paint it (labels 1..{self.store.n_classes}) first")
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
                    drop: Sequence[int] = (),
                    effort: dict[int, tuple[Effort, float | None]] | None = None) -> list[AcceptedRegion]:
        """Save the crops, then commit the records in one state write (and forget the regions in `drop`).

        keep_origin: a region accepted before keeps its sampler, rank and effort (re-saving edits).
        effort: region id -> (correction effort, seconds) of regions accepted from their suggestion.
        """
        effort = effort or {}
        with self.store.lock:
            by_prop = {p.region_id: p for p in self.store.state.proposals}
            seq0, records, crops = int(self.store.state.settings.get("next_seq", 0)), [], {}
            old = {a.region_id: a for a in self.store.state.accepted}
            former = self.store.state.settings.get("former_splits", {})
            n_before = len(self.store.state.accepted)
            for i, (region, patch) in enumerate(items):
                prop = by_prop.get(region.id)
                split = (old[region.id].split if region.id in old else former.get(str(region.id))
                         or self._split_for(n_before + len(records)))
                sampler, rank = (prop.sampler, prop.rank) if prop else ("manual", None)
                changed = strokes = seconds = None
                if region.id in effort:
                    e, seconds = effort[region.id]
                    changed, strokes = e.changed_px, e.strokes
                if keep_origin and region.id in old:
                    was = old[region.id]
                    sampler, rank, changed, strokes, seconds = was.sampler, was.rank, was.changed_px, was.strokes, was.seconds
                records.append(AcceptedRegion(
                    region.id, region.z, region.y0, region.x0, region.h, region.w,
                    sampler, rank, now_iso(), self._fractions(patch), split, seq0 + i, changed, strokes, seconds,
                ))
                crops[region.id] = save_crop(self.store.folder, region.id, seq0 + i, patch)
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

            self.store.commit(mutate)
            for rid, rec in old.items():
                if rid in crops or rec in gone:
                    crop_path(self.store.folder, rid, rec.seq).unlink(missing_ok=True)
            return records

    # ------------------------------------------------------------------ taking back, skipping, edits

    def unaccept(self, region_id: int) -> None:
        """Take an accepted region back: its labels stay painted on the canvas, its saved crop is
        removed, it leaves the labeled set and the export, and it can be accepted again (same split).
        Its painted pixels are scribbles then: they train, as any painted pixel does, until erased."""
        rec = self.store.record(region_id)
        self._accept_all([], drop=[rec.region_id])

    def skip(self, region_id: int) -> None:
        """Drop a pending proposal for this round (saved); the next `propose` starts a new round."""
        rid = int(region_id)
        if rid not in {p.region_id for p in self.pending_proposals}:
            why = "it is accepted (unaccept it instead)" if self.store.is_accepted(rid) else (
                "it was skipped already" if rid in self.store.state.skipped else "it is not among the current proposals")
            raise PaserInputError(f"cannot skip region {rid}: {why}")
        self.store.commit(lambda s: s.skipped.append(rid))

    def edited_regions(self) -> list[int]:
        """Accepted regions whose canvas pixels differ from their saved (accepted) crop: painted
        over since they were accepted. `accept_edits` saves them; until then training uses the
        accepted crop while the canvas (and a full-volume export) shows the edits."""
        edited = []
        by_z: dict[int, list[AcceptedRegion]] = {}
        for rec in self.store.state.accepted:
            by_z.setdefault(rec.z, []).append(rec)
        for z, recs in sorted(by_z.items()):
            y0, x0 = min(r.y0 for r in recs), min(r.x0 for r in recs)
            y1, x1 = max(r.y0 + r.h for r in recs), max(r.x0 + r.w for r in recs)
            window = np.asarray(self.store.labels[self.store.index(z, slice(y0, y1), slice(x0, x1))])
            for rec in recs:
                canvas = window[rec.y0 - y0:rec.y0 - y0 + rec.h, rec.x0 - x0:rec.x0 - x0 + rec.w]
                if _crop_key(canvas) != self._saved_key(rec):
                    edited.append(rec.region_id)
        return sorted(edited)

    def _saved_key(self, rec: AcceptedRegion) -> bytes:
        """A digest of a region's saved crop, remembered per (region, seq): crops never change in place."""
        key = (rec.region_id, rec.seq)
        if key not in self._crop_keys:
            self._crop_keys[key] = _crop_key(load_crop(self.store.folder, rec.region_id, rec.seq))
        return self._crop_keys[key]

    def accept_edits(self, region_ids: Iterable[int] | None = None) -> list[AcceptedRegion]:
        """Save the canvas of edited accepted regions (all `edited_regions()` by default) as their
        accepted labels, in one commit, so training and export agree with what is painted.

        A region keeps its sampler, rank and split. A region whose pixels were all erased is
        taken back (`unaccept`): there is nothing left to accept. Returns the re-saved records.
        """
        with self.store.lock:
            ids = self.edited_regions() if region_ids is None else [self.store.record(r).region_id for r in region_ids]
            items, erased = [], []
            for region in self.store.pool.regions(np.array(ids, dtype=np.int64)) if ids else []:
                patch = self._patch(region, None)
                if patch.any():
                    items.append((region, patch))
                else:
                    erased.append(region.id)
            if not items and not erased:
                return []
            return self._accept_all(items, keep_origin=True, drop=erased)

    def _split_for(self, index: int) -> str:
        every = int(self.store.state.settings.get("val_every", 0))
        return "val" if every and index % every == every - 1 else "train"

    def held_out_basis(self) -> tuple[int, int]:
        """How many accepted regions are held out now and from how many distinct slices: what the held-out
        figure rests on (regions of one slice look alike, so their score runs above the volume's)."""
        val = [a for a in self.store.state.accepted if a.split == "val"]
        return len(val), len({a.z for a in val})

    def held_out_text(self, miou: float | None = None) -> str:
        """The held-out mIoU (the last curve point's when not given) with the regions and slices it rests on,
        and what to label when they are too few to trust (`held_out_note`)."""
        if miou is None:
            miou = next((p.val_miou for p in reversed(self.store.state.curve) if p.val_miou is not None), None)
        return held_out_note(miou, *self.held_out_basis(), self.store.n_slices)

    def _fractions(self, patch: np.ndarray) -> dict[str, float]:
        counts = np.bincount(patch.ravel(), minlength=self.store.n_classes + 1) / patch.size
        return {"unlabeled": float(counts[0]), **{n: float(counts[k + 1]) for k, n in enumerate(self.store.classes.names)}}

    # ------------------------------------------------------------------ suggestions (the model's guess)

    def suggestion(self, region_id: int) -> np.ndarray:
        """The model's guess of a region, (h, w) in the layer convention (class k = k + 1): the one stored
        when it was proposed (what the person was shown), else the current guess (`guessed_patch`, stored).
        Never a label: it enters the labeled set only through `accept(..., from_suggestion=True)`."""
        region = self.store.region(region_id)
        info = self.store.state.suggestions.get(str(region.id))
        if info is not None and crop_path(self.store.folder, region.id, info["seq"], SUGGESTIONS).is_file():
            return load_crop(self.store.folder, region.id, info["seq"], SUGGESTIONS)
        if self.store.read_only or self.store.closed:
            return self.guessed_patch(region)[0]
        made = self._make_suggestions([region.id])
        self._commit_suggestions(lambda s: s.suggestions.update(made), made)
        return load_crop(self.store.folder, region.id, made[str(region.id)]["seq"], SUGGESTIONS)

    def suggestion_source(self, region_id: int) -> str:
        """Where the stored suggestion of a region came from, in words: "f0" (its MC mean) or "routed (f2 on
        3 of 4 patches of this region)"; "" when none is stored."""
        info = self.store.state.suggestions.get(str(int(region_id)))
        return "" if info is None else _source_text(info)

    def suggestions_current(self) -> bool:
        """Whether the stored suggestions come from the current models (a retrain, new models or a new routing
        bank make them stale)."""
        routed = self.routes_suggestions
        return all(self._suggestion_fresh(i, routed) for i in self.store.state.suggestions.values())

    @property
    def routes_suggestions(self) -> bool:
        """Whether suggestions are routed predictions: a routing policy and the models it routes between."""
        if not self.model_set.has_policy:
            return False
        try:
            policy_models(self.model_set.pick_policy(None)[1], self.model_set.models, "the routing policy")
        except PaserInputError:
            return False
        return True

    def _suggestion_fresh(self, info: dict, routed: bool) -> bool:
        """Whether a stored suggestion comes from the current models (`routed`: whether the session routes now)."""
        if int(info.get("model_version", -1)) < self.maps_cache.maps_version() or (info.get("source", "f0") == "routed") != routed:
            return False
        return not routed or int(info.get("route_version", -1)) >= self.store.state.model_version

    def guessed_patch(self, region: Region, samples: int = 5, routes: dict | None = None) -> tuple[np.ndarray, dict]:
        """The current best guess of a region in the layer convention and where it came from: the routed
        prediction (`routed_patch`, `routes` its memo) when the session routes, else f0's MC mean
        (`predicted_patch`)."""
        if self.routes_suggestions:
            return self.routed_patch(region, samples, routes=routes)
        return self.predicted_patch(region, samples), {"source": "f0"}

    def predicted_patch(self, region: Region, samples: int = 5) -> np.ndarray:
        """f0's MC-mean prediction of a region in the layer convention: read from the maps where its slice's
        maps are current, else computed on the region with f0's receptive field as context."""
        _, ys, xs = region.slices
        return np.asarray(self._f0_window(region.z, ys, xs, samples)[0]).astype(np.uint8) + 1

    def _f0_window(self, z: int, ys: slice, xs: slice, samples: int) -> tuple[np.ndarray, np.ndarray]:
        """f0's MC-mean prediction and entropy of the window (ys, xs) of slice z: from the maps where they are
        current, else computed on the window with f0's receptive field as context."""
        if z in set(self.maps_cache.fresh_slices()):
            ix = self.store.index(z, ys, xs)
            return np.asarray(self.store.maps["prediction"][ix]), np.asarray(self.store.maps["entropy"][ix], np.float32)
        model = self.model_set.require_f0()
        halo = receptive_halo(model)
        h, w = self.store.shape[-2:]
        y0, x0 = max(0, ys.start - halo), max(0, xs.start - halo)
        y1, x1 = min(h, ys.stop + halo), min(w, xs.stop + halo)
        raw = np.asarray(self.store.image[self.store.index(z, slice(y0, y1), slice(x0, x1))])
        maps = uncertainty_maps(model, normalise(raw, self.store.state.image["lo"], self.store.state.image["hi"]),
                                samples=samples, seed=z)
        inner = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        return maps.prediction[inner], maps.entropy[inner].astype(np.float32)

    def routed_patch(self, region: Region, samples: int = 5, lam: float | None = None,
                     routes: dict | None = None) -> tuple[np.ndarray, dict]:
        """The routed prediction of a region (layer convention) and where it came from.

        Only the region and the context routing needs are computed: the routing patches that meet the
        region plus a ring of patches around them (the policy's view and the larger models' halo). f0's
        state of that window comes from the slice's maps where they are current; the policy routes the
        window's patches (it sees the window, not the whole slice), and only the patches meeting the region
        run their routed model. A policy on a
        rows x cols grid (its patches follow the slice's size) reads the whole slice: its routing map of the
        slice is kept in `routes` (a dict the caller keeps for a batch of regions, so several regions of one
        slice cost one policy pass), and only the patches meeting the region run their routed model.
        """
        lam, policy = self.model_set.pick_policy(lam)
        models = policy_models(policy, self.model_set.models, "the routing policy")
        patching, (h, w) = policy.config.patching, self.store.shape[-2:]
        ry, rx = slice(region.y0, region.y0 + region.h), slice(region.x0, region.x0 + region.w)
        if patching.size is None:
            key = (region.z, samples, lam)
            mapped = (routes or {}).get(key) or self.router.route(region.z, samples, lam, execute=False)
            if routes is not None:
                routes[key] = mapped
            meets = np.array([_meets(b.slices, ry, rx) for b in mapped.grid().boxes()]).reshape(mapped.routing.shape)
            chosen = mapped.routing[meets].tolist()
            image = self.store.image_slice(region.z)
            routed = route_slice(models, policy, image, region.z, samples,
                                 self.maps_cache.f0_state(region.z, samples, image), True, lam,
                                 actions=np.where(meets, mapped.routing, 0))  # the rest: f0's, known
            patch = routed.segmentation[ry, rx]
        else:
            ph, pw = patching.size
            ring_y, ring_x = max(1, -(-patching.halo // ph)), max(1, -(-patching.halo // pw))
            r0, r1 = max(0, region.y0 // ph - ring_y), min(-(-h // ph), (region.y0 + region.h - 1) // ph + 1 + ring_y)
            c0, c1 = max(0, region.x0 // pw - ring_x), min(-(-w // pw), (region.x0 + region.w - 1) // pw + 1 + ring_x)
            wy, wx = slice(r0 * ph, min(h, r1 * ph)), slice(c0 * pw, min(w, c1 * pw))
            prediction, entropy = self._f0_window(region.z, wy, wx, samples)
            state = F0State(torch.from_numpy(np.asarray(prediction, np.uint8))[None],
                            torch.from_numpy(np.asarray(entropy, np.float32))[None], self.store.n_classes, samples)
            actions = policy_probabilities(policy, state).argmax(-1)[0]
            cut = Patching(size=(ph, pw), halo=patching.halo)
            window = cut.grid(wy.stop - wy.start, wx.stop - wx.start)
            meets = torch.tensor([_meets(b.slices, slice(ry.start - wy.start, ry.stop - wy.start),
                                         slice(rx.start - wx.start, rx.stop - wx.start)) for b in window.boxes()])
            actions = torch.where(meets, actions, torch.zeros_like(actions))  # the ring only gives context
            chosen = actions[meets].tolist()
            image = normalise(np.asarray(self.store.image[self.store.index(region.z, wy, wx)]), self.store.state.image["lo"],
                              self.store.state.image["hi"])
            res = execute_routing(models, image[None], actions[None], cut, state, samples, region.z, ROUTE_BATCH,
                                  policy)
            patch = res.segmentation[0][ry.start - wy.start:ry.stop - wy.start, rx.start - wx.start:rx.stop - wx.start]
        counts = np.bincount(np.array(chosen, np.int64), minlength=len(models))
        info = {"source": "routed", "patches": {f"f{k}": int(n) for k, n in enumerate(counts) if n},
                "lam": None if lam is None else float(lam)}
        return np.asarray(patch).astype(np.uint8) + 1, info

    def _make_suggestions(self, region_ids: Sequence[int]) -> dict[str, dict]:
        """Save the model's guess of each region (kept when the stored one is from the current models); returns
        the `State.suggestions` entries to commit."""
        version, out, routed = self.maps_cache.maps_version(), {}, self.routes_suggestions
        seq = int(self.store.state.settings.get("next_suggestion_seq", 0))
        routes: dict = {}  # a whole-slice policy's routing map per slice, for the regions of that slice
        for rid in region_ids:
            info = self.store.state.suggestions.get(str(int(rid)))
            if (info is not None and self._suggestion_fresh(info, routed)
                    and crop_path(self.store.folder, int(rid), info["seq"], SUGGESTIONS).is_file()):
                out[str(int(rid))] = dict(info)
                continue
            patch, where = self.guessed_patch(self.store.pool.region(int(rid)), routes=routes)
            release_memory()  # a routing pass's buffers, before the next region's
            save_crop(self.store.folder, int(rid), seq, patch, SUGGESTIONS)
            out[str(int(rid))] = {"seq": seq, "model_version": version, **where}
            if where["source"] == "routed":
                out[str(int(rid))]["route_version"] = int(self.store.state.model_version)
            seq += 1
        return out

    def _commit_suggestions(self, mutate: Callable[[State], None], made: dict[str, dict]) -> None:
        """Commit `mutate` with the suggestion counter past the seqs of `made` (the entries `_make_suggestions`
        returned); then remove suggestion files nothing names any more."""
        seq = max((int(i["seq"]) + 1 for i in made.values()), default=0)

        def both(s: State) -> None:
            mutate(s)
            s.settings["next_suggestion_seq"] = max(int(s.settings.get("next_suggestion_seq", 0)), seq)

        self.store.commit(both)
        kept = {(int(r), int(i["seq"])) for r, i in self.store.state.suggestions.items()}
        folder = self.store.folder / SUGGESTIONS
        for path in folder.glob("*.npy") if folder.is_dir() else ():
            parts = path.stem.split("-")
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and (int(parts[0]), int(parts[1])) not in kept:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ effort

    def effort_of(self, region_id: int) -> Effort | None:
        """The correction effort of an accepted region (None when it was painted, not corrected)."""
        rec = self.store.record(region_id)
        return None if rec.changed_px is None else Effort(rec.changed_px, rec.strokes or 0, rec.h * rec.w)

    def effort_summary(self) -> dict:
        """Totals over the accepted set: regions corrected from a suggestion, their changed pixels (and share of
        their pixels), strokes and seconds; regions painted without one, and their painted pixels."""
        corrected = [a for a in self.store.state.accepted if a.changed_px is not None]
        painted = [a for a in self.store.state.accepted if a.changed_px is None]
        size = sum(a.h * a.w for a in corrected)
        timed = [a.seconds for a in corrected if a.seconds is not None]
        changed = sum(a.changed_px for a in corrected)
        return {"corrected_regions": len(corrected), "changed_px": changed,
                "changed_share": round(changed / size, 4) if size else None,
                "strokes": sum(a.strokes or 0 for a in corrected),
                "seconds": round(sum(timed), 1) if timed else None,
                "painted_regions": len(painted), "painted_px": sum(_labeled_px(a) for a in painted)}

    def curve_effort(self) -> list[int]:
        """The x-axis of the learning curve in pixels a person touched: for each curve point, the changed
        pixels of regions corrected from a suggestion plus the labeled pixels of regions painted without one,
        over the regions accepted by that point's time."""
        cost = sorted((a.accepted_at, a.changed_px if a.changed_px is not None else _labeled_px(a))
                      for a in self.store.state.accepted)
        return [sum(c for t, c in cost if t <= p.time) for p in self.store.state.curve]

    # ------------------------------------------------------------------ across the volume and along z

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
        made, added = self._make_suggestions(ids), set(ids)

        def mutate(s: State) -> None:
            s.proposals = [p for p in s.proposals if p.region_id not in added] + new
            s.skipped = [r for r in s.skipped if r not in added]
            s.suggestions.update(made)

        self._commit_suggestions(mutate, made)
        return new

    def sync_labels(self, layer_data) -> None:
        """Copy a Labels layer's data (layer convention, the image's shape) into the canvas."""
        if layer_data is self.store.labels:
            return
        shape = tuple(int(s) for s in np.shape(layer_data))
        if shape != self.store.shape:
            raise PaserInputError(
                f"the labels layer has shape {shape} but the session image has shape {self.store.shape}: use the "
                "session's labels layer, or labels made for this image"
            )
        for z in range(self.store.n_slices):
            ix = self.store.index(z)
            data = np.asarray(layer_data[ix])
            layer_to_classes(data, n_classes=self.store.n_classes)
            self.store.labels[ix] = data.astype(np.uint8)


TRUSTED_HELD_OUT = (5, 3)
"""Held-out regions and distinct slices (of a volume with that many) below which the held-out figure is flagged:
regions of one or two slices score points above the rest of the volume."""


def held_out_advice(regions: int, slices: int, volume_slices: int) -> str:
    """What to label when the held-out regions or their slices are too few to trust their figure
    (`TRUSTED_HELD_OUT`), "" when they are enough."""
    min_regions, min_slices = TRUSTED_HELD_OUT
    if volume_slices > 1 and slices < min(min_slices, volume_slices):
        return "label more slices for a figure you can trust"
    if regions < min_regions:
        return "accept more regions for a figure you can trust"
    return ""


def held_out_note(miou: float | None, regions: int, slices: int, volume_slices: int) -> str:
    """ "held-out mIoU 0.950 on 3 regions from 1 slice: label more slices for a figure you can trust" (the
    advice only when `held_out_advice` gives one)."""
    if not regions:
        return "no held-out regions yet (every 5th accepted region is held out)"
    where = f" from {_plural(slices, 'slice')}" if volume_slices > 1 else ""
    head = (f"held-out mIoU {miou:.3f} on {_plural(regions, 'region')}{where}" if miou is not None
            else f"{_plural(regions, 'held-out region')}{where}, not scored yet (retrain)")
    advice = held_out_advice(regions, slices, volume_slices)
    return f"{head}: {advice}" if advice else head


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _meets(cell: tuple[slice, slice], ys: slice, xs: slice) -> bool:
    """Whether a grid cell (its slices) overlaps the window (ys, xs)."""
    return cell[0].start < ys.stop and ys.start < cell[0].stop and cell[1].start < xs.stop and xs.start < cell[1].stop


def _source_text(info: dict) -> str:
    """A stored suggestion's source in words (see `suggestion_source`)."""
    if info.get("source", "f0") != "routed":
        return "f0"
    patches = info.get("patches") or {}
    total = sum(patches.values())
    larger = {m: n for m, n in patches.items() if m != "f0"}
    if not larger:
        return f"routed (f0 on all {total} patches of this region)" if total else "routed"
    parts = ", ".join(f"{m} on {n}" for m, n in sorted(larger.items()))
    return f"routed ({parts} of {total} patches of this region)"


def _labeled_px(rec: AcceptedRegion) -> int:
    return int(round(rec.h * rec.w * (1.0 - float(rec.fractions.get("unlabeled", 0.0)))))


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
