"""Small Qt building blocks shared by the PaSeR widgets (form rows, folder pickers, progress)."""

from __future__ import annotations

from qtpy.QtCore import QObject
from qtpy.QtWidgets import (
    QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget,
)


class PathEdit(QWidget):
    """A line edit with a "..." button opening a folder (or file) dialog."""

    def __init__(self, placeholder: str = "", folder: bool = True, caption: str = "Choose a folder") -> None:
        super().__init__()
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.folder, self.caption = folder, caption
        button = QPushButton("...")
        button.setMaximumWidth(32)
        button.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(button)

    def _browse(self) -> None:
        if self.folder:
            path = QFileDialog.getExistingDirectory(self, self.caption, self.text())
        else:
            path, _ = QFileDialog.getOpenFileName(self, self.caption, self.text())
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt naming)
        self.edit.setText(text)


class JobBar(QWidget):
    """The hub's job as every step shows it: a progress bar that resets at each job's start (busy
    indicator until the first progress event), its message, and a Cancel button."""

    def __init__(self, hub) -> None:
        super().__init__()
        self.hub = hub
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.cancel.clicked.connect(hub.cancel)
        row = QHBoxLayout()
        row.addWidget(self.bar)
        row.addWidget(self.cancel)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(row)
        col.addWidget(self.message)
        hub.job_started.connect(self.started)
        hub.progress.connect(self.progress)
        hub.job_finished.connect(self.finished)
        hub.busy_changed.connect(self.running)

    def started(self, what: str) -> None:
        self.bar.setRange(0, 0)  # busy until the job says how far it is
        self.bar.setValue(0)
        if what:  # "" for a quiet follow-up job: the last job's message stays
            self.message.setText(what + " ...")

    def running(self, on: bool) -> None:
        self.cancel.setEnabled(on)
        if not on and self.bar.maximum() == 0:  # a job without progress events ended
            self.bar.setRange(0, 1)
            self.bar.setValue(1)

    def progress(self, event) -> None:
        """Show a session `Progress` event."""
        if not hasattr(event, "total"):
            return
        self.bar.setRange(0, max(1, int(event.total)))
        self.bar.setValue(min(int(event.done), int(event.total)))
        self.message.setText(event.message)

    def finished(self, message: str) -> None:
        if message:
            self.message.setText(message)


class _Enabler(QObject):
    """Enables its buttons when the hub is idle; a child of the first button, so the connection dies with it."""

    def __init__(self, buttons: tuple[QWidget, ...]) -> None:
        super().__init__(buttons[0])
        self.buttons = buttons

    def update(self, busy: bool) -> None:
        for b in self.buttons:
            b.setEnabled(not busy)


def enable_while_idle(hub, *buttons: QWidget) -> None:
    """Disable `buttons` (those that start a job) while the hub's job runs."""
    hub.busy_changed.connect(_Enabler(buttons).update)


def group(title: str, *widgets: QWidget) -> QGroupBox:
    box = QGroupBox(title)
    col = QVBoxLayout(box)
    for w in widgets:
        col.addWidget(w)
    return box


def hrow(*widgets: QWidget) -> QWidget:
    w = QWidget()
    row = QHBoxLayout(w)
    row.setContentsMargins(0, 0, 0, 0)
    for item in widgets:
        row.addWidget(item)
    return w
