"""The docked widgets of the napari plugin (npe2 `widgets` contributions in napari.yaml).

A thin layer over the headless `Session`: each widget wires buttons and layers to Session
methods through the viewer's `Hub` (`gui.hub`), which holds the session, its layers and
the one background job. The steps of a person's workflow, each also a widget of its own:

1. Session and models (`SessionWidget`)    4. Training and learning curve (`TrainWidget`)
2. Uncertainty and routing (`MapsWidget`)  5. Export (`ExportWidget`)
3. Propose and label (`LabelWidget`)       6. Segment the whole volume (`SegmentWidget`)

`PaserWidget` stacks all six as tabs: one dock for the whole workflow.
"""

from __future__ import annotations

from qtpy.QtWidgets import QPushButton, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from napari_paser.gui.export_step import ExportWidget
from napari_paser.gui.help import open_help
from napari_paser.gui.hub import Hub, hub_for
from napari_paser.gui.label_step import LabelWidget
from napari_paser.gui.maps_step import MapsWidget
from napari_paser.gui.segment_step import SegmentWidget
from napari_paser.gui.session_step import SessionWidget
from napari_paser.gui.train_step import TrainWidget

STEPS = (("Session", SessionWidget), ("Maps", MapsWidget), ("Label", LabelWidget), ("Train", TrainWidget),
         ("Export", ExportWidget), ("Volume", SegmentWidget))


class PaserWidget(QWidget):
    """The whole workflow in one dock: one tab per step, sharing the viewer's session."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.tabs = QTabWidget()
        self.steps: dict[str, QWidget] = {}
        for title, cls in STEPS:
            widget = cls(napari_viewer)
            self.steps[title] = widget
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(widget)
            self.tabs.addTab(scroll, title)
        self.help_button = QPushButton("Help")
        self.help_button.setToolTip("open the user guide's page for this step in the browser")
        self.help_button.clicked.connect(lambda: open_help(self.current_step))
        self.tabs.setCornerWidget(self.help_button)
        QVBoxLayout(self).addWidget(self.tabs)

    @property
    def current_step(self) -> str:
        """The title of the step on screen."""
        return STEPS[self.tabs.currentIndex()][0]

    @property
    def hub(self) -> Hub:
        return hub_for(self.viewer)

    def show_step(self, title: str) -> QWidget:
        """Bring a step's tab to the front (the demo's walkthrough uses it)."""
        self.tabs.setCurrentIndex([t for t, _ in STEPS].index(title))
        return self.steps[title]


__all__ = ["PaserWidget", "SessionWidget", "MapsWidget", "LabelWidget", "TrainWidget", "ExportWidget", "SegmentWidget",
           "hub_for"]
