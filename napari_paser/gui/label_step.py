"""Step 3: propose regions, visit them one by one, paint, accept (with partial-region confirmation)."""

from __future__ import annotations

from napari.layers import Labels
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QMessageBox, QPushButton, QSpinBox, QVBoxLayout, QWidget

from napari_paser.gui.common import PathEdit, group, hrow
from napari_paser.gui.hub import LABELS, guarded, hub_for, info
from napari_paser.errors import PaserInputError
from napari_paser.session.core import SAMPLERS, PartialRegionError


def ask_partial(parent: QWidget, message: str) -> bool:
    """Ask whether to accept regions with unpainted pixels (they stay unlabeled)."""
    answer = QMessageBox.question(parent, "Accept a partly painted region?", message,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


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
        self.dqn = PathEdit("DQN agent .pt (from `paser al train-dqn`)", folder=False, caption="Choose a DQN agent")
        self.propose_button = QPushButton("Propose")
        self.next_button = QPushButton("Next")
        self.accept_button = QPushButton("Accept region")
        self.painted_button = QPushButton("Accept painted outside proposals")
        self.import_button = QPushButton("Copy selected labels layer into the session")
        self.where = QLabel("no proposals yet")
        self.where.setWordWrap(True)
        self._layout()
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
        col = QVBoxLayout(self)
        col.addWidget(group("Propose", form, self.propose_button))
        col.addWidget(group("Label", hrow(self.next_button, self.accept_button), self.painted_button,
                            self.import_button, self.where))
        col.addStretch()

    def _reset(self) -> None:
        self.current = None
        self.where.setText("no proposals yet")

    @guarded
    def propose(self, *_) -> None:
        s = self.hub.require()
        options = {}
        if self.sampler.currentText() == "dqn":
            if not self.dqn.text():
                raise PaserInputError("the DQN sampler needs a trained agent: choose its .pt file (paser al train-dqn)")
            options["dqn_checkpoint"] = self.dqn.text()
        proposals = s.propose(self.k.value(), self.sampler.currentText(), self.seed.value(), **options)
        self.hub.refresh_regions()
        self.current = None
        info(f"{len(proposals)} regions proposed by {self.sampler.currentText()}: press Next, paint, Accept")
        self.next()

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
        self.current = prop
        self.hub.go_to(prop.z, prop.y0, prop.x0, prop.h, prop.w)
        self.hub.select("paser labels")
        self.where.setText(f"proposal {prop.rank} of {len(s.proposals)}: region {prop.region_id}, slice {prop.z}, "
                           f"y {prop.y0}, x {prop.x0} ({prop.h}x{prop.w}); {len(s.pending_proposals)} pending")

    @guarded
    def accept(self, *_) -> None:
        """Accept the proposal on screen; a partly painted one asks for confirmation first."""
        s = self.hub.require()
        if self.current is None:
            raise PaserInputError("no proposal on screen: press Propose, then Next")
        rid = self.current.region_id
        try:
            s.accept(rid)
        except PartialRegionError as exc:
            if not self.confirm(str(exc)):
                return
            s.accept(rid, confirm_partial=True)
        self._accepted(1, f"region {rid}")

    @guarded
    def accept_painted(self, *_) -> None:
        """Accept every region painted outside the accepted set (any slice)."""
        s = self.hub.require()
        try:
            records = s.accept_painted()
        except PartialRegionError as exc:
            if not self.confirm(str(exc)):
                return
            records = s.accept_painted(confirm_partial=True)
        self._accepted(len(records), f"{len(records)} painted regions")

    @guarded
    def import_selected(self, *_) -> None:
        """Copy labels painted (or opened) in another Labels layer into the session's canvas, so
        they can be accepted; values follow the layer convention (0 = not labeled, class k = k + 1)."""
        s = self.hub.require()
        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Labels) or layer.name == LABELS:
            raise PaserInputError("select the Labels layer to copy (not 'paser labels'), then press the button again")
        s.sync_labels(layer.data)
        self.viewer.layers[LABELS].refresh()
        info(f"copied '{layer.name}' into the session canvas: press 'Accept painted outside proposals' to keep it")

    def _accepted(self, n: int, what: str) -> None:
        s = self.hub.require()
        self.hub.refresh_regions()
        self.hub.accepted.emit(n)
        info(f"accepted {what} ({len(s.accepted)} in the labeled set, saved)")
        if s.pending_proposals:
            self.next()
        else:
            self.current = None
            self.where.setText("all proposals accepted: retrain, then propose again")
