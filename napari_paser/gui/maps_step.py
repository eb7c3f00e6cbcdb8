"""Step 2: f0's prediction and entropy (with a gamma threshold), and the routing overlay."""

from __future__ import annotations

import math
import time

from qtpy.QtCore import QSignalBlocker, Qt
from qtpy.QtWidgets import QCheckBox, QFormLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget
from superqt import QLabeledDoubleSlider

from napari_paser.gui.common import JobBar, enable_while_idle, group, hrow
from napari_paser.gui.hub import MODEL_COLORS, ROUTED, guarded, hub_for, info
from napari_paser.gui.layers import overlay_shown

MAP_REFRESH_S = 1.0
"""While a slice's maps come in tile by tile, the layers re-read the slice on screen at most this often."""
KNOB_LABELS = {"lambda": "cost weight \u03bb", "share": "share to f2"}
KNOB_TIPS = {
    "lambda": "cost weight lambda of the policy: 0 routes by accuracy alone, 1 by cost alone; picks the nearest "
              "policy of the run's bank (`paser policy`) and re-routes live",
    "share": "share of the session's patches sent to the largest model, the most uncertain first (f0's entropy); "
             "picks the nearest policy of the session's bank (Train router) and re-routes live",
}


class MapsWidget(QWidget):
    """Uncertainty and routing: where f0 is unsure, and which model each patch goes to."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.samples = QSpinBox()
        self.samples.setRange(1, 50)
        self.samples.setValue(5)
        self.slice_button = QPushButton("Current slice")
        self.volume_button = QPushButton("Whole volume")
        self.job = JobBar(self.hub)
        self.view = QCheckBox("show the model's view (H)")
        self.view.setToolTip("f0's prediction, entropy and the entropy > gamma contours over the image; "
                             "hidden, the image and your labels alone")
        self.freshness = QLabel("")
        self.freshness.setWordWrap(True)
        self.gamma = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.gamma.setRange(0.0, math.log(3))
        self.gamma.setValue(self.hub.gamma)
        self.route_button = QPushButton("Route current slice")
        self.lam = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.lam.setRange(0.0, 1.0)
        self.lam.setDecimals(3)  # a session's shares 0.05 ... 0.5, its network's lambdas 0.005 ... 0.1 (`session.router`)
        self.lam.setValue(0.3)
        self._lambdas: list[float] = []  # the bank the slider was last set up for
        self._refreshed = 0.0  # when the map layers last re-read the slice on screen
        self._default: float | None = None  # and its default member
        self.lam.setToolTip(KNOB_TIPS["lambda"])
        self.lam_note = QLabel("")
        self.legend = QLabel("")
        self.readout = QLabel("no routing yet: press 'Train router' in the Train step (or load a run with policies)")
        self.shares = QLabel("")
        for label in (self.legend, self.readout, self.shares, self.lam_note):
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.RichText)
        self._layout()
        enable_while_idle(self.hub, self.slice_button, self.volume_button, self.route_button)
        self.view.toggled.connect(self._view_toggled)
        self.hub.model_view_changed.connect(self._view_changed)
        self.samples.valueChanged.connect(lambda v: setattr(self.hub, "samples", int(v)))
        self.hub.maps_changed.connect(self._freshness)
        self.hub.models_changed.connect(self._freshness)
        self.hub.session_changed.connect(self._freshness)
        self.slice_button.clicked.connect(lambda: self.compute(volume=False))
        self.volume_button.clicked.connect(lambda: self.compute(volume=True))
        self.gamma.valueChanged.connect(self.hub.set_gamma)
        self.route_button.clicked.connect(self.route)
        self.lam.valueChanged.connect(self.live)
        self.hub.routing_preview.connect(self.show_routing)
        self.hub.session_changed.connect(self._session)
        self.hub.models_changed.connect(self._legend)
        self.hub.models_changed.connect(self._bank)
        self.hub.models_changed.connect(self._reroute)

    def _layout(self) -> None:
        form = QWidget()
        rows = QFormLayout(form)
        rows.addRow("MC samples", self.samples)
        rows.addRow("entropy > gamma", self.gamma)
        col = QVBoxLayout(self)
        col.addWidget(group("f0 prediction and entropy", form, hrow(self.slice_button, self.volume_button), self.view,
                            self.freshness, self.job))
        lam_row = QWidget()
        self.lam_label = QLabel(KNOB_LABELS["lambda"])
        QFormLayout(lam_row).addRow(self.lam_label, self.lam)
        col.addWidget(group("Routing (PaSeR policy)", self.route_button, lam_row, self.lam_note, self.legend,
                            self.readout, self.shares))
        col.addStretch()

    def _session(self) -> None:
        s = self.hub.session
        if s is not None:
            self.gamma.setRange(0.0, round(math.log(s.n_classes), 3))
        self._legend()
        self._bank()

    def _bank(self) -> None:
        """The lambda control is live only with a policy bank (one policy per lambda)."""
        s = self.hub.session
        lambdas = s.policy_lambdas if s is not None else []
        self.lam.setEnabled(bool(lambdas))
        if s is not None and s.has_policy and self.readout.text().startswith("no routing yet"):
            self.readout.setText("no routing yet: press 'Route current slice'")
        default = s.bank.default_lambda if lambdas else None
        if lambdas and (lambdas, default) != (self._lambdas, self._default):  # a new bank (or a new default member,
            # chosen by its held-out table) opens at its default member, as routing without one
            low, high = (lambdas[0], lambdas[-1]) if len(lambdas) > 1 else (0.0, 1.0)
            with QSignalBlocker(self.lam):
                self.lam.setRange(low, high)
                self.lam.setValue(default)
        self._lambdas, self._default = list(lambdas), default
        knob = self._knob()
        self.lam_label.setText(KNOB_LABELS[knob])
        self.lam.setToolTip(KNOB_TIPS[knob])
        stale = (" <b>Made with an older f0</b>: Train router again (policies only: seconds)."
                 if lambdas and s.bank_stale else "")
        if knob == "share":
            verdict = f" <b>{s.router_verdict}</b>." if s.router_verdict else ""
            self.lam_note.setText("most uncertain patches (f0's entropy) first; shares "
                                  + ", ".join(f"{v:g}" for v in lambdas) + "." + verdict + stale)
        elif lambdas:
            self.lam_note.setText("policies trained at \u03bb = " + ", ".join(f"{v:g}" for v in lambdas) + "." + stale)
        else:
            self.lam_note.setText("one policy, \u03bb fixed at training: `paser policy` trains a bank for live control")

    def _knob(self) -> str:
        """What the slider sets: "share" (a session's ranked bank) or "lambda" (a network bank, one policy)."""
        s = self.hub.session
        return s.bank.knob if s is not None and len(s.bank) else "lambda"

    def _lam(self) -> float | None:
        s = self.hub.session
        return self.lam.value() if s is not None and s.policy_lambdas else None

    def _view_toggled(self, on: bool) -> None:
        if on != self.hub.model_view:
            self.hub.set_model_view(on)

    def _view_changed(self, on: bool) -> None:
        if self.view.isChecked() != on:
            self.view.blockSignals(True)
            self.view.setChecked(on)
            self.view.blockSignals(False)

    def _freshness(self) -> None:
        """How many slices have maps of the current f0, and how many keep the previous model's."""
        s = self.hub.session
        if s is None or len(s.shape) != 3:
            self.freshness.setText("")
            return
        fresh, stale = len(s.fresh_slices()), len(s.stale_slices())
        text = f"maps: {fresh} of {s.n_slices} slices from the current f0"
        if stale:
            text += f"; {stale} from the previous model (refreshed when shown)"
        self.freshness.setText(text)

    @guarded
    def compute(self, volume: bool = False) -> None:
        """MC-dropout maps of the slice on screen (or every slice) in the background, a large slice tile by
        tile with the part on screen first; the model's view is shown when they are done (translucent: the
        image reads through). After the whole volume, a ranked bank older than f0 is made again from the
        fresh maps (`router.rethreshold`)."""
        from napari_paser.session.router import rethreshold

        s = self.hub.require()
        zs = None if volume else self.hub.current_z()
        samples, view = self.samples.value(), self.hub.view_box()
        gen_check = s.compute_maps(zs, samples=samples)  # raises at once on no models / bad slice
        gen_check.close()

        def job(should_stop):
            done = yield from s.compute_maps(zs, samples=samples, should_stop=should_stop, view=view)
            redone = bool(volume) and (yield from rethreshold(s, samples, should_stop))
            return done, redone

        self.hub.run(job, on_yield=self._progress, on_return=self._maps_done, what="computing maps")

    def _progress(self, event) -> None:
        """A tile of the slice on screen is stored: show it (the model's view opens with the first tile,
        not when the whole slice is done), re-reading the layers at most every MAP_REFRESH_S."""
        if event.stage != "maps" or event.z != self.hub.current_z():
            return
        now = time.monotonic()
        if not self.hub.model_view:
            self.hub.set_model_view(True)  # reads the shown layers' slice
        elif now - self._refreshed >= MAP_REFRESH_S:
            self.hub.refresh_maps()
        else:
            return
        self._refreshed = now

    def _maps_done(self, value: tuple[int, bool]) -> None:
        self.hub.set_gamma(self.gamma.value())
        self.hub.set_model_view(True)
        self.hub.refresh_maps()
        if value[1]:
            self.hub.models_changed.emit()
            info("routing shares set again for the new f0 from the volume's fresh maps")

    @guarded
    def route(self, *_, quiet: bool = False) -> None:
        """Route the slice on screen with the policy (f0 -> f1/f2 per patch) and show the cost."""
        s = self.hub.require()
        z = self.hub.current_z()
        if not s.has_policy:
            s.pick_policy()  # raises the "no routing policy" message
        samples, lam = self.samples.value(), self._lam()
        self.hub.run(self.hub.route_job(s, z, samples, lam), on_return=self._routed,
                     what="" if quiet else f"routing slice {z}", final="" if quiet else f"routed slice {z}")

    def _routed(self, routed) -> None:
        if routed is not None:  # None: cancelled
            self.show_routing(routed)

    @guarded
    def live(self, *_) -> None:
        """Re-route the slice on screen at the slider's lambda in a quick background preview once f0's state of
        the slice is known (only the small policy runs; the cost comes from the map); else, if the overlay is
        shown, route it as a job (the overlay never silently shows another lambda than the slider's)."""
        s, layers = self.hub.session, self.viewer.layers
        if s is None or not s.policy_lambdas:
            return
        z, samples, lam = self.hub.current_z(), self.samples.value(), self._lam()
        if s.has_state(z, samples):
            self.hub.preview(lambda: s.route(z, samples=samples, lam=lam, execute=False), self.show_routing)
        elif overlay_shown(layers) and not self.hub.busy:
            self.route()

    def _reroute(self) -> None:
        """New weights: re-route the slice on screen if the overlay is shown."""
        s = self.hub.session
        if s is not None and s.has_policy and overlay_shown(self.viewer.layers) and not self.hub.busy:
            self.route(quiet=True)  # the job bars keep saying what the retrain did

    def show_routing(self, routed) -> None:
        self.hub.show_routing(routed)
        shares = ", ".join(f"{n} {routed.shares.get(n, 0.0):.0%}" for n in routed.names)
        ratio = routed.gflops / routed.gflops_largest if routed.gflops_largest else 0.0
        knob = "share" if self._knob() == "share" else "\u03bb"
        trained = "" if routed.lam is None else f" (policy {knob} = {routed.lam:g})"
        self.readout.setText(f"slice {routed.z}{trained}: <b>{routed.gflops:.3f}</b> GFLOPs spent vs "
                             f"{routed.gflops_largest:.3f} for {routed.names[-1]} everywhere ({ratio:.0%} of it)")
        self.shares.setText(f"patches per model: {shares}")
        if routed.segmentation is not None and routed.done is None:  # not per slider move, nor for the part on screen
            info(f"routed slice {routed.z}: {shares}; its segmentation is the layer '{ROUTED}'")

    def _legend(self) -> None:
        s = self.hub.session
        if s is None or not s.models:
            self.legend.setText("")
            return
        from learners.unet import count_parameters

        items = [f"<span style='color:{MODEL_COLORS[i % len(MODEL_COLORS)]}'>&#9632;</span> {role} "
                 f"({count_parameters(s.models[role]):,} params)" for i, role in enumerate(sorted(s.models))]
        self.legend.setText("&nbsp;&nbsp;".join(items))
