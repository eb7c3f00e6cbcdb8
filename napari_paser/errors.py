"""User-facing errors: one exception family whose messages say what is wrong and how to fix it.

`learners.errors.InputError` is the base (defined in the lowest layer so `learners` and
`sampling` raise it too); `PaserInputError` is the application's own. The CLI prints any
`InputError` as one line and exits with status 2, and the GUI turns it into a napari
notification, so every check of user input raises one of these rather than letting numpy or
torch fail deep inside a call. One `except InputError` is the whole boundary.
"""

from __future__ import annotations

import errno

from learners.errors import CheckpointError, ConfigError, InputError, ShapeError, VersionError


class PaserInputError(InputError):
    """Bad input from the user (file, array, option); the message is shown to the user as-is."""


_OS_HINTS = {
    errno.EACCES: "you may not write there: choose a folder you own",
    errno.EPERM: "the operation is not permitted there: choose a folder you own",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EEXIST: "it already exists: choose a new path, or remove it first",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "it is a folder, not a file: give a file path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOSPC: "the disk is full: free space or write elsewhere",
    errno.ENAMETOOLONG: "the path is too long: shorten it",
}


def os_error_line(exc: OSError) -> str:
    """One line for an OS error on a path: which path, what the system said, what to do."""
    path = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno, "check the path and its permissions")
    where = f"{path}: " if path else ""
    return f"{where}{reason} ({hint})"


__all__ = ["PaserInputError", "os_error_line", "InputError", "CheckpointError", "ConfigError", "ShapeError", "VersionError"]
