"""Step 6: segment the whole volume with the job `paser segment` runs, in the background, into an OME-Zarr
shown as lazy layers that fill as blocks finish; Cancel keeps the finished blocks, running again resumes.

The run is the session's models (exported once per model version beside the session folder, with its
policies) or a run folder; the image is the session's (its in-place source or its own copy) or any volume
`paser segment` reads. The job is `napari_paser.jobs.segment.segment_steps` itself on a dask LocalCluster
(`workers` processes; 0 runs it in napari's process), driven by the hub's thread worker.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QPushButton, QSpinBox, QVBoxLayout, QWidget

from napari_paser.errors import PaserInputError
from napari_paser.gui.common import JobBar, PathEdit, enable_while_idle, group
from napari_paser.gui.hub import MODEL_COLORS, guarded, hub_for, info
from napari_paser.jobs.segment import MODES, arrays_of, lazy_output, segment_steps

SEGMENTATION, ROUTING_MAP, ENTROPY_MAP = "paser volume segmentation", "paser volume routing", "paser volume entropy"
REFRESH_S = 0.5
"""The output layers are re-read at most this often while blocks finish (one slice each: cheap)."""


class SegmentWidget(QWidget):
    """The whole volume, blockwise: f0's maps, PaSeR routing or f2 everywhere, resumable."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.what = QComboBox()
        self.what.addItems(list(MODES))
        self.what.setCurrentText("route")
        self.what.setToolTip("maps: f0's prediction and entropy; route: PaSeR (each patch to f0, f1 or f2 as the "
                             "policy chooses); f2: the largest model everywhere")
        self.lam = QDoubleSpinBox()
        self.lam.setRange(-0.05, 1.0)
        self.lam.setSingleStep(0.05)
        self.lam.setSpecialValueText("run default")
        self.lam.setValue(-0.05)
        self.tile = QSpinBox()
        self.tile.setRange(16, 8192)
        self.tile.setSingleStep(16)
        self.tile.setValue(512)
        self.workers = QSpinBox()
        self.workers.setRange(0, 64)
        self.workers.setValue(1)
        self.workers.setToolTip("dask LocalCluster worker processes; 0 runs the blocks in napari's own process")
        self.run_folder = PathEdit("run folder (empty: the session's models)")
        self.image = PathEdit("volume (empty: the session's image)", folder=False, caption="Choose a volume")
        self.out = PathEdit("output .zarr (empty: beside the session folder)")
        self.button = QPushButton("Segment volume")
        self.job = JobBar(self.hub)
        self.last = None  # the last job's SegmentSummary
        self._shown_at = 0.0
        self._what = "route"
        form = QWidget()
        rows = QFormLayout(form)
        for label, w in (("what", self.what), ("cost weight \u03bb", self.lam), ("tile", self.tile),
                         ("workers", self.workers), ("run", self.run_folder), ("image", self.image),
                         ("output", self.out)):
            rows.addRow(label, w)
        col = QVBoxLayout(self)
        col.addWidget(group("Segment the whole volume (paser segment)", form, self.button, self.job))
        col.addStretch()
        enable_while_idle(self.hub, self.button)
        self.button.clicked.connect(self.segment)

    def settings(self) -> dict:
        """The job's arguments from the form and the session (run None: export the session's models first)."""
        s = self.hub.session
        what = self.what.currentText()
        if s is None and not (self.run_folder.text() and self.image.text() and self.out.text()):
            raise PaserInputError("no session: start or open one, or give a run folder, a volume and an output .zarr")
        if s is not None and not self.run_folder.text():
            s.require_f0()
            if what == "route" and not s.has_policy:
                s.pick_policy()  # raises the "no routing policy yet: press 'Train router'" message
        version = s.state.model_version if s is not None else 0
        out = self.out.text() or str(s.folder.parent / f"{s.folder.name}-{what}-v{version}.zarr")
        lam = None if self.lam.value() < 0 else float(self.lam.value())
        return {"run": self.run_folder.text() or None, "image": self.image.text() or s.volume_spec, "out": out,
                "what": what, "lam": lam, "tile": self.tile.value(), "workers": self.workers.value()}

    @guarded
    def segment(self, *_):
        """Run (or resume) the job in the background; its output appears as lazy layers that fill as it goes."""
        kw = self.settings()
        s = self.hub.session

        def job(should_stop):
            run = kw.pop("run") or session_run(s)
            return (yield from segment_steps(run, should_stop=should_stop, **kw))

        self.last, self._what = None, kw["what"]
        return self.hub.run(job, on_yield=self._progress, on_return=self._done,
                            what=f"segmenting {Path(kw['image']).name} ({kw['what']}) into {Path(kw['out']).name}")

    def _progress(self, event) -> None:
        if event.stage == "plan":
            self._show(event.out)
        elif time.monotonic() - self._shown_at >= REFRESH_S:
            self.refresh()

    def _done(self, summary) -> None:
        self.last = summary
        self.refresh()
        self.hub.job_finished.emit(summary.line())  # the job bars' last message
        info(summary.line())

    def refresh(self) -> None:
        """Re-read the output layers' slice on screen (blocks finished since show up)."""
        self._shown_at = time.monotonic()
        for name in (SEGMENTATION, ROUTING_MAP, ENTROPY_MAP):
            if name in self.viewer.layers and self.viewer.layers[name].visible:
                self.viewer.layers[name].refresh()

    def _show(self, out: str) -> None:
        """The job's output as lazy layers (a previous job's layers get the new data), one per event-loop turn:
        the segmentation, and the routing map (route) or the entropy (maps). A new napari layer costs
        0.1-1 s of the GUI thread (vispy nodes, controls), so no more layers than that."""
        makers = [lambda: self._labels(out, "segmentation", SEGMENTATION, self._class_colors(), True)]
        if self._what == "route":
            colors = {k + 1: c for k, c in enumerate(MODEL_COLORS)}
            makers.append(lambda: self._labels(out, "routing", ROUTING_MAP, colors, False))
        elif "entropy" in arrays_of(self._what):
            makers.append(lambda: self._entropy(out))
        self.hub.later(makers)

    def _class_colors(self) -> dict | None:
        s = self.hub.session
        return s.classes.layer_colors() if s is not None else None

    def _labels(self, out: str, array: str, name: str, colors, visible: bool) -> None:
        from napari.layers import Labels

        data = lazy_output(out, array, offset=1)
        kw = {"colormap": {0: "transparent", None: "transparent", **colors}} if colors else {}
        self._put(Labels(data, name=name, opacity=0.5, visible=visible, cache=False, metadata={"paser_out": out}, **kw))

    def _entropy(self, out: str) -> None:
        from napari.layers import Image

        s = self.hub.session
        top = math.log(s.n_classes) if s is not None else math.log(3)
        self._put(Image(lazy_output(out, "entropy"), name=ENTROPY_MAP, colormap="magma", contrast_limits=(0.0, top),
                        blending="additive", visible=False, cache=False, metadata={"paser_out": out}))

    def _put(self, layer) -> None:
        """Add the layer, or give a previous job's layer of that name the new data (cheaper than a new layer)."""
        layers = self.viewer.layers
        old = layers[layer.name] if layer.name in layers else None
        if old is not None and type(old) is type(layer) and old.ndim == layer.ndim:
            old.data, old.metadata = layer.data, layer.metadata
            return
        active = layers.selection.active  # the layer the person paints with stays selected
        if old is not None:
            layers.remove(old)
        layers.append(layer)
        if active is not None and active in layers:
            layers.selection.active = active


def session_run(session) -> str:
    """The session's models and policies as a run folder beside the session, one per model version (so a
    job resumed later never mixes the blocks of two versions); written once per version."""
    import json

    run = session.folder.parent / f"{session.folder.name}-run-v{session.state.model_version}"
    info_file = run / "run.json"
    if info_file.is_file():
        try:
            if json.loads(info_file.read_text()).get("session_version") == session.state.model_version:
                return str(run)
        except (OSError, ValueError):
            pass
    session.export_run(run, overwrite=True)
    return str(run)
