"""The session's labeling: proposals from the sampler registry, accepting painted regions,
taking them back, skipping proposals, edits inside accepted regions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.errors import InputError, PaserInputError
from napari_paser.session.maps import MAP_NAMES
from napari_paser.session.models import MODEL_ROLES
from napari_paser.session.sampling import proposal_inputs
from napari_paser.session.store import (
    AcceptedRegion,
    Proposal,
    State,
    crop_path,
    load_crop,
    now_iso,
    save_crop,
)
from sampling.regions import Region, RegionPool
from sampling.registry import make_sampler


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



class LabelingMixin:
    """Proposals and the labeled set of a `Session`."""

    # ------------------------------------------------------------------ proposals

    def propose(self, k: int = 8, sampler: str = "entropy", seed: int = 0, **options) -> list[Proposal]:
        """Rank k unlabeled regions with `sampler` (one of SAMPLERS) and make them the current proposals.

        Samplers other than "random" choose among slices whose maps are current (`compute_maps`).
        options: TAUDIS alpha/beta/sigma/measure; DQN dqn_checkpoint (and pool_size).
        """
        try:
            chooser = make_sampler(sampler, **options)
            candidates, needs = self._map_needs(chooser)
            if candidates.size == 0:
                raise PaserInputError("no unlabeled regions left to propose" + (
                    " in the slices with current maps: compute maps on more slices" if needs.keys() - {"pool"} else ""))
            sel = chooser.select(candidates, int(k), np.random.default_rng(seed), **needs)
        except PaserInputError:
            raise
        except InputError as exc:
            raise PaserInputError(str(exc)) from None
        proposals = [self._proposal(rank, rid, score, sampler)
                     for rank, (rid, score) in enumerate(zip(sel.ids.tolist(), sel.scores.tolist()), 1)]
        request = {"k": int(k), "sampler": sampler, "seed": int(seed), **{n: _plain(v) for n, v in options.items()}}

        def mutate(s: State) -> None:
            s.proposals, s.proposal_request, s.skipped = proposals, request, []

        self.commit(mutate)
        return proposals

    def _proposal(self, rank: int, region_id: int, score: float, sampler: str) -> Proposal:
        r = self.pool.region(region_id)
        return Proposal(rank, r.id, r.z, r.y0, r.x0, r.h, r.w, float(score), sampler)

    def _map_needs(self, sampler) -> tuple[np.ndarray, dict]:
        """Candidates and inputs of `sampler` from this session (see `session.sampling`)."""
        return proposal_inputs(sampler, self.pool, self.fresh_slices(), self.require_f0,
                               lambda: {name: self._map3d(name) for name in MAP_NAMES}, self.image_slice,
                               self.labels, self.n_classes,
                               lambda: [self.models[r] for r in MODEL_ROLES if r in self.models])

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
                self.labels[self.index(*region.slices)] = patch
            return self._accept_all([(region, patch)])[0]

    def painted_regions(self, z: int | None = None) -> np.ndarray:
        """Ids of regions not accepted yet that hold painted pixels in the canvas (slice z, or all)."""
        one = RegionPool(self.pool.shape[1:], self.pool.size)
        found = []
        for zz in self._slices_arg(z):
            painted = np.asarray(self.labels[self.index(zz)]) > 0
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
            patch = np.asarray(self.labels[self.index(*region.slices)])
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

    def _accept_all(self, items: list[tuple[Region, np.ndarray]], keep_origin: bool = False,
                    drop: Sequence[int] = ()) -> list[AcceptedRegion]:
        """Save the crops, then commit the records in one state write (and forget the regions in `drop`).

        keep_origin: a region accepted before keeps its sampler and rank (re-saving edits).
        """
        with self._lock:
            by_prop = {p.region_id: p for p in self.state.proposals}
            seq0, records, crops = int(self.state.settings.get("next_seq", 0)), [], {}
            old = {a.region_id: a for a in self.state.accepted}
            former = self.state.settings.get("former_splits", {})
            n_before = len(self.state.accepted)
            for i, (region, patch) in enumerate(items):
                prop = by_prop.get(region.id)
                split = (old[region.id].split if region.id in old else former.get(str(region.id))
                         or self._split_for(n_before + len(records)))
                sampler, rank = (prop.sampler, prop.rank) if prop else ("manual", None)
                if keep_origin and region.id in old:
                    sampler, rank = old[region.id].sampler, old[region.id].rank
                records.append(AcceptedRegion(
                    region.id, region.z, region.y0, region.x0, region.h, region.w,
                    sampler, rank, now_iso(), self._fractions(patch), split, seq0 + i,
                ))
                crops[region.id] = save_crop(self.folder, region.id, seq0 + i, patch)
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

            self.commit(mutate)
            for rid, rec in old.items():
                if rid in crops or rec in gone:
                    crop_path(self.folder, rid, rec.seq).unlink(missing_ok=True)
            return records

    # ------------------------------------------------------------------ taking back, skipping, edits

    def unaccept(self, region_id: int) -> None:
        """Take an accepted region back: its labels stay painted on the canvas, its saved crop is
        removed, it leaves the labeled set and the export, and it can be accepted again (same split).
        Its painted pixels are scribbles then: they train, as any painted pixel does, until erased."""
        rec = self._record(region_id)
        self._accept_all([], drop=[rec.region_id])

    def skip(self, region_id: int) -> None:
        """Drop a pending proposal for this round (saved); the next `propose` starts a new round."""
        rid = int(region_id)
        if rid not in {p.region_id for p in self.pending_proposals}:
            why = "it is accepted (unaccept it instead)" if self.is_accepted(rid) else (
                "it was skipped already" if rid in self.state.skipped else "it is not among the current proposals")
            raise PaserInputError(f"cannot skip region {rid}: {why}")
        self.commit(lambda s: s.skipped.append(rid))

    def edited_regions(self) -> list[int]:
        """Accepted regions whose canvas pixels differ from their saved (accepted) crop: painted
        over since they were accepted. `accept_edits` saves them; until then training uses the
        accepted crop while the canvas (and a full-volume export) shows the edits."""
        edited = []
        by_z: dict[int, list[AcceptedRegion]] = {}
        for rec in self.state.accepted:
            by_z.setdefault(rec.z, []).append(rec)
        for z, recs in sorted(by_z.items()):
            y0, x0 = min(r.y0 for r in recs), min(r.x0 for r in recs)
            y1, x1 = max(r.y0 + r.h for r in recs), max(r.x0 + r.w for r in recs)
            window = np.asarray(self.labels[self.index(z, slice(y0, y1), slice(x0, x1))])
            for rec in recs:
                canvas = window[rec.y0 - y0:rec.y0 - y0 + rec.h, rec.x0 - x0:rec.x0 - x0 + rec.w]
                if _crop_key(canvas) != self._saved_key(rec):
                    edited.append(rec.region_id)
        return sorted(edited)

    def _saved_key(self, rec: AcceptedRegion) -> bytes:
        """A digest of a region's saved crop, remembered per (region, seq): crops never change in place."""
        key = (rec.region_id, rec.seq)
        if key not in self._crop_keys:
            self._crop_keys[key] = _crop_key(load_crop(self.folder, rec.region_id, rec.seq))
        return self._crop_keys[key]

    def accept_edits(self, region_ids: Iterable[int] | None = None) -> list[AcceptedRegion]:
        """Save the canvas of edited accepted regions (all `edited_regions()` by default) as their
        accepted labels, in one commit, so training and export agree with what is painted.

        A region keeps its sampler, rank and split. A region whose pixels were all erased is
        taken back (`unaccept`): there is nothing left to accept. Returns the re-saved records.
        """
        with self._lock:
            ids = self.edited_regions() if region_ids is None else [self._record(r).region_id for r in region_ids]
            items, erased = [], []
            for region in self.pool.regions(np.array(ids, dtype=np.int64)) if ids else []:
                patch = self._patch(region, None)
                if patch.any():
                    items.append((region, patch))
                else:
                    erased.append(region.id)
            if not items and not erased:
                return []
            return self._accept_all(items, keep_origin=True, drop=erased)

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
            ix = self.index(z)
            data = np.asarray(layer_data[ix])
            layer_to_classes(data, n_classes=self.n_classes)
            self.labels[ix] = data.astype(np.uint8)
