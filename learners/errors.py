"""The base of every user-facing error, defined in the lowest layer so `learners` can raise it
and the CLI and GUI can catch one type (`napari_paser.errors.PaserInputError` derives from it)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, array, option); the message says what is wrong and how to fix it."""


class CheckpointError(InputError):
    """A checkpoint file that is missing, corrupt, foreign, or carries unsafe (pickled) objects."""
