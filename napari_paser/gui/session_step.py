"""Step 1: start a session on an image layer (or open one), choose the classes, get models."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from napari_paser.gui.common import JobBar, PathEdit, enable_while_idle, group, hrow
from napari_paser.gui.hub import guarded, hub_for, info
from napari_paser.errors import PaserInputError
from napari_paser.gui.io import SESSION_KEY
from napari_paser.session.store import DEFAULT_CLASSES
from napari_paser.weights import SHIPPED


class SessionWidget(QWidget):
    """Session and models: which image, which classes, which models."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.layer_box = QComboBox()
        self.classes = QLineEdit(", ".join(DEFAULT_CLASSES))
        self.colors = QLineEdit()
        self.colors.setPlaceholderText("optional: #1f77b4, #ff7f0e, #2ca02c")
        self.region = QSpinBox()
        self.region.setRange(8, 1024)
        self.region.setValue(64)
        self.folder = PathEdit("new session folder (default: beside the working directory)")
        self.copy = QCheckBox("copy the image into the session folder")
        self.copy.setToolTip("an image read from a zarr, OME-Zarr or HDF5 file is read in place (nothing copied, "
                             "the session needs the file where it is); check to keep a copy in the session instead")
        self.start_button = QPushButton("Start session")
        self.open_folder = PathEdit("existing session folder")
        self.open_button = QPushButton("Open session")
        self.run_folder = PathEdit("run folder from `paser train` (f0.pt, f1.pt, f2.pt, policy.pt)")
        self.load_button = QPushButton("Load models")
        self.scratch = {role: QCheckBox(f"{role} ({size})") for role, size in
                        SHIPPED.items()}
        for box in self.scratch.values():  # all three: the router needs a larger model to send patches to
            box.setChecked(True)
        self.scratch["f0"].setEnabled(False)
        self.scratch_button = QPushButton("New models (from the shipped starting weights)")
        self.status = QLabel("no session")
        self.status.setWordWrap(True)
        self.job = JobBar(self.hub)
        self._layout()
        enable_while_idle(self.hub, self.start_button, self.open_button, self.load_button, self.scratch_button)
        self.start_button.clicked.connect(self.start)
        self.open_button.clicked.connect(self.open)
        self.load_button.clicked.connect(self.load_models)
        self.scratch_button.clicked.connect(self.new_models)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        napari_viewer.layers.events.inserted.connect(self._offer_session)
        self.hub.session_changed.connect(self._show_status)
        self.hub.models_changed.connect(self._show_status)
        self.hub.regions_changed.connect(self._show_status)
        self._refresh_layers()

    def _layout(self) -> None:
        form = QWidget()
        rows = QFormLayout(form)
        rows.addRow("image layer", self.layer_box)
        rows.addRow("classes", self.classes)
        rows.addRow("colours", self.colors)
        rows.addRow("region size", self.region)
        rows.addRow("folder", self.folder)
        rows.addRow("", self.copy)
        col = QVBoxLayout(self)
        col.addWidget(group("New session", form, self.start_button))
        col.addWidget(group("Resume", self.open_folder, self.open_button))
        col.addWidget(group("Models", self.run_folder, self.load_button, hrow(*self.scratch.values()),
                            self.scratch_button))
        col.addWidget(self.job)
        col.addWidget(self.status)
        col.addStretch()

    def _refresh_layers(self, *_) -> None:
        from napari.layers import Image

        current = self.layer_box.currentText()
        names = [layer.name for layer in self.viewer.layers
                 if isinstance(layer, Image) and not layer.name.startswith("paser ")]
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)

    def _offer_session(self, event) -> None:
        """A session folder opened with File > Open: fill in "Open session" so its models come too."""
        folder = getattr(event.value, "metadata", {}).get(SESSION_KEY)
        if folder and self.hub.session is None and self.open_folder.text() != folder:
            self.open_folder.setText(folder)
            info(f"{folder} is a PaSeR session: press 'Open session' to resume it with its models and proposals")

    def _split(self, text: str) -> list[str] | None:
        items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
        return items or None

    @guarded
    def start(self, *_) -> None:
        """Create the session in the background (the image is copied into its folder, or read in place from
        its zarr / OME-Zarr / HDF5 file); layers follow."""
        name = self.layer_box.currentText()
        if not name or name not in self.viewer.layers:
            raise PaserInputError("no image layer to label: open an image (File > Open, or File > Open Sample > PaSeR)")
        folder = Path(self.folder.text()) if self.folder.text() else _free_folder(name)

        def ready(session) -> None:
            self.folder.setText(str(folder))
            info(f"session started in {folder}: load models or start from scratch, then compute maps")

        self.hub.start(folder, self.viewer.layers[name], self._split(self.classes.text()),
                       self._split(self.colors.text()), self.region.value(), on_ready=ready,
                       copy=self.copy.isChecked())

    @guarded
    def open(self, *_) -> None:
        """Resume a session folder in the background (its models load there too)."""
        if not self.open_folder.text():
            raise PaserInputError("choose a session folder (one holding session.json) to resume")

        def ready(s) -> None:
            info(f"resumed {s.folder}: {len(s.accepted)} accepted regions, models {', '.join(s.models) or 'none'}")

        self.hub.open(self.open_folder.text(), on_ready=ready)

    @guarded
    def load_models(self, *_) -> None:
        """Load a run folder's models and policies in the background (f2 alone is tens of MB)."""
        s = self.hub.require()
        if not self.run_folder.text():
            raise PaserInputError("choose a run folder written by `paser train` (it holds f0.pt), "
                                  "or start from scratch")
        run = self.run_folder.text()

        def loaded(roles) -> None:
            self.hub.models_changed.emit()
            names = [r for r in roles if "@" not in r]
            knob = "routing shares" if s.bank.knob == "share" else "policies for cost weight \u03bb ="
            bank = f" and {len(s.policy_lambdas)} {knob} " + ", ".join(f"{v:g}" for v in s.policy_lambdas)
            info(f"loaded {', '.join(names)}{bank if s.policy_lambdas else ''}")

        self.hub.run(lambda should_stop: s.load_models(run), on_return=loaded, what=f"loading the models of {run}",
                     final="models loaded")

    @guarded
    def new_models(self, *_) -> None:
        """New models from the package's starting weights, in the background."""
        s = self.hub.require()
        roles = {r: SHIPPED[r] for r, box in self.scratch.items() if box.isChecked()}

        def made(_roles) -> None:
            self.hub.models_changed.emit()
            sources = ", ".join(f"{r} {s.state.models[r]['source']}" for r in roles)
            info(f"new models ({sources}): compute maps, label a few regions and retrain")

        self.hub.run(lambda should_stop: s.new_models(roles), on_return=made, what="building new models",
                     final="new models ready")

    def _show_status(self) -> None:
        s = self.hub.session
        if s is None:
            self.status.setText("no session")
            return
        models = ", ".join(s.models) or "none (load a run or start from scratch)"
        policy = " + routing policy" if s.has_policy else ""
        source = s.state.image.get("source") or "image"
        if s.image_path:
            source += ", read in place"
        self.status.setText(f"{s.folder.name} ({source}, {' x '.join(map(str, s.shape))}): classes "
                            f"{', '.join(s.classes.names)}; models {models}{policy}; {len(s.accepted)} accepted")


def _free_folder(layer_name: str) -> Path:
    """A new folder name for a session on `layer_name`, in the working directory."""
    stem = "paser-session-" + "".join(c if c.isalnum() else "-" for c in layer_name).strip("-")
    folder, n = Path.cwd() / stem, 1
    while folder.exists():
        n += 1
        folder = Path.cwd() / f"{stem}-{n}"
    return folder
