"""Child processes in their own session, stopped by pid (never by name)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the parent dies without its finalizers (a
    pytest-timeout exit, a SIGKILL), so no server outlives the run.

    Linux only.  The signal follows the *thread* that started the child: start
    such children from a thread that lives as long as they should.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (its own process group, no terminal, so a
    Ctrl-C reaches only the parent), stdin from /dev/null, stdout and stderr
    appended to ``log``.

    ``die_with_parent``: SIGKILL the child when the parent dies (tests, benchmarks);
    not for a child that must outlive its parent (``pinrelay cluster start``).
    ``pass_fds``: descriptors the child inherits (a lock it holds for its life).
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=_die_with_parent if die_with_parent else None,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL by pid (no drain, no flush), and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM by pid; SIGKILL if it has not exited after ``timeout`` s.  Returns the
    exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
    return int(proc.returncode)
