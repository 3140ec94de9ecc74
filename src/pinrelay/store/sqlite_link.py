"""The relay's end of the socket to its SQLite writer process (store/sqlite.py), and
the inline commits it makes on the relay's own loop when that is quicker
(docs/DECISIONS.md, entry 67)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Any, cast

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store import sqlite_ops as ops
from pinrelay.store import sqlite_wire as wire
from pinrelay.store.base import CommitObserver, StoreClosed
from pinrelay.store.sqlite_writer import Writer, frame, frames

log = logging.getLogger(__name__)


def _error(value: Any) -> Exception:
    kind, detail, code = value
    if kind == "pinrelay":
        return PinrelayError(detail, ErrorCode[code])
    if kind == "integrity":
        return sqlite3.IntegrityError(detail)
    return StoreClosed(detail)


#: A turn's writes are committed on the loop (see WriterLink._commit_inline) only if
#: they are this few and this small: a chat message, a receipt, an ack; never a
#: batch of pushes, whose commit would hold the loop.
INLINE_MAX_OPS = 8
INLINE_MAX_BYTES = 16 * 1024
#: The writes that may be committed inline: small and quick by construction.
INLINE_OPS = (
    ops.Append,
    ops.AckMany,
    ops.PutUnread,
    ops.DropUnread,
    ops.TouchDevice,
    ops.ContactAction,
)
#: After this many inline commits in a row, the next group goes to the writer
#: process: the inline connection never checkpoints (wal_autocheckpoint=0, so a
#: checkpoint never holds the loop).  The writer copies the WAL on its own while it
#: has no request (sqlite_writer.CHECKPOINT_EVERY_S); should that fall behind, this
#: commit checkpoints the rest, over 4,000 pages.
INLINE_WRITER_EVERY = 1000
#: An inline commit longer than this (the disk stalled: this VM's fdatasync does for
#: 20-200 ms now and then) sends every write to the writer process for
#: INLINE_PAUSE_S, so that a stalling disk holds the loop once, not at every write.
#: (At 5 ms, a busy VM's ordinary jitter kept inline commits paused a third of the
#: time.)
INLINE_SLOW_S = 0.02
INLINE_PAUSE_S = 1.0
_reply_value = msgspec.msgpack.Decoder().decode


class WriterLink(asyncio.Protocol):
    """The relay's end of the socket to its writer process."""

    def __init__(self, observer: CommitObserver | None, inline: Writer | None = None) -> None:
        self.observer = observer
        #: The relay's own write connection, for inline commits (None: never).
        self.inline = inline
        self.inline_paused_until = 0.0
        #: Inline commits since the writer process last committed.
        self.inline_since_writer = 0
        #: Groups committed on the loop (tests and benchmarks read it).
        self.inline_commits = 0
        self.transport: asyncio.Transport | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() syscall each call.
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.seq = 0
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.lost = False
        #: Whether the last commit was fsynced (tests read it).
        self.last_synced = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, op: wire.AnyOp) -> asyncio.Future[Any]:
        if self.lost or self.transport is None:
            raise StoreClosed("store is closed")
        self.seq += 1
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.pending[self.seq] = fut
        # One socket write per turn of the loop for everything asked in that turn.
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(wire.encoder.encode(wire.Request(self.seq, op)))
        return fut

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self._commit_inline(out):
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(frame(r) for r in out))

    def _commit_inline(self, out: list[bytes]) -> bool:
        """Commit ``out`` here, on the loop, when the writer process has nothing in
        hand (so writes keep their order) and the group is small: the same commit,
        fsync included, without the hop to the writer and back, each the wake-up of
        another process (docs/DECISIONS.md, entry 67).  False: the writer's to do."""
        writer = self.inline
        if (
            writer is None
            or len(out) > INLINE_MAX_OPS
            or len(self.pending) != len(out)
            or sum(map(len, out)) > INLINE_MAX_BYTES
            or self.loop.time() < self.inline_paused_until
            or self.inline_since_writer >= INLINE_WRITER_EVERY
        ):
            return False
        try:
            # The ops as the writer would read them: the same decoding, the same types.
            requests = [wire.request_decoder.decode(r) for r in out]
        except msgspec.DecodeError:
            return False  # the writer refuses it as it always did
        # Only the small writes of the chat and push paths: others may be long
        # (sweeps, prunes, a device's deletion); a probe (the store monitor's write
        # check) judges the writer process, and one stuck there keeps every later
        # write behind it, as without inline commits.
        if not all(isinstance(r.op, INLINE_OPS) for r in requests):
            return False
        try:
            done = writer.try_commit([r.op for r in requests])
        except Exception:
            # Nothing was committed (a COMMIT that fails commits nothing): the writer
            # takes these, and inline commits stop for the life of this store.
            log.exception("inline commit failed; every write goes to the writer now")
            self.inline = None
            with contextlib.suppress(sqlite3.Error):
                if writer.conn.in_transaction:
                    writer.conn.execute("ROLLBACK")
            return False
        if done is None:  # the write lock is held elsewhere: the writer waits for it
            return False
        seconds, outcomes = done
        if seconds > INLINE_SLOW_S:
            self.inline_paused_until = self.loop.time() + INLINE_PAUSE_S
        self.inline_commits += 1
        self.inline_since_writer += 1
        self.last_synced = writer.synced
        for request, (ok, value) in zip(requests, outcomes, strict=True):
            fut = self.pending.pop(request.seq, None)
            if fut is None or fut.done():
                continue
            value = _reply_value(wire.encoder.encode(value))  # as an answer brings it
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(_error(value))
        if self.observer is not None:
            self.observer(seconds, len(requests))
        return True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for payload in frames(self.buf):
            reply = wire.reply_decoder.decode(payload)
            if not self.ready.done():
                self.ready.set_result(None)
                continue
            if reply.writes:
                self.inline_since_writer = 0
                self.last_synced = reply.synced
                if self.observer is not None:
                    self.observer(reply.commit_s, reply.writes)
            for answer in reply.answers:
                fut = self.pending.pop(answer.seq, None)
                if fut is None or fut.done():
                    continue
                if answer.ok:
                    fut.set_result(answer.value)
                else:
                    fut.set_exception(_error(answer.value))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        gone = StoreClosed("the store's writer process has ended")
        if not self.ready.done():
            self.ready.set_exception(gone)
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(gone)
