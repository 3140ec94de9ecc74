"""Exclusive locks that die with their holder: one relay per data folder.

A lock is an ``flock(LOCK_EX)`` on a small file that holds the holder's pid (for
the error message only; the flock, not the pid, decides).  The kernel drops it when
the last descriptor of that open file closes, so a relay killed with SIGKILL never
leaves a stale lock behind, and no pid is ever trusted after a reboot or a reuse.

Rules:

1. The descriptor is close-on-exec (Python's default), so a child process does not
   inherit the lock by accident; a child that must keep it alive (the SQLite writer,
   a ``nats-server`` started by ``cluster start``) gets it through ``pass_fds``.
   The lock is then released only once the parent and that child have both exited.
2. SQLite's own locking lets two writers take turns on one file; it does not stop
   two relays from each believing they own the file's cursors.  The lock does.
3. ``flock`` locks are per open file, not per process: opening the file again and
   locking it fails even in the process that holds it.  Take a lock once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

#: The lock file a relay holds in its ``--data`` folder.
FOLDER_LOCK = "pinrelay.lock"


class Locked(OSError):
    """Another process holds the lock; its message is one readable line."""

    def __init__(self, message: str, path: Path, pid: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid

    def __str__(self) -> str:
        return str(self.args[0])


class Lock:
    """A held lock: call :meth:`release` (or let the process end)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def fileno(self) -> int:
        """The descriptor, to hand to a child process with ``pass_fds`` (rule 1)."""
        if self.fd is None:
            raise ValueError(f"the lock on {self.path} was released")
        return self.fd

    def record_pid(self, pid: int) -> None:
        """Write ``pid`` as the holder's (when a child holds the lock for us)."""
        fd = self.fileno()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file unlocks it

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


def acquire(path: Path, what: str, hint: str = "", wait_s: float = 0.0) -> Lock:
    """Lock ``path`` (created 0600 if missing) or raise :class:`Locked`.

    ``what`` names the locked thing in the error (``"data folder data"``); ``hint``
    ends it (``"; stop that relay ..."``).  ``wait_s``: keep trying that long (for a
    holder that is known to be on its way out).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        by = f"pid {pid}" if pid else "another process"
        raise Locked(f"{what} is in use by {by} (lock file {path}){hint}", path, pid) from None
    except BaseException:
        os.close(fd)
        raise
    lock = Lock(path, fd)
    lock.record_pid(os.getpid())
    return lock


def holder(path: Path) -> int | None:
    """The pid holding the lock on ``path`` (0 when unknown), or None when it is free.

    A probe: it locks and unlocks at once, so it never blocks and never keeps a lock.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        return None
    finally:
        os.close(fd)
