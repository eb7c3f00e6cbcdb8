"""The dock's background work built alone (`gui.runner.JobRunner`, no viewer): a job's progress and result,
one job at a time, a failing job reported to its owner (never raised), a cancel, and GUI-thread steps run
one per event-loop turn in order, the rest dropped after a user error."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("napari")

from napari_paser.errors import PaserInputError  # noqa: E402
from napari_paser.gui.runner import JobRunner  # noqa: E402


def settle(runner: JobRunner, timeout: float = 20) -> None:
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while (runner.busy or runner.previewing) and time.monotonic() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.002)
    QApplication.processEvents()
    assert not runner.busy and not runner.previewing


def test_a_job_reports_progress_and_its_result_and_a_failure_goes_to_the_owner(qtbot):
    errors, events, results, finals, busy = [], [], [], [], []
    runner = JobRunner(on_error=errors.append)
    runner.progress.connect(events.append)
    runner.job_finished.connect(finals.append)
    runner.busy_changed.connect(busy.append)

    def job(should_stop):
        for i in range(3):
            yield i
        return "made"

    runner.run(job, on_return=results.append, what="making", final="made it")
    assert runner.busy
    with pytest.raises(PaserInputError, match="another job is running"):
        runner.run(job, what="a second one")
    settle(runner)
    assert events == [0, 1, 2] and results == ["made"] and finals == ["made it"] and busy == [True, False]
    assert errors == []

    def broken(should_stop):
        raise PaserInputError("the region is not painted")

    runner.run(broken, what="failing")
    settle(runner)
    assert [str(e) for e in errors] == ["the region is not painted"] and finals[-1] == "failed: the region is not painted"

    def endless(should_stop):
        while not should_stop():
            yield None
            time.sleep(0.001)
        return "stopped"

    runner.run(endless, on_return=results.append, what="looping")
    runner.cancel()
    settle(runner)
    assert results[-1] == "stopped"


def test_steps_run_one_per_turn_in_order_and_a_user_error_drops_the_rest(qtbot):
    errors, done = [], []
    runner = JobRunner(on_error=errors.append)

    def fail():
        raise PaserInputError("no session yet")

    runner.later([lambda: done.append(1), lambda: done.append(2)])
    assert runner.busy and done == []  # nothing runs before the event loop turns
    settle(runner)
    assert done == [1, 2] and errors == []
    runner.later([lambda: done.append(3), fail, lambda: done.append(4)])
    settle(runner)
    assert done == [1, 2, 3] and [str(e) for e in errors] == ["no session yet"]
