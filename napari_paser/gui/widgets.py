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

import importlib
from collections.abc import Iterator, Mapping

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QPushButton, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from napari_paser.gui.help import open_help
from napari_paser.gui.warmup import warm_steps

STEPS = (("Session", "session_step", "SessionWidget"), ("Maps", "maps_step", "MapsWidget"),
         ("Label", "label_step", "LabelWidget"), ("Train", "train_step", "TrainWidget"),
         ("Export", "export_step", "ExportWidget"), ("Volume", "segment_step", "SegmentWidget"))
"""Tab title, module of napari_paser.gui and class of each step, in workflow order."""
WARM_POLL_MS = 50


def step_class(module: str, name: str) -> type:
    return getattr(importlib.import_module(f"napari_paser.gui.{module}"), name)


class Steps(Mapping):
    """The dock's step widgets by tab title; a step not built yet is built when asked for."""

    def __init__(self, dock: PaserWidget) -> None:
        self._dock, self._built = dock, {}

    def __getitem__(self, title: str) -> QWidget:
        if title not in self._built:
            self._dock.build(title)
        return self._built[title]

    def __iter__(self) -> Iterator[str]:
        return iter(t for t, _, _ in STEPS)

    def __len__(self) -> int:
        return len(STEPS)


class PaserWidget(QWidget):
    """The whole workflow in one dock: one tab per step, sharing the viewer's session.

    The first tab is built at once; the others' modules are imported in a background thread meanwhile
    (`warmup.warm_steps`: together a second or more on the GUI thread), and once they are, the tabs are
    built one per event-loop turn. A step asked for sooner waits for that import and is built then."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.tabs = QTabWidget()
        self.steps = Steps(self)
        self._pages: dict[str, QScrollArea] = {}
        for title, _, _ in STEPS:
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            self._pages[title] = scroll
            self.tabs.addTab(scroll, title)
        self.help_button = QPushButton("Help")
        self.help_button.setToolTip("open the user guide's page for this step in the browser")
        self.help_button.clicked.connect(lambda: open_help(self.current_step))
        self.tabs.setCornerWidget(self.help_button)
        QVBoxLayout(self).addWidget(self.tabs)
        self.build(STEPS[0][0])
        self._warm = warm_steps(tuple(f"napari_paser.gui.{module}" for _, module, _ in STEPS[1:]))
        QTimer.singleShot(0, self._build_next)

    def build(self, title: str) -> QWidget:
        """Build step `title`'s widget into its tab (once)."""
        built = self.steps._built
        if title not in built:
            if built:  # a later step: its modules come from the background import
                self._warm.join()
            _, module, name = next(s for s in STEPS if s[0] == title)
            widget = built[title] = step_class(module, name)(self.viewer)
            self._pages[title].setWidget(widget)
        return built[title]

    def _build_next(self) -> None:
        if self._warm.is_alive():
            QTimer.singleShot(WARM_POLL_MS, self._build_next)
            return
        todo = [t for t, _, _ in STEPS if t not in self.steps._built]
        if todo:
            self.build(todo[0])
            if len(todo) > 1:
                QTimer.singleShot(0, self._build_next)

    @property
    def current_step(self) -> str:
        """The title of the step on screen."""
        return STEPS[self.tabs.currentIndex()][0]

    @property
    def hub(self):
        from napari_paser.gui.hub import hub_for

        return hub_for(self.viewer)

    def show_step(self, title: str) -> QWidget:
        """Bring a step's tab to the front (the demo's walkthrough uses it)."""
        widget = self.build(title)
        self.tabs.setCurrentIndex([t for t, _, _ in STEPS].index(title))
        return widget


_CLASSES = {name: (module, name) for _, module, name in STEPS}


def __getattr__(name: str):
    """The step widgets (npe2 `widgets` contributions name them here), imported when first asked for."""
    if name in _CLASSES:
        return step_class(*_CLASSES[name])
    if name == "hub_for":
        from napari_paser.gui.hub import hub_for

        return hub_for
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # noqa: F822 (module __getattr__ provides the step classes)
    "PaserWidget", "SessionWidget", "MapsWidget", "LabelWidget", "TrainWidget", "ExportWidget", "SegmentWidget",
    "hub_for",
]
