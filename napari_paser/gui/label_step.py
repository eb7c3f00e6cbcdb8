"""Step 3: propose regions, visit them one by one, correct the model's suggestion (or paint), accept
(with partial-region confirmation), propose the same place on the neighbouring slices.

The suggestion of the proposal on screen is its own Labels layer (`SUGGESTION`, only the region,
translucent with class-coloured outlines) until accepted: it is never a label. Brush, fill and
erase correct it; Accept takes what is there, Shift-U accepts it unchanged, Revert puts the model's
guess back. Reading a stored suggestion is a file read of one region (the worker that proposed
stored them), so Next shows it at once on any slice size.
"""

from __future__ import annotations

import functools

import math
import time

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QLabel, QMessageBox, QPushButton, QSpinBox,
                            QVBoxLayout, QWidget)

from napari_paser.gui.common import JobBar, PathEdit, enable_while_idle, group, hrow
from napari_paser.gui.hub import LABELS, REGIONS, SHORTCUTS, guarded, hub_for, info
from napari_paser.errors import PaserInputError
from napari_paser.memory import release_memory
from napari_paser.session.core import SAMPLERS, PartialRegionError
from sampling.registry import reads_maps


def ask_partial(parent: QWidget, message: str) -> bool:
    """Ask whether to accept regions with unpainted pixels (they stay unlabeled)."""
    answer = QMessageBox.question(parent, "Accept a partly painted region?", message,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


EDIT_CHECK_MS = 800
"""After a paint stroke, look for edits inside accepted regions once painting pauses this long."""
SUGGESTION = "paser suggestion"
"""The Labels layer holding the model's guess of the proposal on screen (not a label until accepted)."""
SUGGESTION_OPACITY = 0.35
SPREAD_SLICES = 8
"""Proposals spread over the volume: maps of this many evenly spaced slices are made first."""


def show_suggestion(viewer, session, prop, patch: np.ndarray) -> Labels:
    """Show `patch` (the model's guess of proposal `prop`) in the suggestion layer, made once and then updated
    in place, and make it the layer the person paints on."""
    three_d = len(session.shape) == 3
    data = np.ascontiguousarray(patch[None] if three_d else patch, np.uint8)
    translate = (prop.z, prop.y0, prop.x0) if three_d else (prop.y0, prop.x0)
    if SUGGESTION in viewer.layers:
        layer = viewer.layers[SUGGESTION]
        layer.data = data
        if tuple(layer.translate) != tuple(float(t) for t in translate):
            layer.translate = translate
        if not layer.visible:
            layer.visible = True
    else:
        layer = viewer.add_labels(data, name=SUGGESTION, translate=translate, opacity=SUGGESTION_OPACITY,
                                  colormap=session.classes.layer_colors())
        layer.contour = 0  # filled but translucent: the canvas's accepted labels are opaque
    layer.metadata["region_id"] = int(prop.region_id)
    if viewer.layers.selection.active is not layer:
        viewer.layers.selection.active = layer
    if layer.mode != "paint":
        layer.mode = "paint"
    return layer


class LabelWidget(QWidget):
    """Propose and label: ranked regions to paint, "next", accept."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.confirm = lambda message: ask_partial(self, message)  # tests replace it
        self.current = None  # the Proposal on screen
        self.sampler = QComboBox()
        self.sampler.addItems(list(SAMPLERS))
        self.sampler.setCurrentText("entropy")
        self.k = QSpinBox()
        self.k.setRange(1, 500)
        self.k.setValue(8)
        self.seed = QSpinBox()
        self.seed.setRange(0, 10**6)
        self.dqn = PathEdit("DQN agent .pt (empty: the shipped agent; yours from `paser al train-dqn`)", folder=False, caption="Choose a DQN agent")
        self.spread = QCheckBox("spread over the volume")
        self.spread.setChecked(True)
        self.spread.setToolTip(f"first map up to {SPREAD_SLICES} evenly spaced slices (fewer when slices are large; in the "
                               "background), and take at most "
                               "a quarter of the proposals from one slice")
        self.prefill = QCheckBox("pre-fill with the model's guess")
        self.prefill.setChecked(True)
        self.prefill.setToolTip("show each proposal filled with the model's prediction (layer 'paser suggestion'): "
                                "correct it with brush/fill/erase, then Accept; it is not a label until accepted")
        self.depth = QSpinBox()
        self.depth.setRange(1, 50)
        self.depth.setValue(2)
        self.propose_button = QPushButton("Propose")
        self.next_button = QPushButton("Next (N)")
        self.accept_button = QPushButton("Accept region (Shift-A)")
        self.unchanged_button = QPushButton("Accept unchanged (Shift-U)")
        self.unchanged_button.setToolTip("accept the model's suggestion of the region on screen as it is")
        self.revert_button = QPushButton("Revert to suggestion (Shift-R)")
        self.revert_button.setToolTip("undo every edit of the suggestion on screen")
        self.neighbours_button = QPushButton("Propose on neighbouring slices")
        self.neighbours_button.setToolTip("propose the last accepted region's place on the slices z +- 1..depth, "
                                          "each pre-filled by the model: a block of slices by a few corrections each")
        self.near_button = QPushButton("Propose k with the sampler on neighbouring slices")
        self.near_button.setToolTip("rank, with the chosen sampler, only the places of accepted regions on the slices "
                                    "z +- 1..depth (their maps are made first)")
        self.skip_button = QPushButton("Skip (Shift-S)")
        self.skip_button.setToolTip("drop the proposal on screen for this round")
        self.unaccept_button = QPushButton("Un-accept")
        self.unaccept_button.setToolTip("take back the accepted regions selected in 'paser regions', or else the "
                                        "last accepted one; their labels stay painted and can be accepted again")
        self.edits_button = QPushButton("Accept edits")
        self.edits_button.setEnabled(False)
        self.edits_note = QLabel("")
        self.edits_note.setWordWrap(True)
        self._edits_timer = QTimer(self)
        self._edits_timer.setSingleShot(True)
        self._edits_timer.setInterval(EDIT_CHECK_MS)
        self._edits_timer.timeout.connect(self.check_edits)
        self.painted_button = QPushButton("Accept painted outside proposals")
        self.import_button = QPushButton("Copy selected labels layer into the session")
        self.where = QLabel("no proposals yet")
        self.where.setWordWrap(True)
        self.job = JobBar(self.hub)
        self.keys = QLabel(shortcut_text())
        self.keys.setWordWrap(True)
        self._layout()
        enable_while_idle(self.hub, self.propose_button, self.painted_button, self.import_button)
        self.hub.actions.update(next=self.next, accept=self.accept, skip=self.skip,
                                accept_unchanged=self.accept_unchanged, revert=self.revert)
        self._shown_at: float | None = None  # when the suggestion on screen was shown (seconds to accept)
        self.last_accepted: int | None = None
        self.unchanged_button.clicked.connect(self.accept_unchanged)
        self.revert_button.clicked.connect(self.revert)
        self.neighbours_button.clicked.connect(self.propose_neighbours)
        self.near_button.clicked.connect(self.propose_near)
        enable_while_idle(self.hub, self.neighbours_button, self.near_button)
        self.skip_button.clicked.connect(self.skip)
        self.unaccept_button.clicked.connect(self.unaccept)
        self.edits_button.clicked.connect(self.accept_edits)
        self.hub.session_changed.connect(self._watch_paint)
        self.propose_button.clicked.connect(self.propose)
        self.next_button.clicked.connect(self.next)
        self.accept_button.clicked.connect(self.accept)
        self.painted_button.clicked.connect(self.accept_painted)
        self.import_button.clicked.connect(self.import_selected)
        self.hub.session_changed.connect(self._reset)

    def _layout(self) -> None:
        form = QWidget()
        rows = QFormLayout(form)
        rows.addRow("sampler", self.sampler)
        rows.addRow("k", self.k)
        rows.addRow("seed", self.seed)
        rows.addRow("DQN agent", self.dqn)
        rows.addRow("", self.spread)
        rows.addRow("", self.prefill)
        near = QWidget()
        nrows = QFormLayout(near)
        nrows.addRow("depth (slices each side)", self.depth)
        col = QVBoxLayout(self)
        col.addWidget(group("Propose", form, self.propose_button, self.job))
        col.addWidget(group("Label", hrow(self.next_button, self.accept_button),
                            hrow(self.unchanged_button, self.revert_button), hrow(self.skip_button,
                            self.unaccept_button), self.painted_button, self.import_button, self.where))
        col.addWidget(group("Along z", near, self.neighbours_button, self.near_button))
        col.addWidget(group("Edits inside accepted regions", self.edits_note, self.edits_button))
        col.addWidget(group("Keyboard shortcuts", self.keys))
        col.addStretch()

    def _reset(self) -> None:
        self.current = None
        self.last_accepted = None
        if SUGGESTION in self.viewer.layers:
            self.viewer.layers.remove(SUGGESTION)
        self._shown_at = None
        self.where.setText("no proposals yet")

    @guarded
    def propose(self, *_) -> None:
        """Rank regions in the background (TAUDIS embeds only its oversampled regions, DQN loads its agent)."""
        s = self.hub.require()
        sampler, k, seed, options = self.sampler.currentText(), self.k.value(), self.seed.value(), {}
        if sampler == "dqn" and self.dqn.text():  # empty: the agent the package ships
            options["dqn_checkpoint"] = self.dqn.text()

        def proposed(proposals) -> None:
            self.hub.refresh_regions()
            self.current = None
            info(f"{len(proposals)} regions proposed by {sampler}: press Next (N), paint, Accept (Shift-A)")
            self.next()

        spread = self.spread.isChecked() and s.n_slices > 1 and s.has_models and reads_maps(sampler)

        def job(should_stop):
            cap = None
            if spread:
                yield from s.spread_maps(s.spread_count(SPREAD_SLICES), self.hub.samples, should_stop)
                release_memory()  # the maps' buffers, before ranking
                cap = max(1, math.ceil(k / min(4, max(1, len(s.fresh_slices())))))  # k fits on the mapped slices
            return s.propose(k, sampler, seed, max_per_slice=cap, **options)

        self.hub.run(job, on_return=proposed, what=f"proposing {k} regions with {sampler}",
                     final=f"proposed with {sampler}")

    @guarded
    def next(self, *_) -> None:
        """Move the camera and the slice to the next pending proposal (after the one on screen)."""
        s = self.hub.require()
        after = self.current.rank if self.current is not None else 0
        prop = s.next_proposal(after)
        if prop is None:
            self.current = None
            self.where.setText("no pending proposals: propose more, or retrain")
            return
        self.show(prop)

    def show(self, prop) -> None:
        """Move the camera and the slice to proposal `prop`; with pre-fill, show the model's guess of it."""
        s = self.hub.require()
        self.current = prop
        self.hub.go_to(prop.z, prop.y0, prop.x0, prop.h, prop.w)
        patch = s.stored_suggestion(prop.region_id) if self.prefill.isChecked() and s.has_models else None
        if patch is not None:
            show_suggestion(self.viewer, s, prop, patch)
            self._shown_at = time.monotonic()
        else:
            self._hide_suggestion()
            self.hub.select(LABELS)
            if self.prefill.isChecked() and s.has_models:  # none stored (proposed without pre-fill): the model's
                # guess is made in a worker, never on the GUI thread, and shown if the proposal is still on screen
                self.hub.preview(lambda: s.suggestion(prop.region_id), functools.partial(self._guess_ready, prop),
                                 key="suggestion")
        self._describe(s, prop)

    def _describe(self, s, prop) -> None:
        self.where.setText(f"proposal {prop.rank} of {len(s.proposals)}: region {prop.region_id}, slice {prop.z}, "
                           f"y {prop.y0}, x {prop.x0} ({prop.h}x{prop.w}); {len(s.pending_proposals)} pending"
                           + (f"; pre-filled by the model (suggestion: {s.suggestion_source(prop.region_id) or 'f0'}): "
                              "correct it, then Accept (Shift-U: unchanged)" if self._shown_at is not None else ""))

    def _guess_ready(self, prop, patch: np.ndarray) -> None:
        """Show a suggestion made in a worker, unless the person has moved on or painted the region meanwhile."""
        s = self.hub.session
        if s is None or self.current is None or self.current.region_id != prop.region_id or s.is_accepted(prop.region_id):
            return
        if np.asarray(s.labels[s.index(prop.z, slice(prop.y0, prop.y0 + prop.h), slice(prop.x0, prop.x0 + prop.w))]).any():
            return  # the person started painting the region: keep their strokes
        show_suggestion(self.viewer, s, prop, patch)
        self._shown_at = time.monotonic()
        self._describe(s, prop)

    @guarded
    def accept(self, *_) -> None:
        """Accept the proposal on screen; a partly painted one asks for confirmation first."""
        s, rid = self.hub.require(), self._current_id()
        patch = self._suggestion_patch(rid)
        if patch is not None:  # the corrected suggestion
            self._accept_suggestion(s, rid, patch)
            return
        try:
            s.accept(rid)
        except PartialRegionError as exc:
            if not self.confirm(str(exc)):
                return
            s.accept(rid, confirm_partial=True)
        self._accepted(1, f"region {rid}", rid)

    @guarded
    def accept_unchanged(self, *_) -> None:
        """Accept the model's suggestion of the proposal on screen as it is (one key)."""
        s, rid = self.hub.require(), self._current_id()
        self._accept_suggestion(s, rid, None)

    def _current_id(self) -> int:
        """The region id of the proposal on screen; one clear line when there is none."""
        if self.current is None:
            raise PaserInputError("no proposal on screen: press Propose, then Next")
        return self.current.region_id

    def _accept_suggestion(self, s, rid: int, patch: np.ndarray | None) -> None:
        """Accept region `rid` from the model's suggestion: `patch` (its corrected copy), or None (unchanged)."""
        s.accept(rid, patch, from_suggestion=True, seconds=self._seconds())
        self._accepted(1, f"region {rid}: {s.effort_of(rid).text()}", rid)

    @guarded
    def revert(self, *_) -> None:
        """Put the model's guess back in the region on screen (undo every correction of it)."""
        s = self.hub.require()
        if self.current is None or self._suggestion_patch(self.current.region_id) is None:
            raise PaserInputError("no suggestion on screen to revert to: press Next with 'pre-fill' on")
        show_suggestion(self.viewer, s, self.current, s.suggestion(self.current.region_id))
        self.viewer.status = f"region {self.current.region_id}: back to the model's suggestion"

    @guarded
    def propose_neighbours(self, *_) -> None:
        """Propose the last accepted region's place on the neighbouring slices, pre-filled by the model."""
        s = self.hub.require()
        rid = self.last_accepted if self.last_accepted is not None else (s.accepted[-1].region_id if s.accepted else None)
        if rid is None:
            raise PaserInputError("accept a region first: its place is then proposed on the neighbouring slices")
        depth = self.depth.value()

        def proposed(new) -> None:
            self.hub.refresh_regions()
            info(f"region {rid}'s place proposed on {len(new)} neighbouring slice(s), each pre-filled by the model")
            self.show(new[0])

        self.hub.run(lambda should_stop: s.propose_neighbours(rid, depth), on_return=proposed,
                     what=f"proposing region {rid} on slices +-{depth}", final="proposed on neighbouring slices")

    @guarded
    def propose_near(self, *_) -> None:
        """Rank with the chosen sampler among the accepted regions' places on the neighbouring slices."""
        s = self.hub.require()
        sampler, k, seed, depth = self.sampler.currentText(), self.k.value(), self.seed.value(), self.depth.value()
        ids = s.neighbour_ids(depth)
        if ids.size == 0:
            raise PaserInputError("no unlabeled neighbouring places: accept a region first, or raise the depth")

        def job(should_stop):
            if reads_maps(sampler):
                fresh = set(s.fresh_slices())
                todo = sorted({int(z) for z in s.pool.z_of(ids)} - fresh)
                if todo:
                    yield from s.compute_maps(todo, self.hub.samples, should_stop=should_stop)
            return s.propose(k, sampler, seed, near=depth)

        def proposed(proposals) -> None:
            self.hub.refresh_regions()
            self.current = None
            info(f"{len(proposals)} neighbouring places proposed by {sampler}")
            self.next()

        self.hub.run(job, on_return=proposed, what=f"proposing on slices +-{depth} with {sampler}",
                     final=f"proposed on neighbouring slices with {sampler}")

    def _suggestion_patch(self, region_id: int) -> np.ndarray | None:
        """The (corrected) suggestion on screen for `region_id`, (h, w), or None when none is shown."""
        layers = self.viewer.layers
        if SUGGESTION not in layers:
            return None
        layer = layers[SUGGESTION]
        if not layer.visible or layer.metadata.get("region_id") != int(region_id):
            return None
        data = np.asarray(layer.data)
        return data[0] if data.ndim == 3 else data

    def _seconds(self) -> float | None:
        return None if self._shown_at is None else time.monotonic() - self._shown_at

    def _hide_suggestion(self) -> None:
        if SUGGESTION in self.viewer.layers:
            layer = self.viewer.layers[SUGGESTION]
            layer.visible = False
            layer.metadata["region_id"] = None
        self._shown_at = None

    @guarded
    def accept_painted(self, *_) -> None:
        """Accept every region painted outside the accepted set (any slice: read in the background)."""
        s = self.hub.require()

        def job(should_stop, confirm: bool = False):
            try:
                return s.accept_painted(confirm_partial=confirm)
            except PartialRegionError as exc:
                return exc

        def confirmed() -> None:  # once the finding job has ended
            if self.hub.worker is not None:
                QTimer.singleShot(10, confirmed)
                return
            self.hub.run(lambda should_stop: job(should_stop, True), on_return=done,
                         what="accepting the painted regions")

        def done(result) -> None:
            if isinstance(result, PartialRegionError):
                if self.confirm(str(result)):
                    QTimer.singleShot(0, confirmed)
                return
            self._accepted(len(result), f"{len(result)} painted regions")

        self.hub.run(job, on_return=done, what="finding painted regions")

    @guarded
    def import_selected(self, *_) -> None:
        """Copy labels painted (or opened) in another Labels layer into the session's canvas, so
        they can be accepted; values follow the layer convention (0 = not labeled, class k = k + 1)."""
        s = self.hub.require()
        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Labels) or layer.name == LABELS:
            raise PaserInputError("select the Labels layer to copy (not 'paser labels'), then press the button again")
        data, name = layer.data, layer.name

        def copied(_result) -> None:
            self.viewer.layers[LABELS].refresh()
            info(f"copied '{name}' into the session canvas: press 'Accept painted outside proposals' to keep it")

        self.hub.run(lambda should_stop: s.sync_labels(data), on_return=copied, what=f"copying '{name}'")

    @guarded
    def skip(self, *_) -> None:
        """Drop the proposal on screen for this round and go to the next one."""
        s = self.hub.require()
        if self.current is None:
            raise PaserInputError("no proposal on screen to skip: press Propose, then Next")
        rid, rank = self.current.region_id, self.current.rank
        s.skip(rid)
        self.hub.refresh_regions()
        self.viewer.status = f"skipped region {rid} for this round ({len(s.pending_proposals)} proposals pending)"
        prop = s.next_proposal(rank)
        self.current = None if prop is None else self.current
        if prop is None:
            self._hide_suggestion()
            self.where.setText("no pending proposals: propose more, or retrain")
        else:
            self.next()

    @guarded
    def unaccept(self, *_) -> None:
        """Take back the accepted regions selected in the regions layer, or else the last accepted one."""
        s = self.hub.require()
        ids = self._selected_accepted()
        if not ids:
            if not s.accepted:
                raise PaserInputError("no accepted region to take back")
            ids = [s.accepted[-1].region_id]
        for rid in ids:
            s.unaccept(rid)
        self.hub.refresh_regions()
        info(f"took back region{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}: labels stay painted; "
             f"{len(s.accepted)} in the labeled set")

    def _selected_accepted(self) -> list[int]:
        layers = self.viewer.layers
        if REGIONS not in layers:
            return []
        layer = layers[REGIONS]
        rows = sorted(layer.selected_data)
        feats = layer.features
        return [int(feats["region_id"][i]) for i in rows if feats["status"][i] == "accepted"]

    def _watch_paint(self) -> None:
        """Check for edits inside accepted regions a moment after each paint stroke."""
        if LABELS in self.viewer.layers:
            self.viewer.layers[LABELS].events.paint.connect(lambda *_: self._edits_timer.start())
        self.check_edits()

    def check_edits(self) -> None:
        """Look for accepted regions painted over since they were accepted (read off the GUI thread)."""
        s = self.hub.session
        if s is None or not s.accepted:
            self._show_edits([])
            return
        self.hub.preview(s.edited_regions, self._show_edits, key="edits")

    def _show_edits(self, ids) -> None:
        ids = list(ids or [])
        self.edits_button.setEnabled(bool(ids))
        if not ids:
            self.edits_note.setText("")
            self.edits_button.setText("Accept edits")
            return
        shown = ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "")
        self.edits_button.setText(f"Accept edits of {len(ids)} region{'s' if len(ids) > 1 else ''}")
        self.edits_note.setText(f"accepted region(s) {shown} were painted over: training still uses the accepted "
                                "labels while the canvas and a full-volume export show the edits. Accept the edits "
                                "so they agree.")

    @guarded
    def accept_edits(self, *_) -> None:
        """Save the canvas of the edited accepted regions as their labels."""
        s = self.hub.require()
        records = s.accept_edits()
        self.hub.refresh_regions()
        self.hub.accepted.emit(len(records))
        info(f"saved the edits of {len(records)} accepted region(s)")
        self.check_edits()

    def _accepted(self, n: int, what: str, region_id: int | None = None) -> None:
        s = self.hub.require()
        if region_id is not None:
            self.last_accepted = int(region_id)
        if not s.pending_proposals:  # else Next below puts the next suggestion in its place
            self._hide_suggestion()
        else:
            self._shown_at = None
        self.hub.refresh_regions()
        self.hub.accepted.emit(n)
        done = f"accepted {what} ({len(s.accepted)} in the labeled set, saved)"
        self.viewer.status = done  # the status bar, not a toast per region: labeling is a quick rhythm
        if s.pending_proposals:
            self.next()
            self.where.setText(f"{done}; now {self.where.text()}")
        else:
            self.current = None
            self.hub.select(LABELS)
            self.where.setText(f"{done}; all proposals done: retrain, then propose again")


def shortcut_text() -> str:
    """The viewer's PaSeR keyboard shortcuts, one per line, for the dock."""
    return "\n".join(f"{key}: {what}" for key, _, what in SHORTCUTS)
