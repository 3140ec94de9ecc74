"""Acks, and how messages leave the stream.

Writing an ack is a compare-and-set of the device record (``acked_cursor``, and
``last_cursor`` raised to it, so a cursor handed out stays acceptable once its
messages are gone).  From then on reads and backlogs start after it: acknowledged
messages are never delivered again, whether or not they are still stored.

They are *removed* by JetStream when their ``Nats-TTL`` runs out, in bulk, about
6-14 µs of NATS CPU a message (three nodes); removing one before that, by a purge of
the device's subjects or a delete, costs about 130-230 µs, more than storing it
(``bench.js_removal``; DECISIONS 34).  So a link's acks remove nothing by default;
``purge_acked`` purges the device's subjects below the ack when it is written (and
:meth:`Acker.ack`, the inbox's explicit ack, always does, once per poll).

:meth:`Acker.ack` writes at once (the inbox's HTTP ack).  :meth:`Acker.ack_many`
(links' cumulative acks, coalesced by the relay's AckWriter) keeps the newest
cursor of each device in memory, where reads see it at once, and writes it back
``flush_s`` later, so a device that acks every message costs a write per
``flush_s``, not per message (issue 12; DECISIONS).  A device this relay no longer
follows (its link went away) is written at once.  An ack lost in a crash only means
a redelivery, which the SDK drops (the Store contract allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.api import Api, gone, refused
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.layout import Layout
from pinrelay.store.jetstream.reads import Reader
from pinrelay.store.jetstream.records import DeviceRec

log = logging.getLogger(__name__)

#: Ack writes in flight at once.
ACK_CONCURRENCY = 32
#: How long a followed device's newest ack waits in memory before it is written.
ACK_FLUSH_S = 5.0


class Acker:
    """Acks (held, then written), purges and the expiry sweep."""

    def __init__(
        self,
        api: Api,
        layout: Layout,
        devices: Devices,
        reader: Reader,
        sweep_scan: int,
        flush_s: float = ACK_FLUSH_S,
        *,
        purge_acked: bool = False,
    ) -> None:
        self.api = api
        self.layout = layout
        self.devices = devices
        self.reader = reader
        #: Messages one sweep looks at per stream, at most.
        self.sweep_scan = sweep_scan
        self.flush_s = flush_s
        #: Set by :meth:`close`: no writer starts again.
        self.closed = False
        self.purge_acked = purge_acked
        self._sweep_from: dict[str, int] = {}
        #: Acks held in memory, not written yet: PIN → newest cursor.
        self._held: dict[str, int] = {}
        #: When each held ack was first held (monotonic seconds).
        self._since: dict[str, float] = {}
        #: Held acks to write at once.
        self._soon: set[str] = set()
        self._kick = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        #: Whether this relay follows the device (a link here): set by the feed.
        self.followed: Callable[[str], bool] = lambda pin: False
        reader.acked = self.held

    def held(self, pin: str) -> int:
        """The newest ack of ``pin`` held in memory (0: none)."""
        return self._held.get(pin, 0)

    async def purge(self, pin: str, keep_from: int | None) -> int:
        """Remove ``pin``'s messages below ``keep_from`` (None: all); how many went."""
        body: dict[str, Any] = {"filter": self.layout.filter(pin)}
        if keep_from is not None:
            body["seq"] = keep_from
        resp = await self.api.request(f"STREAM.PURGE.{self.layout.stream_of(pin)}", body, "purge")
        return int(resp.get("purged", 0))

    async def ack(self, pin: str, cursor: int) -> None:
        """See :meth:`pinrelay.store.base.Store.ack`: written now, and purged."""
        await self._write(pin, max(cursor, self._held.get(pin, 0)), purge=True)

    async def _write(self, pin: str, cursor: int, *, purge: bool = False) -> None:
        """The record first, then the purge: a reader never finds messages gone while
        the record still says they are unacknowledged (it would skip nothing, but a
        hello with the acked cursor must stay acceptable)."""
        before = 0

        def change(r: DeviceRec) -> DeviceRec | None:
            nonlocal before
            before = r.acked_cursor
            if r.acked_cursor >= cursor:
                return None
            return msgspec.structs.replace(
                r, acked_cursor=cursor, last_cursor=max(r.last_cursor, cursor)
            )

        rec = await self.devices.update(pin, change)
        if rec is not None and cursor > before and (purge or self.purge_acked):
            # Keeps every sequence >= cursor + 1 of this device's subjects only.
            await self.purge(pin, cursor + 1)
        if self._held.get(pin, 0) <= cursor:
            self._drop(pin)
        elif pin in self._since:
            self._since[pin] = time.monotonic()  # a newer ack waits its own delay

    def forget(self, pin: str) -> None:
        """The device is gone: its held ack with it."""
        self._drop(pin)

    def _drop(self, pin: str) -> None:
        self._held.pop(pin, None)
        self._since.pop(pin, None)
        self._soon.discard(pin)

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        """Hold each device's newest cursor; write it ``flush_s`` later, or at once
        for a device not followed here (see the module doc)."""
        self.api.check_open()
        now = time.monotonic()
        for pin, cursor in acks:
            if cursor <= self._held.get(pin, 0):
                continue
            self._held[pin] = cursor
            self._since.setdefault(pin, now)
            if not self.followed(pin):
                self._soon.add(pin)
        self._start()

    def settle(self, pin: str) -> None:
        """The device is not followed here any more: write its held ack now."""
        if pin in self._held:
            self._soon.add(pin)
            self._start()

    def _start(self) -> None:
        if self.closed:
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_forever())
        self._kick.set()

    def _due(self, now: float) -> list[str]:
        late = [p for p, t in self._since.items() if now - t >= self.flush_s]
        return sorted(self._soon.union(late))

    async def _write_forever(self) -> None:
        while self._held:
            self._kick.clear()
            due = self._due(time.monotonic())
            if not due:
                wait = self.flush_s - (time.monotonic() - min(self._since.values()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), max(wait, 0.01))
                continue
            try:
                await self._write_all(due)
            except StoreClosed:
                if self.closed:
                    return  # closed: what is still held is a redelivery, not a loss
                log.warning("writing acks failed: the store is away (retrying)")
                await asyncio.sleep(min(self.flush_s, 1.0))
            except Exception as exc:
                log.warning("writing acks failed (retrying): %r", exc)
                await asyncio.sleep(min(self.flush_s, 1.0))

    async def _write_all(self, pins: Sequence[str]) -> None:
        gate = asyncio.Semaphore(ACK_CONCURRENCY)

        async def one(pin: str) -> None:
            async with gate:
                cursor = self._held.get(pin)
                if cursor is not None:
                    self._soon.discard(pin)
                    await self._write(pin, cursor)

        await asyncio.gather(*(one(p) for p in pins))

    async def close(self, *, flush: bool) -> None:
        """Stop the writer, after writing every held ack if ``flush`` (the store is
        still connected).  Later acks are not written."""
        try:
            if flush and self._held:
                await self._write_all(sorted(self._held))
        finally:
            self.closed = True
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer

    async def sweep(self, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` messages expired at ``now_ms``; how many went.

        JetStream's per-message TTL removes expired messages by itself (``Nats-TTL``,
        a grace after their expiry); this sweep exists for the contract's logical
        clock and for a backlog the TTL has not reached yet.  It looks at up to
        ``sweep_scan`` messages per call on the leader, resuming where the last call
        stopped, so on a large stream one call covers a window, not everything.
        """
        self.api.check_open()
        deleted = 0
        for part in range(self.layout.partitions):
            if deleted >= limit:
                break
            deleted += await self._sweep_stream(part, now_ms, limit - deleted)
        return deleted

    async def delete(self, keys: Sequence[tuple[str, int]]) -> int:
        """Delete the messages at (pin, cursor): a cursor is its stream's sequence.
        How many were there: the leader's answer, so never a follower's stale view."""
        deleted = 0
        for pin, seq in keys:
            stream = self.layout.stream_of(pin)
            body = {"seq": seq, "no_erase": True}
            subject = f"STREAM.MSG.DELETE.{stream}"
            if await self.api.request_unless(subject, body, "delete", gone) is not None:
                deleted += 1
        return deleted

    async def _sweep_stream(self, part: int, now_ms: int, limit: int) -> int:
        stream = self.layout.stream_name(part)
        info = await self.api.request_unless(f"STREAM.INFO.{stream}", {}, "info", refused)
        state = (info or {}).get("state", {})
        first, last_seq = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
        resume = self._sweep_from.get(stream, 0)
        start = resume if first <= resume <= last_seq else first
        deleted = scanned = 0
        next_from = 0
        scan = self.reader.scan_leader(stream, f"{self.layout.part_prefix(part)}.>", start)
        async with contextlib.aclosing(scan):
            async for seq, m in scan:
                scanned += 1
                next_from = seq + 1
                if m.expires_ms <= now_ms:
                    body = {"seq": seq, "no_erase": True}
                    subject = f"STREAM.MSG.DELETE.{stream}"
                    if await self.api.request_unless(subject, body, "delete", gone) is not None:
                        deleted += 1
                if deleted >= limit or scanned >= self.sweep_scan:
                    break
            else:
                next_from = 0  # reached the end: the next sweep starts from the first
        self._sweep_from[stream] = next_from
        return deleted
