"""Step 5: export the labeled set (crops + manifest, optionally the whole label volume)."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QPushButton, QVBoxLayout, QWidget

from napari_paser.gui.common import JobBar, PathEdit, enable_while_idle, group, hrow
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
        self.job = JobBar(self.hub)
        self.last_path = None
        col = QVBoxLayout(self)
        col.addWidget(group("Export", self.out, hrow(self.full, self.fmt), self.button, self.job))
        enable_while_idle(self.hub, self.button)
        col.addStretch()
        self.button.clicked.connect(self.export)
        self.hub.session_changed.connect(self._default_out)

    def _default_out(self) -> None:
        s = self.hub.session
        if s is not None and not self.out.text():
            self.out.setText(str(s.folder.parent / f"{s.folder.name}-export"))

    @guarded
    def export(self, *_):
        """Write the export in the background (a full label volume is read slice by slice)."""
        s = self.hub.require()
        if not self.out.text():
            self._default_out()
        out, full, fmt = self.out.text(), self.full.isChecked(), self.fmt.currentText()

        def written(path) -> None:
            self.last_path = path
            info(f"exported {len(s.accepted)} regions to {path} (manifest.csv, manifest.json)")

        self.last_path = None
        return self.hub.run(lambda should_stop: s.export(out, full_volume=full, fmt=fmt), on_return=written,
                            what=f"exporting to {out}", final=f"exported to {out}")
