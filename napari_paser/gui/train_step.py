"""Step 4: retrain in the background (progress, cancel), train the session's own router, and the learning curve."""

from __future__ import annotations

from dataclasses import replace

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from napari.utils.notifications import show_warning

from napari_paser.gui.common import JobBar, enable_while_idle, group, hrow
from napari_paser.gui.hub import guarded, hub_for, info
from napari_paser.errors import PaserInputError
from napari_paser.session.training import RETRAIN_CONFIG
from napari_paser.session.labeling import held_out_advice
from napari_paser.session.router import ROUTED_RETRAIN

TRAIN_THREADS = 1
"""Torch threads while retraining: small models train fastest on one thread, and the GUI thread keeps a core."""


class CurvePlot(QWidget):
    """f0's mIoU and per-class IoU on the held-out regions against the number of labeled regions (matplotlib)."""

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.4), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.axes = self.figure.add_subplot()
        QVBoxLayout(self).addWidget(self.canvas)
        self.plot([])

    def plot(self, curve, class_names: tuple[str, ...] = (), effort: list[int] | None = None,
             held: tuple[int, int, str] | None = None) -> None:
        """effort: per curve point the pixels a person corrected or painted (`Session.curve_effort`), the x-axis
        instead of the labeled regions. held: the held-out regions, their distinct slices and the advice when
        they are too few to trust (`Session.held_out_basis`, `held_out_advice`), for the title."""
        ax = self.axes
        ax.clear()
        x_of = dict(zip(map(id, curve), effort)) if effort is not None else {}
        pts = [p for p in curve if p.val_miou is not None]
        if pts:
            xs = [x_of.get(id(p), p.n_labeled) for p in pts]
            ax.plot(xs, [p.val_miou for p in pts], "o-", color="#1f77b4", label="mIoU", lw=2)
            names = list(class_names) or sorted({n for p in pts for n in (getattr(p, "class_iou", None) or {})})
            for i, name in enumerate(names):
                ys = [(getattr(p, "class_iou", None) or {}).get(name) for p in pts]
                if any(y is not None for y in ys):
                    ax.plot(xs, [float("nan") if y is None else y for y in ys], "--", lw=1,
                            color=f"C{i + 1}", label=name)
            kept = [p for p in pts if getattr(p, "kept_previous", False)]
            if kept:
                ax.plot([x_of.get(id(p), p.n_labeled) for p in kept], [p.val_miou for p in kept], "x", color="#d62728",
                        label="kept previous")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=6, loc="lower right")
            if held is None:
                ax.set_title(f"held out: {pts[-1].n_val} regions", fontsize=8)
            else:
                regions, slices, advice = held
                ax.set_title(f"held out: {regions} regions from {slices} slice{'' if slices == 1 else 's'}"
                             + (f"\n{advice}" if advice else ""), fontsize=8, color="#d62728" if advice else "black")
        else:
            ax.text(0.5, 0.5, "no held-out regions yet\n(every 5th accepted region)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        ax.set_xlabel("pixels corrected or painted" if effort is not None else "labeled regions", fontsize=8)
        ax.set_ylabel("held-out IoU (f0)", fontsize=8)
        ax.tick_params(labelsize=7)
        self.canvas.draw_idle()


class TrainWidget(QWidget):
    """Training: retrain the models on the accepted regions without blocking the viewer."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(RETRAIN_CONFIG.epochs)
        self.scheduler = QComboBox()
        self.scheduler.addItems(["fixed", "cosine", "step", "agent"])
        self.roles = {r: QCheckBox(r) for r in ("f0", "f1", "f2")}
        self.roles["f0"].setChecked(True)
        self.auto = QCheckBox("retrain after each accepted batch")
        self.train_button = QPushButton("Retrain now")
        self.router_button = QPushButton("Train router (routing policies + f2)")
        self.router_button.setToolTip("make one routing policy per share of patches sent to f2, the most uncertain by "
                                      "f0's entropy first, with the current f2 (under a minute: the share slider in "
                                      "the Maps step routes with them at once; the default share follows the held-out "
                                      f"regions), then retrain f2 on the accepted regions ({ROUTED_RETRAIN.epochs} "
                                      "epochs, minutes, time left shown) and make them again")
        self.router_epochs = QSpinBox()
        self.router_epochs.setRange(1, 1000)
        self.router_epochs.setValue(ROUTED_RETRAIN.epochs)
        self.router_epochs.setToolTip(f"epochs of f2's retraining when the router trains "
                                      f"({ROUTED_RETRAIN.steps_per_epoch} steps each); f2 needs more than f0 to beat it")
        self.router_retrain = QCheckBox("then retrain f2")
        self.router_retrain.setChecked(True)
        self.router_retrain.setToolTip("after the routing policies are made with the current f2, retrain f2 and make "
                                       "them again (minutes; Cancel keeps the first policies); untick to only redo "
                                       "the policies (after f0 retrained, its entropy and so the shares' thresholds "
                                       "moved)")
        self.assist = QCheckBox("forest assist")
        self.assist.setChecked(True)
        self.assist.setToolTip("a random forest on 3D filter features of the accepted regions (as ilastik's) joins "
                               "f0's guesses where it scored better on the regions you accepted, each scored before "
                               "f0 trained on it; scored and refitted at each retrain (seconds)")
        self.assist_line = QLabel("")
        self.assist_line.setWordWrap(True)
        self.job = JobBar(self.hub)
        self.curve = CurvePlot()
        self.last_result = None
        self.last_report = None
        self._layout()
        enable_while_idle(self.hub, self.train_button)
        self.train_button.clicked.connect(self.retrain)
        enable_while_idle(self.hub, self.router_button)
        self.router_button.clicked.connect(self.train_router)
        self.hub.curve_changed.connect(self._plot)
        self.hub.accepted.connect(self._after_accept)
        self.assist.toggled.connect(self._set_assist)
        self.hub.session_changed.connect(self._show_assist)
        self.hub.models_changed.connect(self._show_assist)

    def _layout(self) -> None:
        form = QWidget()
        rows = QFormLayout(form)
        rows.addRow("epochs", self.epochs)
        rows.addRow("learning rate", self.scheduler)
        rows.addRow("models", hrow(*self.roles.values()))
        rows.addRow("router: f2 epochs", self.router_epochs)
        col = QVBoxLayout(self)
        col.addWidget(group("Retrain", form, self.auto, self.train_button, hrow(self.router_button, self.router_retrain),
                            self.job, hrow(self.assist), self.assist_line))
        col.addWidget(group("Learning curve", self.curve))
        col.addStretch()

    def config(self):
        return replace(RETRAIN_CONFIG, epochs=self.epochs.value(), scheduler=self.scheduler.currentText())

    @guarded
    def retrain(self, *_) -> None:
        """Train on a snapshot of the labeled set in a thread worker, then refresh the maps of the slice on
        screen and of the proposals' slices (the others when shown); Cancel keeps the last weights."""
        s = self.hub.require()
        roles = [r for r, box in self.roles.items() if box.isChecked()]
        if not roles:
            raise PaserInputError("choose at least one model to retrain (f0, f1 or f2)")
        gen = s.retrain(self.config(), roles)  # checks models and labeled regions at once
        gen.close()
        cfg, hub = self.config(), self.hub

        def job(should_stop):
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(TRAIN_THREADS)
            try:
                result = yield from s.retrain(cfg, roles, should_stop=should_stop, refresh=False)
                if result.cancelled or not s.state.maps:
                    return result, None
                report = yield from s.refresh(focus=hub.focus_z, everything=False, samples=hub.samples,
                                              should_stop=should_stop)
                return result, report
            finally:
                torch.set_num_threads(threads)

        self.last_result = self.last_report = None
        self.hub.run(job, on_return=self._returned, on_done=self._done, what="retraining")

    def _returned(self, value) -> None:
        self.last_result, self.last_report = value

    @guarded
    def train_router(self, *_) -> None:
        """The policy bank from the accepted regions in a thread worker: first with the current f2 (installed at
        once: the Maps step's share control routes with it), then, ticked, f2 retrains for the router's own
        epochs (`ROUTED_RETRAIN`, the learning-rate schedule chosen above; the bar says the time left) and the
        bank is made again. Cancel keeps the previous bank, or the first one once it is made."""
        s = self.hub.require()
        cfg = replace(ROUTED_RETRAIN, epochs=self.router_epochs.value(), scheduler=self.scheduler.currentText())
        retrain = self.router_retrain.isChecked()
        s.train_router(model_config=cfg, train_models=retrain).close()  # checks models and labeled regions at once

        def job(should_stop):
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(TRAIN_THREADS)
            try:
                return (yield from s.train_router(model_config=cfg, train_models=retrain, should_stop=should_stop))
            finally:
                torch.set_num_threads(threads)

        self.last_result = None
        self.hub.run(job, on_yield=self._router_progress, on_return=self._router_returned, on_done=self._router_done,
                     what="making the routing policies")

    def _router_progress(self, event) -> None:
        """The first bank (made with the current f2) is installed: the Maps step's share control routes with it
        while f2 retrains."""
        if getattr(event, "stage", None) == "ready":
            self.hub.models_changed.emit()
            info(event.message)

    def _router_returned(self, result) -> None:
        self.last_result = result

    def _router_done(self) -> None:
        result = self.last_result
        if result is None or result.cancelled:
            self.job.message.setText("cancelled: the previous routing policies are kept")
            info("router training cancelled; the previous routing policies are kept")
            return
        hub = self.hub
        hub.later([hub.refresh_maps, hub.refresh_regions, hub.curve_changed.emit, hub.models_changed.emit])
        summary, score = result.summary, ""
        if result.bank.knob == "share":
            score = f": {summary['verdict']}"
            if result.retrain_cancelled:
                score += f" ({summary['models'][-1]} retraining cancelled: the policies use the current one)"
        elif summary.get("policies"):  # what the held-out regions recommend (`router.held_out_choice`)
            lam = summary["held_out_choice"]
            score = (f"; best held-out mIoU {summary['policies'][f'{lam:.3f}']['iou']:.3f} at lambda {lam:g}"
                     if lam is not None else f"; f0 alone is better on the held-out regions "
                     f"({summary['f0_alone']['iou']:.3f}): label more regions across the volume")
        message = (f"router trained: {len(result.bank)} policies ({result.bank.knob} "
                   f"{', '.join(f'{v:g}' for v in result.bank.lambdas)}){score}")
        self.job.message.setText(message)
        info(message)

    def _done(self) -> None:
        result, report = self.last_result, self.last_report
        if result is None or result.cancelled:
            message = "cancelled: the previous weights are kept"
            self.job.message.setText(message)
            info("retraining cancelled; the previous weights are kept")
            return
        hub = self.hub  # the layer updates and the curve's redraw, one per event-loop turn
        hub.later([hub.refresh_maps, hub.refresh_regions, hub.curve_changed.emit, hub.models_changed.emit])
        point = result.curve_point
        held = f", {hub.session.held_out_text(point.val_miou)}" if point and point.val_miou is not None \
            and hub.session is not None else ""
        if point is not None and getattr(point, "kept_previous", False):  # the step says so too, not only a toast
            message = result.message or f"kept the previous weights: the retrained model did worse on the {point.n_val} " \
                                        "held-out regions"
            self.job.message.setText(message)
            show_warning(message)
            return
        refreshed = report.message() if report is not None else "no maps to refresh"
        message = f"retrained on {point.n_train if point else '?'} regions{held}: {refreshed}"
        self.job.message.setText(message)
        info(message)

    @guarded
    def _set_assist(self, on: bool) -> None:
        s = self.hub.session
        if s is not None and s.forest.enabled != bool(on) and not s.read_only:
            s.set_forest_assist(bool(on))
        self._show_assist()

    def _show_assist(self) -> None:
        """The forest assist's mode and scores (a read of session.json, no computing)."""
        s = self.hub.session
        self.assist_line.setText("" if s is None else s.forest.summary())
        if s is not None and self.assist.isChecked() != s.forest.enabled:
            self.assist.blockSignals(True)
            self.assist.setChecked(s.forest.enabled)
            self.assist.blockSignals(False)

    def _plot(self) -> None:
        s = self.hub.session
        corrected = s is not None and any(a.changed_px is not None for a in s.accepted)
        held = None
        if s is not None:
            regions, slices = s.held_out_basis()
            held = (regions, slices, held_out_advice(regions, slices, s.n_slices))
        self.curve.plot(s.curve if s else [], s.classes.names if s else (), s.curve_effort() if corrected else None,
                        held)

    def _after_accept(self, _n: int) -> None:
        s = self.hub.session
        if self.auto.isChecked() and s is not None and not s.pending_proposals and not self.hub.busy:
            self.retrain()
