"""User-facing errors: one exception family whose messages say what is wrong and how to fix it.

`learners.errors.InputError` is the base (defined in the lowest layer so `learners` and
`sampling` raise it too); `PaserInputError` is the application's own. The CLI prints any
`InputError` as one line and exits with status 2, and the GUI turns it into a napari
notification, so every check of user input raises one of these rather than letting numpy or
torch fail deep inside a call. One `except InputError` is the whole boundary.
"""

from __future__ import annotations

from learners.errors import CheckpointError, ConfigError, InputError, ShapeError, VersionError


class PaserInputError(InputError):
    """Bad input from the user (file, array, option); the message is shown to the user as-is."""


__all__ = ["PaserInputError", "InputError", "CheckpointError", "ConfigError", "ShapeError", "VersionError"]
