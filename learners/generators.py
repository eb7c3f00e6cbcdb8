"""Running the library's progress generators to their end.

Long jobs (training, policy training, fine-tuning) are generators that yield progress events
and return their result, so a GUI worker, a CLI progress bar and a plain call share one loop.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")


def drain(generator: Generator[Any, Any, R], on_event: Callable[[Any], None] | None = None) -> R:
    """Run `generator` to the end, passing every yielded event to `on_event`; return its return value."""
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def collect(generator: Generator[Any, Any, R]) -> tuple[list, R]:
    """Run `generator` to the end: (every event it yielded, its return value), for tests and
    scripts that look at the events."""
    events: list = []
    return events, drain(generator, events.append)
