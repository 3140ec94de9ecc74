"""How messages leave the stream: acks purge a device's subjects, sweeps expired ones.

An ack purges the device's subjects up to the acked sequence (``STREAM.PURGE``
with a filter and ``seq``: everything below it goes, only on those subjects), then
raises the record's ``acked_cursor``.  JetStream has no multi-subject purge, so
``ack_many`` is one purge per device, run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import msgspec

from pinrelay.store.jetstream.api import Api, refused
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.layout import Layout
from pinrelay.store.jetstream.reads import Reader
from pinrelay.store.jetstream.records import DeviceRec

#: Purges in flight at once for one ack_many.
ACK_CONCURRENCY = 32


class Acker:
    """Acks, purges and the expiry sweep."""

    def __init__(
        self, api: Api, layout: Layout, devices: Devices, reader: Reader, sweep_scan: int
    ) -> None:
        self.api = api
        self.layout = layout
        self.devices = devices
        self.reader = reader
        #: Messages one sweep looks at per stream, at most.
        self.sweep_scan = sweep_scan
        self._sweep_from: dict[str, int] = {}

    async def purge(self, pin: str, keep_from: int | None) -> int:
        """Remove ``pin``'s messages below ``keep_from`` (None: all); how many went."""
        body: dict[str, Any] = {"filter": self.layout.filter(pin)}
        if keep_from is not None:
            body["seq"] = keep_from
        resp = await self.api.request(f"STREAM.PURGE.{self.layout.stream_of(pin)}", body, "purge")
        return int(resp.get("purged", 0))

    async def ack(self, pin: str, cursor: int) -> None:
        """See :meth:`pinrelay.store.base.Store.ack`."""
        got = await self.devices.get(pin)
        if got is None:
            return
        if cursor > got.rec.acked_cursor:
            # Keeps every sequence >= cursor + 1 of this device's subjects only.
            await self.purge(pin, cursor + 1)

        def change(r: DeviceRec) -> DeviceRec | None:
            return (
                None
                if r.acked_cursor >= cursor
                else msgspec.structs.replace(r, acked_cursor=cursor)
            )

        await self.devices.update(pin, change)

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        """:meth:`ack` for many devices: one purge per device (the highest cursor wins),
        at most ``ACK_CONCURRENCY`` at a time."""
        self.api.check_open()
        highest: dict[str, int] = {}
        for pin, cursor in acks:
            highest[pin] = max(highest.get(pin, cursor), cursor)
        gate = asyncio.Semaphore(ACK_CONCURRENCY)

        async def one(pin: str, cursor: int) -> None:
            async with gate:
                await self.ack(pin, cursor)

        await asyncio.gather(*(one(p, c) for p, c in highest.items()))

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
                    if await self.api.request_unless(subject, body, "delete", refused) is not None:
                        deleted += 1
                if deleted >= limit or scanned >= self.sweep_scan:
                    break
            else:
                next_from = 0  # reached the end: the next sweep starts from the first
        self._sweep_from[stream] = next_from
        return deleted
