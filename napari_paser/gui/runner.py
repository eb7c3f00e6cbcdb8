"""The background work of a viewer's PaSeR dock (`JobRunner`): one session job at a time in a napari thread
worker (its progress broadcast to every job bar, cancelled through `stop`), quick read-only previews beside it
(only the latest request of a kind waits), and GUI-thread work split over event-loop turns.

The runner shows nothing itself: the errors of a job, a preview or a GUI-thread step go to the `on_error` its
owner gives it (the hub's notification boundary), so a job never ends in a traceback dialog.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from qtpy.QtCore import QObject, QTimer, Signal

from learners.errors import InputError
from napari_paser.errors import PaserInputError
from napari_paser.memory import release_memory


class JobRunner(QObject):
    """One job at a time in a thread worker, previews beside it, and GUI-thread steps; widgets listen to its
    signals."""

    busy_changed = Signal(bool)
    job_started = Signal(str)  # what the job does: every job bar resets to it
    progress = Signal(object)  # a session Progress event of the running job
    job_finished = Signal(str)  # the final message of the job ("" to keep the last one)

    def __init__(self, on_error: Callable[[Exception], None]) -> None:
        super().__init__()
        self._on_error = on_error
        self.worker = None
        self.stop = threading.Event()
        self._steps: list[Callable[[], None]] = []  # GUI-thread work split over event-loop turns
        self._light: dict[str, object] = {}  # quick previews by kind (not exclusive): their workers
        self._light_next: dict[str, Callable] = {}

    @property
    def busy(self) -> bool:
        return self.worker is not None or bool(self._steps)

    def run(self, job: Callable, on_yield: Callable | None = None, on_return: Callable | None = None,
            on_done: Callable | None = None, what: str = "a job", final: str = ""):
        """Start `job(should_stop)` (a generator or plain function) in a napari thread worker.

        One job at a time (maps, routing and training share f0); the job bars reset to `what` and
        show its progress. User errors raised inside the worker become notifications too.
        `on_done` runs after return, error or abort; `final` is the job bars' last message.
        """
        from napari.qt.threading import create_worker

        if self.busy:
            raise PaserInputError(f"another job is running: wait for it or cancel it before {what or 'this one'}")
        self.stop.clear()
        worker = create_worker(job, self.stop.is_set, _start_thread=False, _connect={"errored": self._errored})
        if hasattr(worker, "yielded"):
            worker.yielded.connect(self.progress.emit)
            if on_yield is not None:
                worker.yielded.connect(on_yield)
        if on_return is not None:
            worker.returned.connect(on_return)
        worker.finished.connect(functools.partial(self._finished, worker, on_done, final))
        self.worker = worker
        self.job_started.emit(what)
        self.busy_changed.emit(True)
        worker.start()
        return worker

    def later(self, steps: list[Callable[[], None]]) -> None:
        """Run GUI-thread `steps` one per event-loop turn (the viewer repaints between them); busy meanwhile."""
        was = self.busy
        self._steps.extend(steps)
        if not was:
            self.busy_changed.emit(True)
        if len(self._steps) == len(steps):
            QTimer.singleShot(0, self._next_step)

    def _next_step(self) -> None:
        if not self._steps:
            return
        step = self._steps.pop(0)
        try:
            step()
        except InputError as exc:
            self._steps.clear()
            self._on_error(exc)
        finally:
            if self._steps:
                QTimer.singleShot(0, self._next_step)
            elif self.worker is None:
                self.busy_changed.emit(False)

    def cancel(self) -> None:
        """Ask the job to stop at its next check (between slices or optimiser steps: well under a second)."""
        self.stop.set()

    def _errored(self, exc: Exception) -> None:
        self.job_finished.emit("failed: " + str(exc))
        self._on_error(exc)

    def _finished(self, worker, on_done, final: str) -> None:
        if self.worker is worker:
            self.worker = None
        release_memory()
        if final:
            self.job_finished.emit(final)
        if on_done is not None:
            on_done()
        if not self.busy:
            self.busy_changed.emit(False)

    def preview(self, job: Callable[[], object], on_return: Callable[[object], None], key: str = "routing") -> None:
        """A quick read-only job (the live routing preview, the edits check) beside the main one; while one
        of a `key` runs, only the latest request of that key waits, so dragging a slider never queues work."""
        from napari.qt.threading import create_worker

        if key in self._light:
            self._light_next[key] = functools.partial(self.preview, job, on_return, key)
            return
        worker = create_worker(job, _start_thread=False, _connect={"errored": self._errored})
        worker.returned.connect(on_return)
        worker.finished.connect(functools.partial(self._preview_done, key))
        self._light[key] = worker
        worker.start()

    def _preview_done(self, key: str) -> None:
        self._light.pop(key, None)
        release_memory()
        pending = self._light_next.pop(key, None)
        if pending is not None:
            pending()

    @property
    def previewing(self) -> bool:
        return bool(self._light)
