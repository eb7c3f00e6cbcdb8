"""Step 2: f0's prediction and entropy (with a gamma threshold), and the routing overlay."""

from __future__ import annotations

import math

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget
from superqt import QLabeledDoubleSlider

from napari_paser._widgets_common import JobBar, group, hrow
from napari_paser._widgets_hub import MODEL_COLORS, ROUTING, guarded, hub_for, info


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
        self.gamma = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.gamma.setRange(0.0, math.log(3))
        self.gamma.setValue(self.hub.gamma)
        self.route_button = QPushButton("Route current slice")
        self.legend = QLabel("")
        self.readout = QLabel("no routing yet: needs a run folder with policy.pt (f_RL)")
        self.shares = QLabel("")
        for label in (self.legend, self.readout, self.shares):
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.RichText)
        self._layout()
        self.slice_button.clicked.connect(lambda: self.compute(volume=False))
        self.volume_button.clicked.connect(lambda: self.compute(volume=True))
        self.gamma.valueChanged.connect(self.hub.set_gamma)
        self.route_button.clicked.connect(self.route)
        self.hub.busy_changed.connect(self.job.running)
        self.hub.session_changed.connect(self._session)
        self.hub.models_changed.connect(self._legend)
        self.hub.models_changed.connect(self._reroute)

    def _layout(self) -> None:
        form = QWidget()
        rows = QFormLayout(form)
        rows.addRow("MC samples", self.samples)
        rows.addRow("entropy > gamma", self.gamma)
        col = QVBoxLayout(self)
        col.addWidget(group("f0 prediction and entropy", form, hrow(self.slice_button, self.volume_button), self.job))
        col.addWidget(group("Routing (PaSeR policy)", self.route_button, self.legend, self.readout,
                            self.shares))
        col.addStretch()

    def _session(self) -> None:
        s = self.hub.session
        if s is not None:
            self.gamma.setRange(0.0, round(math.log(s.n_classes), 3))
        self._legend()

    @guarded
    def compute(self, volume: bool = False) -> None:
        """MC-dropout maps of the slice on screen (or every slice) in the background."""
        s = self.hub.require()
        zs = None if volume else self.hub.current_z()
        samples = self.samples.value()
        gen_check = s.compute_maps(zs, samples=samples)  # raises at once on no models / bad slice
        gen_check.close()

        def job(should_stop):
            return (yield from s.compute_maps(zs, samples=samples, should_stop=should_stop))

        self.hub.run(job, on_yield=self._progress, on_done=self._maps_done, what="computing maps")

    def _progress(self, event) -> None:
        self.job.progress(event)
        if event.stage == "maps":
            self.hub.refresh_maps()

    def _maps_done(self) -> None:
        self.hub.refresh_maps()
        self.hub.set_gamma(self.gamma.value())

    @guarded
    def route(self, *_) -> None:
        """Route the slice on screen with the policy (f0 -> f1/f2 per patch) and show the cost."""
        s = self.hub.require()
        z = self.hub.current_z()
        if not s.has_policy:
            s.route(z)  # raises the "no routing policy" message
        samples = self.samples.value()
        self.hub.run(lambda should_stop: s.route(z, samples=samples), on_return=self.show_routing, what="routing")

    def _reroute(self) -> None:
        """New weights: re-route the slice on screen if the overlay is shown."""
        s, layers = self.hub.session, self.viewer.layers
        if s is not None and s.has_policy and ROUTING in layers and layers[ROUTING].visible and not self.hub.busy:
            self.route()

    def show_routing(self, routed) -> None:
        self.hub.show_routing(routed)
        shares = ", ".join(f"{n} {routed.shares.get(n, 0.0):.0%}" for n in routed.names)
        saved = 1 - routed.gflops / routed.gflops_largest if routed.gflops_largest else 0.0
        self.readout.setText(f"slice {routed.z}: <b>{routed.gflops:.3f}</b> GFLOPs spent vs "
                             f"{routed.gflops_largest:.3f} for {routed.names[-1]} everywhere ({saved:.0%} saved)")
        self.shares.setText(f"patches per model: {shares}")
        info(f"routed slice {routed.z}: {shares}")

    def _legend(self) -> None:
        s = self.hub.session
        if s is None or not s.models:
            self.legend.setText("")
            return
        from learners.unet import count_parameters

        items = [f"<span style='color:{MODEL_COLORS[i % len(MODEL_COLORS)]}'>&#9632;</span> {role} "
                 f"({count_parameters(s.models[role]):,} params)" for i, role in enumerate(sorted(s.models))]
        self.legend.setText("&nbsp;&nbsp;".join(items))
