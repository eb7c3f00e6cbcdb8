"""Progress events of a session's long jobs, for a progress bar and a napari `thread_worker`: the
`Progress` each job generator yields, and `step_progress`, which turns a training generator's
events into them."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from learners.training import EpochReport, StepReport, TrainResult


@dataclass
class Progress:
    """One progress event of a long job, for a progress bar: `done` of `total` units in `stage`
    ("maps", "train", "save", "kept", "propose", "done", "cancelled")."""

    stage: str
    done: int
    total: int
    message: str = ""
    z: int | None = None
    event: StepReport | EpochReport | None = None


def step_progress(gen: Generator, stage: str, done: int, total: int,
                  message: Callable[[StepReport | EpochReport], str]) -> Generator[Progress, None, tuple[TrainResult, int]]:
    """Drive a training generator (`iter_training`), one Progress per event with optimiser steps counted
    from `done` of `total`; return its result and the new count."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value, done
        done += isinstance(event, StepReport)
        yield Progress(stage, done, total, message(event), event=event)
