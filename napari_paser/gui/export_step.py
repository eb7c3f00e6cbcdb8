"""Step 5: export the labeled set (crops + manifest, optionally the whole label volume)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QPushButton, QVBoxLayout, QWidget

from napari_paser.gui.common import PathEdit, group, hrow
from napari_paser.gui.hub import guarded, hub_for, info
from napari_paser.data.export import FORMATS


class ExportWidget(QWidget):
    """Export: a new folder (or a previous export, replaced) read back by `paser` and other tools."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.out = PathEdit("export folder (new, or a previous export)")
        self.full = QCheckBox("full label volume")
        self.fmt = QComboBox()
        self.fmt.addItems(list(FORMATS))
        self.button = QPushButton("Export labeled set")
        col = QVBoxLayout(self)
        col.addWidget(group("Export", self.out, hrow(self.full, self.fmt), self.button))
        col.addStretch()
        self.button.clicked.connect(self.export)
        self.hub.session_changed.connect(self._default_out)

    def _default_out(self) -> None:
        s = self.hub.session
        if s is not None and not self.out.text():
            self.out.setText(str(s.folder.parent / f"{s.folder.name}-export"))

    @guarded
    def export(self, *_):
        s = self.hub.require()
        if not self.out.text():
            self._default_out()
        path = s.export(self.out.text(), full_volume=self.full.isChecked(), fmt=self.fmt.currentText())
        info(f"exported {len(s.accepted)} regions to {path} (manifest.csv, manifest.json)")
        return path
