"""The SQLite engine's writer: a child process of the relay, one per store.

Why a process and not a thread: every SQLite statement releases the GIL, and a
writer thread then waits for a busy event loop to give it back, up to the switch
interval, at every statement.  Measured, that made a group commit of 0.2 ms of
disk time take 1.3 ms, and the writer the bottleneck at half the peak push rate
(docs/DECISIONS.md, "A writer process").  A process has a GIL of its own.

The relay and its writer talk over a socket pair in frames: a 4-byte big-endian
length, then msgpack.  The relay sends :class:`~pinrelay.store.sqlite_wire.Request`
frames; the writer reads everything that has arrived, runs it as one transaction
(should one write fail, the group is run again with a SAVEPOINT per write, so it
fails alone), commits with one fsync (``synchronous=FULL``; a group of acks and
last-seen updates only commits without), and answers the whole group in one
:class:`~pinrelay.store.sqlite_wire.Reply` frame.  While it syncs, the next group
gathers in the socket's buffer: that is the group commit.

It exits when the relay sends ``Stop`` (after committing what came before), when
the socket closes, or, on Linux, as soon as the relay dies (PR_SET_PDEATHSIG), so
a relay killed with SIGKILL leaves nothing behind, as its thread used to.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from pinrelay.core.errors import PinrelayError
from pinrelay.store.sqlite_ops import Op, Stop
from pinrelay.store.sqlite_wire import Answer, Reply, encoder, request_decoder

log = logging.getLogger("pinrelay.store.sqlite_writer")

#: Writes per transaction at most, so one commit never grows without bound.
MAX_GROUP = 512
#: WAL pages after which a commit checkpoints (SQLite's default: 1,000).  The
#: checkpoint runs inside that commit and stalls every write queued behind it for
#: 5-15 ms; four times fewer of them, each about as long (it copies the latest
#: version of each page once, and a busy relay rewrites the same few pages), and the
#: WAL still restarts at 16 MB instead of growing (docs/DECISIONS.md, entry 42).
CHECKPOINT_PAGES = 4000
#: While the relay commits inline (67) its writer sees few writes, and the inline
#: connection never checkpoints: so every CHECKPOINT_EVERY_S in which no request
#: waits, the writer copies the WAL beside the relay's commits (PASSIVE: no write
#: waits), up to CHECKPOINT_PASSES times while the relay adds frames; once all is
#: copied, the next commit starts the WAL over.  Should the relay never leave it a
#: pause, its groups sent here now and then checkpoint in the commit, over 4,000
#: pages (sqlite_link.INLINE_WRITER_EVERY; docs/DECISIONS.md, entry 77).
CHECKPOINT_EVERY_S = 0.5
CHECKPOINT_PASSES = 4
#: As the relay's (relay.py): what the writer imported lives as long as it does, so
#: it is frozen out of collections, and young objects are collected less often.
#: CPython's defaults (700, 10, 10) had collections take ~3 % of the writer's CPU
#: on the chat round trip (bench/RESULTS.md, "Chat CPU per message").
GC_THRESHOLDS = (20_000, 20, 20)
_LENGTH = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def frames(buf: bytearray) -> list[bytearray]:
    """Take the complete frames off the start of ``buf``."""
    out = []
    at = 0
    while len(buf) - at >= 4:
        (size,) = _LENGTH.unpack_from(buf, at)
        if len(buf) - at - 4 < size:
            break
        out.append(buf[at + 4 : at + 4 + size])
        at += 4 + size
    del buf[:at]
    return out


def error_value(exc: BaseException) -> tuple[str, str, str | None]:
    """How a failed write travels back: (kind, detail, error code)."""
    if isinstance(exc, PinrelayError):
        return ("pinrelay", exc.detail, exc.code.name)
    if isinstance(exc, sqlite3.IntegrityError):
        return ("integrity", str(exc), None)
    return ("closed", f"{type(exc).__name__}: {exc}", None)


class Writer:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: Whether the connection's synchronous setting is FULL (connect() sets it).
        self.synced = True
        #: Whether the last checkpoint failed with an error (logged once).
        self.checkpoint_failing = False

    @staticmethod
    def _isolated(conn: sqlite3.Connection, op: Op) -> tuple[bool, Any]:
        conn.execute("SAVEPOINT w")
        try:
            result: tuple[bool, Any] = (True, op.run(conn))
        except Exception as exc:
            conn.execute("ROLLBACK TO w")
            result = (False, error_value(exc))
        conn.execute("RELEASE w")
        return result

    def checkpoint(self) -> bool:
        """Copy the WAL into the database (see CHECKPOINT_EVERY_S); whether all of
        it was copied."""
        try:
            for _ in range(CHECKPOINT_PASSES):
                busy, in_wal, copied = self.conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)"
                ).fetchone()
                if not busy and copied == in_wal:
                    self.checkpoint_failing = False
                    return True
        except sqlite3.OperationalError:
            # Not the writer's to fail for (a full disk fails its commits): the WAL
            # waits for the next try.  Said once, not twice a second.
            if not self.checkpoint_failing:
                log.warning("checkpoint failed", exc_info=True)
            self.checkpoint_failing = True
        return False

    def commit(self, ops: list[Op]) -> tuple[float, list[tuple[bool, Any]]]:
        """Run ``ops`` in one transaction; (seconds, one (ok, value) per op)."""
        return self._commit(ops, begun=False)

    def try_commit(self, ops: list[Op]) -> tuple[float, list[tuple[bool, Any]]] | None:
        """As :meth:`commit`, or None, nothing done, when the write lock is held by
        another connection (for a connection whose busy timeout is 0: the relay's
        own, for inline commits)."""
        try:
            self._synchronous(ops)
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            return None
        return self._commit(ops, begun=True)

    def _synchronous(self, ops: list[Op]) -> None:
        # A group with nothing that must survive a crash commits without fsync: in
        # WAL mode it stays ordered and consistent, and the next durable commit's
        # fsync covers it (docs/DECISIONS.md, "Acks without fsync").
        durable = any(op.durable for op in ops)
        if durable is not self.synced:
            self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self.synced = durable

    def _commit(self, ops: list[Op], begun: bool) -> tuple[float, list[tuple[bool, Any]]]:
        conn = self.conn
        started = time.perf_counter()
        try:
            if not begun:
                self._synchronous(ops)
                conn.execute("BEGIN IMMEDIATE")
            try:
                # Optimistic: writes rarely fail, and a SAVEPOINT each costs statements.
                outcomes: list[tuple[bool, Any]] = [(True, op.run(conn)) for op in ops]
            except Exception:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes = [self._isolated(conn, op) for op in ops]
            conn.execute("COMMIT")
        except Exception as exc:
            log.exception("sqlite commit failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failed = ("closed", f"commit failed: {exc}", None)
            outcomes = [(False, failed)] * len(ops)
        return time.perf_counter() - started, outcomes


def serve(
    sock: socket.socket, writer: Writer, checkpoint_every_s: float = CHECKPOINT_EVERY_S
) -> None:
    """Answer groups of writes until Stop or until the relay's end closes."""
    sock.sendall(frame(encoder.encode(Reply(0.0, 0, True, []))))  # ready
    buf = bytearray()
    # recv_into one buffer: recv(n) allocates (mmap) n bytes each call, then shrinks.
    chunk = bytearray(1 << 20)
    view = memoryview(chunk)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    checkpointed = time.monotonic()
    while True:
        wait = checkpointed + checkpoint_every_s - time.monotonic()
        if not poller.poll(max(0, int(wait * 1000) + 1)):
            writer.checkpoint()
            checkpointed = time.monotonic()
            continue
        n = sock.recv_into(chunk)
        if not n:
            return
        buf += view[:n]
        requests = [request_decoder.decode(f) for f in frames(buf)]
        for start in range(0, len(requests), MAX_GROUP):
            group = requests[start : start + MAX_GROUP]
            stop = next((i for i, r in enumerate(group) if isinstance(r.op, Stop)), None)
            writes = group if stop is None else group[:stop]
            answers: list[Answer] = []
            seconds = 0.0
            if writes:
                seconds, outcomes = writer.commit([r.op for r in writes])
                answers = [
                    Answer(r.seq, ok, value)
                    for r, (ok, value) in zip(writes, outcomes, strict=True)
                ]
            if stop is not None:
                answers.append(Answer(group[stop].seq, True, None))
            sock.sendall(frame(encoder.encode(Reply(seconds, len(writes), writer.synced, answers))))
            if stop is not None:
                return


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the relay died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    fd, path, parent, every_s = int(argv[0]), Path(argv[1]), int(argv[2]), float(argv[3])
    _die_with_parent(parent)
    # Ctrl-C in a terminal reaches the whole process group: the relay decides when
    # its writer stops, after the last write it accepted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from pinrelay.store.sqlite import connect

    sock = socket.socket(fileno=fd)
    conn = connect(path)
    conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        serve(sock, Writer(conn), every_s)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except msgspec.DecodeError:
        log.exception("bad frame from the relay")
        return 2
    finally:
        conn.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
