"""The session's labeled set (`Labeling`): accepting painted or corrected regions (with their correction
effort), taking them back, skipping proposals, edits inside accepted regions, the held-out regions the learning
curve rests on, and copying a Labels layer into the canvas."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from napari_paser.data.labels_convention import layer_to_classes
from napari_paser.errors import PaserInputError
from napari_paser.session.effort import Effort, correction_effort
from napari_paser.session.proposals import Proposer
from napari_paser.session.store import AcceptedRegion, State, Store, crop_path, load_crop, now_iso, save_crop
from napari_paser.session.suggestions import Suggestions
from sampling.regions import Region, RegionPool


class PartialRegionError(PaserInputError):
    """Regions with unpainted pixels: ask the person, then accept with confirm_partial=True."""

    def __init__(self, message: str, region_ids: list[int], unpainted: list[int]) -> None:
        super().__init__(message)
        self.region_ids, self.unpainted = region_ids, unpainted


def _crop_key(crop: np.ndarray) -> bytes:
    crop = np.ascontiguousarray(crop, dtype=np.uint8)
    return hashlib.blake2b(crop.tobytes() + str(crop.shape).encode(), digest_size=16).digest()


class Labeling:
    """The labeled set of a session, on its store, suggestions (what a corrected region was shown) and proposer
    (the pending proposals a skip drops from): accepting, taking back, skipping, edits inside accepted regions,
    effort, the held-out regions."""

    def __init__(self, store: Store, suggestions: Suggestions, proposer: Proposer) -> None:
        self.store, self.suggestions, self.proposer = store, suggestions, proposer
        self._crop_keys: dict[tuple[int, int], bytes] = {}  # (region, seq) -> digest of its saved crop

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
            shown = self.suggestions.suggestion(region.id)
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
        if rid not in {p.region_id for p in self.proposer.pending_proposals}:
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

    # ------------------------------------------------------------------ the canvas

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


def _labeled_px(rec: AcceptedRegion) -> int:
    return int(round(rec.h * rec.w * (1.0 - float(rec.fractions.get("unlabeled", 0.0)))))
