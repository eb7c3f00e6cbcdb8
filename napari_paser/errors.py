"""User-facing errors: one exception type whose message says what is wrong and how to fix it.

The CLI prints these without a traceback and the GUI turns them into napari notifications,
so every check of user input raises `PaserInputError` rather than letting numpy or torch fail
deep inside a call. It derives from `learners.errors.InputError` so one `except` catches the
errors of both layers.
"""

from __future__ import annotations

from learners.errors import CheckpointError, InputError


class PaserInputError(InputError):
    """Bad input from the user (file, array, option); the message is shown to the user as-is."""


__all__ = ["PaserInputError", "InputError", "CheckpointError"]
