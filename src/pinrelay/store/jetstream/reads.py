"""Reading a device's backlog: from the stream leader, or batched Direct Get.

Direct Get on an R3 stream is answered by followers and may lag an acknowledged
publish (issue 5).  Without ``direct_reads`` every read goes to the stream leader
(``STREAM.MSG.GET`` with ``next_by_subj``, one message per request): correct, at
~1 ms per message.  ``direct_reads=True`` (the relays' default) uses batched Direct
Get and trusts a follower's "no more messages" only when it has reached the
device's newest message as known when the read began: what this relay's feed
delivered for a device it follows (:mod:`.feed`), else one leader lookup
(``last_by_subj``); a follower that has not reached it sends the rest of the read,
from its last batch's start, to the leader (counted in ``direct_fallbacks``): that
batch may hold a message a later rollup replaced.  A read longer than one batch
(1,000 messages) may still take an earlier batch from a lagging follower.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

from pinrelay import faults
from pinrelay.core.model import StoredMessage
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.api import Api, not_found
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.layout import Layout
from pinrelay.store.jetstream.records import DeviceRec, Msg, decode_msg, stored

#: Largest batch asked of one Direct Get.
MAX_DIRECT_BATCH = 1000


class Reader:
    """A device's stored messages, in order."""

    def __init__(self, api: Api, layout: Layout, devices: Devices, direct_reads: bool) -> None:
        self.api = api
        self.layout = layout
        self.devices = devices
        self.direct_reads = direct_reads
        #: Direct reads that a lagging follower sent to the leader (for metrics).
        self.direct_fallbacks = 0
        #: The newest cursor of a device known without a request (its feed), or 0.
        self.known: Callable[[str], int] = lambda pin: 0
        #: Acks held in memory and not written yet (:mod:`.acks`): cursor, or 0.
        self.acked: Callable[[str], int] = lambda pin: 0

    def acked_cursor(self, pin: str, rec: DeviceRec) -> int:
        return max(rec.acked_cursor, self.acked(pin))

    async def newest(self, pin: str) -> int:
        """The cursor of ``pin``'s newest stored message (0: none), from the leader."""
        body = {"last_by_subj": self.layout.filter(pin)}
        stream = self.layout.stream_of(pin)
        resp = await self.api.request_unless(f"STREAM.MSG.GET.{stream}", body, "read", not_found)
        return 0 if resp is None else int(resp["message"]["seq"])

    def _guard(self, pin: str, trust_feed: bool) -> Callable[[], Awaitable[int]]:
        """What a direct read of ``pin`` must reach before its "no more" is trusted."""

        async def guard() -> int:
            return (self.known(pin) if trust_feed else 0) or await self.newest(pin)

        return guard

    async def read(self, pin: str, after: int, limit: int, now_ms: int) -> list[StoredMessage]:
        """See :meth:`pinrelay.store.base.Store.read`."""
        if faults.active("read-fail"):
            raise StoreClosed("injected fault: read-fail")
        got = await self.devices.get(pin)
        if got is None or limit <= 0:
            return []
        rec = got.rec
        out: list[StoredMessage] = []
        scan = self.scan(pin, max(after, self.acked_cursor(pin, rec)) + 1, limit)
        async with contextlib.aclosing(scan):
            async for seq, m in scan:
                if m.gen != rec.gen or m.expires_ms <= now_ms:
                    continue
                out.append(stored(pin, seq, m))
                if len(out) >= limit:
                    break
        return out

    async def backlog(self, pin: str, now_ms: int) -> int:
        """See :meth:`pinrelay.store.base.Store.backlog`."""
        got = await self.devices.get(pin)
        if got is None:
            return 0
        rec = got.rec
        n = 0
        async for _, m in self.scan(pin, self.acked_cursor(pin, rec) + 1, trust_feed=False):
            if m.gen == rec.gen and m.expires_ms > now_ms:
                n += 1
        return n

    async def scan(
        self, pin: str, start: int, hint: int = MAX_DIRECT_BATCH, *, trust_feed: bool = True
    ) -> AsyncGenerator[tuple[int, Msg], None]:
        """The device's stored messages from sequence ``start`` on, in order.

        ``trust_feed=False``: complete up to the leader's newest message even on a
        relay following the device (whose feed may lag a push just answered).
        """
        subject, stream = self.layout.filter(pin), self.layout.stream_of(pin)
        guard = self._guard(pin, trust_feed)
        if self.direct_reads:
            while True:
                items, exhausted = await self._direct_batch(
                    stream, subject, start, min(max(hint, 1), MAX_DIRECT_BATCH)
                )
                if exhausted:
                    # A follower's "no more" is only trusted once it has reached the
                    # device's newest message as known now (see the module doc).
                    # One that lags may also still hold messages a newer write
                    # removed (a topic's rollup): its last batch is not used at all,
                    # the leader reads that range instead.
                    last = items[-1][0] if items else start - 1
                    if last >= await guard():
                        for seq, m in items:
                            yield seq, m
                        return
                    self.direct_fallbacks += 1
                    break
                for seq, m in items:
                    yield seq, m
                    start = seq + 1
        scan = self.scan_leader(stream, subject, start)
        async with contextlib.aclosing(scan):
            async for item in scan:
                yield item

    async def scan_leader(
        self, stream: str, subject: str, start: int
    ) -> AsyncGenerator[tuple[int, Msg], None]:
        """One message per request from the stream leader: read-your-write."""
        seq = start
        while True:
            resp = await self.api.request_unless(
                f"STREAM.MSG.GET.{stream}",
                {"seq": seq, "next_by_subj": subject},
                "read",
                not_found,
            )
            if resp is None:
                return
            message = resp["message"]
            got = int(message["seq"])
            decoded = decode_msg(got, base64.b64decode(message.get("data") or b""))
            if decoded is not None:
                yield got, decoded
            seq = got + 1

    async def _direct_batch(
        self, stream: str, subject: str, start: int, batch: int
    ) -> tuple[list[tuple[int, Msg]], bool]:
        """One batched Direct Get: (messages, whether the responder had no more)."""

        async def op() -> tuple[list[tuple[int, Msg]], bool]:
            raw, exhausted = await self.api.direct_batch(stream, subject, start, batch)
            items = [(seq, m) for seq, data in raw if (m := decode_msg(seq, data)) is not None]
            return items, exhausted

        return await self.api.call(op, "direct read")
