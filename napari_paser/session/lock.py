"""The lock of a session folder: one process at a time writes a session.

Two processes writing one folder would each commit their own view of session.json and
silently drop the other's accepts, so `Session.create` and `Session.open` take
`<folder>/session.lock`, a small JSON file naming the holder (host, pid, time). Where the
platform has `fcntl`, the file is also held with `flock`, which the kernel drops when the
process dies, so a lock left by a killed process is recognised as stale even if its pid has
been reused; elsewhere a lock is stale when its pid no longer runs. A stale lock on this
host is taken over; a lock from another host cannot be checked and is refused with the
advice to delete it if that host no longer uses the folder.

The hold is per process and counted: several `Session` objects of one process (a reader
and a widget, or a test reopening a folder) share it, and it is released when the last one
closes, is garbage collected, or the interpreter exits.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from napari_paser.errors import PaserInputError

try:
    import fcntl
except ImportError:  # Windows: pid liveness only
    fcntl = None

LOCK_FILE = "session.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds a session folder."""

    host: str
    pid: int
    time: str

    def describe(self) -> str:
        return f"process {self.pid} on host {self.host} (since {self.time})"


class SessionLockedError(PaserInputError):
    """The folder is held by another live process (or one on another host)."""

    def __init__(self, message: str, holder: Holder | None) -> None:
        super().__init__(message)
        self.holder = holder


class FolderNotWritableError(PaserInputError):
    """The lock file cannot be written (a read-only mount, no permission): only viewing is possible."""


@dataclass
class _Hold:
    fd: int
    count: int
    pid: int


_held: dict[str, _Hold] = {}
_guard = threading.Lock()
_commit_guards: dict[str, threading.RLock] = {}


def commit_guard(folder: Path) -> threading.RLock:
    """One lock per folder for every Session object of this process: a commit checks that
    session.json is still what it last saw and writes it, with no other commit in between."""
    with _guard:
        return _commit_guards.setdefault(_key(folder), threading.RLock())


def this_host() -> str:
    return socket.gethostname()


def read_holder(folder: Path) -> Holder | None:
    """The holder named in the folder's lock file, or None (no file, or unreadable)."""
    try:
        return _parse((Path(folder) / LOCK_FILE).read_bytes())
    except OSError:
        return None


def held_here(folder: Path) -> bool:
    """Whether this process holds the folder."""
    with _guard:
        hold = _held.get(_key(folder))
        return hold is not None and hold.pid == os.getpid()


def acquire(folder: Path) -> bool:
    """Hold `folder` for this process; True when this call took the lock (not shared with an earlier hold).

    Raises SessionLockedError naming the holder when another live process holds it.
    """
    key = _key(folder)
    with _guard:
        hold = _held.get(key)
        if hold is not None and hold.pid == os.getpid():
            hold.count += 1
            return False
        fd = _take(Path(folder))
        _held[key] = _Hold(fd, 1, os.getpid())
        return True


def release(folder: Path) -> None:
    """Drop one hold of this process; the last one removes the lock file."""
    key = _key(folder)
    with _guard:
        hold = _held.get(key)
        if hold is None or hold.pid != os.getpid():  # not ours (or inherited by a forked child)
            return
        hold.count -= 1
        if hold.count > 0:
            return
        del _held[key]
        _drop(Path(key), hold.fd)


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


def _take(folder: Path) -> int:
    path = folder / LOCK_FILE
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FolderNotWritableError(
                f"cannot write {path} ({exc.strerror}): the session folder is not writable here; open it read-only "
                "(Session.open(folder, read_only=True)) or copy the folder somewhere writable"
            ) from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                        raise
                    raise _locked(folder, read_holder(folder)) from None
                if not _same_file(fd, path):  # released and removed meanwhile: lock the new file
                    os.close(fd)
                    continue
            current = _parse(_read_fd(fd))
            if current is not None and not _stale(current):
                raise _locked(folder, current)
            data = json.dumps({"host": this_host(), "pid": os.getpid(),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
            os.fsync(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise PaserInputError(f"cannot lock {path}: it keeps changing; try again")


def _stale(holder: Holder) -> bool:
    """A lock whose holder is gone. Only called with the flock held (where there is flock)."""
    if holder.host != this_host():
        return False  # cannot tell whether it runs
    if holder.pid == os.getpid():
        return True  # our own leftover
    if fcntl is not None:
        return True  # a live holder would hold the flock
    return not _alive(holder.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _locked(folder: Path, holder: Holder | None) -> SessionLockedError:
    who = holder.describe() if holder else "another process"
    advice = "close the session there, or open this folder read-only (Session.open(folder, read_only=True)) to view it"
    if holder is not None and holder.host != this_host():
        advice += f"; if no process on {holder.host} uses it any more, delete {folder / LOCK_FILE}"
    return SessionLockedError(f"session {folder} is open in {who}: {advice}", holder)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> Holder | None:
    try:
        raw = json.loads(data.decode("utf-8"))
        return Holder(str(raw["host"]), int(raw["pid"]), str(raw.get("time", "?")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None  # empty or foreign content: nobody we can name


def _drop(folder: Path, fd: int) -> None:
    """Remove the lock file (if it still names us), then let go of the flock."""
    try:
        current = _parse(_read_fd(fd))
        if current is not None and current.pid == os.getpid() and current.host == this_host() \
                and _same_file(fd, folder / LOCK_FILE):
            (folder / LOCK_FILE).unlink(missing_ok=True)
    except OSError:
        pass
    finally:
        os.close(fd)


@atexit.register
def _release_all() -> None:
    with _guard:
        for key, hold in list(_held.items()):
            if hold.pid == os.getpid():
                del _held[key]
                _drop(Path(key), hold.fd)
