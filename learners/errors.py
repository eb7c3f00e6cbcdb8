"""The user-facing error types of the library, defined in the lowest layer.

`learners` and `sampling` raise these for anything a user can cause (a file, an array, an
option outside its range); the CLI and the GUI catch `InputError` and show its message as
one line (the CLI exits with status 2). `napari_paser.errors.PaserInputError` derives from it,
so one `except InputError` is the whole boundary. Programming errors (a broken invariant)
stay `assert`s and `RuntimeError`s: they are bugs to report, not input to fix.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, array, option); the message says what is wrong and how to fix it."""


class ConfigError(InputError):
    """A setting (size, count, rate, name) outside what the method accepts."""


class ShapeError(InputError):
    """Arrays whose shapes do not fit together or do not fit the method (an image too small for a grid)."""


class CheckpointError(InputError):
    """A checkpoint file that is missing, corrupt, foreign, or carries unsafe (pickled) objects."""


class VersionError(CheckpointError):
    """A file written by a newer napari-paser (checkpoint, session, export): upgrade to read it."""


def newer_version(what: str, path: object, found: object, supported: int) -> VersionError:
    """The one refusal of a file whose format version is newer than this release reads."""
    return VersionError(f"{what} {path} has format version {found}, newer than this napari-paser reads "
                        f"({supported}); upgrade napari-paser to open it")
