"""Appending: a device's messages published to its stream, in order, exactly once.

Headers sent with a publish are built here and only here: a caller's headers are
never forwarded (``Nats-Rollup: all`` from anyone would wipe the stream).

- ``Nats-Msg-Id`` is ``<nonce>.<index in the append>``, not the message id: one
  append retries its own publishes safely (JetStream answers a duplicate with the
  first sequence), an idempotent retry reuses the first attempt's nonce, and two
  separate appends of the same message are two messages, as the contract says.
  A message with a ``dedup`` name (a receipt) has that name as its id instead: a
  second append of it within the stream's duplicate window (2 min) stores nothing
  and answers it as :data:`~pinrelay.store.base.RECEIPT_STORED` (a relay that died
  between a receipt and its unread entry, chat.py).
- ``Nats-TTL`` (whole seconds, at least 1) only lets JetStream collect a message;
  the reader decides expiry by the payload's ``expires_ms``.
- With ``allow_atomic`` (nats-server 2.12+) up to 1,000 messages go in one atomic
  batch publish (all stored or none); a longer batch is several atomic batches,
  each durable on its own, and a batch is atomic within each partition, not across
  them.  Without it (an older server) messages are published one by one.
- Concurrent appends share atomic batches (group commit, :mod:`.group`) when the
  store sets :attr:`Appender.grouped`; :meth:`Appender.publish_part` is an
  append's partition published alone, which the group falls back to.
- A tenant's append (``tenant``, the API's pushes) reaches only its devices and those
  that granted it (core/tenants.py ``may_reach``), judged on the device records the
  append reads anyway (cached, :mod:`.devices`): no request more per push.  Any
  other message is UNKNOWN_DEVICE, as for a PIN with no device.  The relay's own
  callers (chat, receipts, contact notices: :meth:`Appender.append_known`) pass none.
- Nothing else is written per message: no device record (issue 12).  A device's
  newest cursor is read from the stream when needed (``Reader.newest``).  A chat
  message brings its expiry schedule into the same batch, right after it, and a
  delivered receipt the cancel of that schedule (:mod:`.expiry`): items with
  position :data:`AUX`, which have no result of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from pinrelay.core.model import TOPIC_RE, NewMessage
from pinrelay.core.tenants import may_reach
from pinrelay.store.base import (
    RECEIPT_STORED,
    UNKNOWN_DEVICE,
    AppendResult,
    Rejected,
    StoreClosed,
)
from pinrelay.store.jetstream import expiry
from pinrelay.store.jetstream.api import Api
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.errors import ApiError
from pinrelay.store.jetstream.layout import Layout
from pinrelay.store.jetstream.reads import Reader
from pinrelay.store.jetstream.records import DeviceRec, Msg, msg_enc

log = logging.getLogger(__name__)

#: The server's limit on one atomic batch.
MAX_ATOMIC_BATCH = 1000
#: The position of an item that is not a message of the append (:mod:`.expiry`).
AUX = -1
#: The "sequence" of a named message (``dedup``) stored by an earlier append.
STORED_BEFORE = 0


class Outgoing(NamedTuple):
    """One message ready to publish: its position in the append, subject, payload,
    headers, and the partition (stream) it goes to."""

    position: int
    subject: str
    payload: bytes
    headers: dict[str, str]
    part: int = 0
    #: Its id is a message's ``dedup`` name (or derived from one), not the append's.
    named: bool = False


#: Publishes one partition's messages of an append: (partition, messages, nonce,
#: their devices) -> one sequence per message (:data:`STORED_BEFORE` for a named
#: message stored by an earlier append).
PublishPart = Callable[[int, list[Outgoing], str, dict[str, DeviceRec]], Awaitable[list[int]]]


def ttl_seconds(m: NewMessage, grace_s: int) -> int:
    """JetStream's TTL for ``m``: whole seconds, at least 1, never shorter than its life."""
    life_ms = max(0, m.expires_at_ms - m.sent_at_ms)
    return max(1, math.ceil(life_ms / 1000)) + grace_s


