"""Atomic file writes: a crash or kill at any moment leaves either the old file or the new one.

Lives in `learners` (the lowest layer) so checkpoints and the application's storage share it.
Temporary files are named `.<name>.<random>.tmp` beside their target (`is_temp_name` tells
them apart, so a folder's owner can remove those a kill left behind) and are created with
the normal permissions the umask gives (0644 under umask 022), not mkstemp's 0600, so the
renamed file is readable by the group as any other file the person writes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8,}\.tmp$")  # ours, and mkstemp's of earlier versions


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temporary file of `atomic_path` (left behind only by a kill)."""
    return bool(_TEMP_NAME.match(name))


def _new_temp(target: Path) -> Path:
    """Create an empty, exclusive temporary file beside `target`; mode 0666 less the umask."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {target}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    The temporary file sits in the same folder so `os.replace` is an atomic rename on the same
    file system. On error the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(target)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