def atomic_chunks(outgoing: list[Outgoing]) -> list[tuple[int, list[Outgoing]]]:
    """Split a batch into atomic batches the server takes: (index of the first, batch).

    At most 1,000 messages each, and a topic subject at most once per batch: the
    server refuses ("batch rollup sub invalid") a batch that rolls up a subject it
    also wrote.  A batch that repeats a topic of one device is therefore stored as
    several atomic batches, each durable on its own, in order.  An :data:`AUX` item
    stays in the batch of the message before it.
    """
    chunks: list[tuple[int, list[Outgoing]]] = []
    current: list[Outgoing] = []
    rolled: set[str] = set()
    start = 0
    for n, item in enumerate(outgoing):
        rollup = "Nats-Rollup" in item.headers
        repeat = rollup and item.subject in rolled
        # Room for the message and the aux item that follows it.
        room = MAX_ATOMIC_BATCH - (n + 1 < len(outgoing) and outgoing[n + 1].position == AUX)
        full = len(current) >= room and item.position != AUX
        if current and (full or repeat):
            chunks.append((start, current))
            current, rolled, start = [], set(), n
        current.append(item)
        if rollup:
            rolled.add(item.subject)
    if current:
        chunks.append((start, current))
    return chunks


async def send_batch(api: Api, chunk: list[Outgoing], batch_id: str) -> dict[str, Any]:
    """Send ``chunk`` as one atomic batch: the commit's answer (ApiError if refused)."""
    last = len(chunk)
    for n, item in enumerate(chunk, 1):
        hdrs = {**item.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
        if n < last:
            await api.send(item.subject, item.payload, hdrs)
        else:
            hdrs["Nats-Batch-Commit"] = "1"
            return await api.publish(item.subject, item.payload, hdrs)
    raise ValueError("an empty batch")


class Appender:
    """Publishes an append's messages."""

    def __init__(
        self, api: Api, layout: Layout, devices: Devices, reader: Reader, ttl_grace_s: int
    ) -> None:
        self.api = api
        self.layout = layout
        self.devices = devices
        self.reader = reader
        self.ttl_grace_s = ttl_grace_s
        #: Atomic batch publish, when every stream takes it (set by the store's open).
        self.atomic = False
        #: Group commit's publish (:class:`.group.GroupCommit`), set by the store;
        #: None: each append publishes alone.
        self.grouped: PublishPart | None = None
        #: Chat messages get expiry schedules (:mod:`.expiry`; set by the store's open).
        self.expiry = False

    async def append(
        self, messages: Sequence[NewMessage | Rejected], nonce: str, tenant: str | None = None
    ) -> list[AppendResult]:
        """Publish ``messages`` with ids under ``nonce``: one result per message;
        ``tenant``: only to devices it may reach (module doc)."""
        pins = sorted({m.pin for m in messages if isinstance(m, NewMessage)})
        found = await asyncio.gather(*(self.devices.get(p) for p in pins))
        devices = {p: got.rec for p, got in zip(pins, found, strict=True) if got is not None}
        return await self.append_known(messages, nonce, devices, tenant)

    async def append_known(
        self,
        messages: Sequence[NewMessage | Rejected],
        nonce: str,
        devices: dict[str, DeviceRec],
        tenant: str | None = None,
    ) -> list[AppendResult]:
        """:meth:`append` to devices whose records the caller read (a message to a
        PIN not in ``devices``, or one ``tenant`` may not reach, is rejected as
        unknown)."""
        results: list[AppendResult | None] = []
        outgoing: list[Outgoing] = []
        for i, m in enumerate(messages):
            if isinstance(m, Rejected):
                results.append(AppendResult(pin=m.pin, id=m.id, reason=m.reason))
                continue
            rec = devices.get(m.pin)
            if rec is None or (
                tenant is not None and not may_reach(tenant, rec.tenant, rec.grants)
            ):
                results.append(AppendResult(pin=m.pin, id=m.id, reason=UNKNOWN_DEVICE))
                continue
            if m.topic is not None and not TOPIC_RE.match(m.topic):
                results.append(AppendResult(pin=m.pin, id=m.id, reason="invalid topic"))
                continue
            results.append(None)
            outgoing += self._outgoing(i, m, rec, nonce)

        seq_of = await self.publish(outgoing, nonce, devices)

        for i, seq in seq_of.items():
            if i == AUX:
                continue
            m = messages[i]
            assert isinstance(m, NewMessage)
            if seq == STORED_BEFORE:
                results[i] = AppendResult(pin=m.pin, id=m.id, reason=RECEIPT_STORED)
            else:
                results[i] = AppendResult(
                    pin=m.pin, id=m.id, cursor=seq, expires_ms=m.expires_at_ms
                )
        return [r for r in results if r is not None]

    async def publish(
        self, outgoing: list[Outgoing], nonce: str, devices: dict[str, DeviceRec]
    ) -> dict[int, int]:
        """Publish an append's messages: {position: sequence} (:data:`AUX` items
        share one key, to be ignored; :data:`STORED_BEFORE` for a named message stored
        by an earlier append)."""
        seq_of: dict[int, int] = {}
        if not self.atomic:
            for item in outgoing:
                seq_of[item.position] = await self._publish_one(item)
            return seq_of
        # An atomic batch goes to one stream: one group per partition, each in the
        # order given (so per device).  A partition with aux items goes first: a
        # receipt's cancel is stored before a receipt of another partition (.expiry).
        parts: dict[int, list[Outgoing]] = {}
        for item in outgoing:
            parts.setdefault(item.part, []).append(item)
        publish = self.grouped or self.publish_part

        def order(part: tuple[int, list[Outgoing]]) -> tuple[bool, int]:
            return all(i.position != AUX for i in part[1]), part[0]

        for part, items in sorted(parts.items(), key=order):
            seqs = await publish(part, items, nonce, devices)
            seq_of.update(zip((item.position for item in items), seqs, strict=True))
        return seq_of

    async def publish_part(
        self, part: int, items: list[Outgoing], nonce: str, devices: dict[str, DeviceRec]
    ) -> list[int]:
        """One partition's messages of an append, alone: atomic chunks whose batch ids
        come from ``nonce``, so a retry of the append finds what was committed."""
        seqs: list[int] = []
        for start, chunk in atomic_chunks(items):
            if len(chunk) == 1:
                seqs.append(await self._publish_one(chunk[0]))
                continue
            batch_id = f"{nonce}-{start}" if part == 0 else f"{nonce}-{part}-{start}"
            seqs += await self._publish_atomic(chunk, batch_id, devices)
        return seqs

    async def decoy(self, like: NewMessage, nonce: str) -> list[AppendResult]:
        """Publish what ``like`` would cost, where nothing reads it: no results.

        ``like``'s payload (of no device's gen) on :meth:`.layout.Layout.decoy_subject`
        in ``like.pin``'s partition: no device's subject (no read or purge of a
        device sees it), but followed by the feed like a message, so every relay gets
        it as it would a notice and drops it; gone after 1 s (TTL).  Published as a
        message is (group commit included).  An invitation that tells nobody publishes
        one, so that it costs what one that tells does (:mod:`.contacts`).
        """
        origin = f"{nonce}.0"
        item = Outgoing(
            AUX,
            self.layout.decoy_subject(like.pin),
            _payload(like, "", origin),
            {"Nats-Msg-Id": origin, "Nats-TTL": "1"},
            self.layout.partition(like.pin),
        )
        await self.publish([item], nonce, {})
        return []

    def _outgoing(self, i: int, m: NewMessage, rec: DeviceRec, nonce: str) -> list[Outgoing]:
        """The message's publish, and its expiry schedule or cancel (.expiry)."""
        named = m.dedup is not None
        origin = m.dedup or f"{nonce}.{i}"
        payload = _payload(m, rec.gen, origin)
        # Built here, never from a caller: see the module docstring.
        ttl = str(ttl_seconds(m, self.ttl_grace_s))
        headers = {"Nats-Msg-Id": origin, "Nats-TTL": ttl}
        if m.topic is not None:
            headers["Nats-Rollup"] = "sub"
        subject = self.layout.subject(m.pin, m.topic)
        part = self.layout.partition(m.pin)
        items = [Outgoing(i, subject, payload, headers, part, named)]
        if not self.expiry:
            return items
        if m.kind == "chat" and m.sender is not None:
            try:
                sched, data, hdrs = expiry.schedule(self.layout, m, f"{origin}.x", ttl)
            except ValueError:
                log.warning("chat %r for %s gets no expiry schedule", m.id, m.pin)
            else:
                items.append(Outgoing(AUX, sched, data, hdrs, part, named))
        elif (stop := expiry.cancel(self.layout, m)) is not None:
            sched, hdrs = stop
            hdrs["Nats-Msg-Id"] = f"{origin}.x"
            assert m.sender is not None  # expiry.cancel checked
            items.append(Outgoing(AUX, sched, b"", hdrs, self.layout.partition(m.sender), named))
        return items

    async def _publish_one(self, item: Outgoing, *, expect_duplicate: bool = False) -> int:
        async def op() -> int:
            resp = await self.api.publish(item.subject, item.payload, item.headers)
            # A retry after a lost acknowledgement answers duplicate=true with the
            # original sequence: stored once, and we learn where.
            if expect_duplicate and not resp.get("duplicate"):
                log.error("a batch thought stored was stored again at %s", resp["seq"])
            if item.named and resp.get("duplicate"):
                # Stored before under its name, maybe by this very append whose
                # answer was lost: either way it is stored, and the feed tells.
                return STORED_BEFORE
            return int(resp["seq"])

        return await self.api.call(op, "publish")

    async def _publish_atomic(
        self, chunk: list[Outgoing], batch_id: str, devices: dict[str, DeviceRec]
    ) -> list[int]:
        last = len(chunk)

        async def op() -> list[int]:
            try:
                resp = await send_batch(self.api, chunk, batch_id)
            except ApiError as err:
                if err.batch_duplicate:
                    if any(item.named for item in chunk):
                        return await self._publish_named(chunk)
                    # An earlier attempt was committed, its acknowledgement lost.
                    return await self._find_batch(chunk, devices)
                raise
            top, count = int(resp["seq"]), int(resp.get("count", last))
            if count != last:
                raise StoreClosed(f"atomic batch stored {count} of {last}")
            return list(range(top - last + 1, top + 1))

        return await self.api.call(op, "atomic publish")

    async def _publish_named(self, chunk: list[Outgoing]) -> list[int]:
        """A batch refused for a named message stored before (maybe not all of them):
        one by one, each stored or answered :data:`STORED_BEFORE`.  Receipts'
        cancels go first, as across partitions (:mod:`.expiry`): a crash in between
        then costs a delivered receipt (the ack comes again), never a failed one for
        a delivered chat.  Anything else keeps its order (a schedule after its chat)."""
        first = sorted(range(len(chunk)), key=lambda k: not _is_cancel(chunk[k]))
        seqs = [STORED_BEFORE] * len(chunk)
        for k in first:
            seqs[k] = await self._publish_one(chunk[k])
        return seqs

    async def _find_batch(self, chunk: list[Outgoing], devices: dict[str, DeviceRec]) -> list[int]:
        """Sequences of a batch already committed: an atomic batch is contiguous."""
        origins = {item.headers["Nats-Msg-Id"]: k for k, item in enumerate(chunk)}
        pins = {self.layout.pin_of(item.subject) for item in chunk if item.position != AUX}
        for pin in sorted(pins):
            rec = devices[pin]
            scan = self.reader.scan_leader(
                self.layout.stream_of(pin), self.layout.filter(pin), rec.acked_cursor + 1
            )
            async with contextlib.aclosing(scan):
                async for seq, m in scan:
                    k = origins.get(m.origin)
                    if k is not None:
                        first = seq - k
                        return list(range(first, first + len(chunk)))
        # Not found after the acked cursor: acked (and purged, by the inbox or
        # --purge-acked), or expired.  Each message of the batch
        # was registered under its Nats-Msg-Id, and a lone publish with that id is
        # answered duplicate=true with its sequence and stores nothing.
        return [await self._publish_one(item, expect_duplicate=True) for item in chunk]


def _is_cancel(item: Outgoing) -> bool:
    """A named message's aux item: a receipt's cancel of its chat's schedule."""
    return item.named and item.position == AUX


def _payload(m: NewMessage, gen: str, origin: str) -> bytes:
    return msg_enc.encode(
        Msg(
            m.id,
            m.data,
            m.topic,
            m.urgency,
            m.sent_at_ms,
            m.expires_at_ms,
            m.kind,
            m.sender,
            gen,
            origin,
        )
    )
