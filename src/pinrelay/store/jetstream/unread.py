"""Read-receipt bookkeeping on the cluster: a KV entry per delivered, unread chat message.

``<bucket_prefix>_unread``, key ``<reader PIN>.<message id>``, value JSON
(:class:`~.records.UnreadRec`: sender, expiry, group).  PINs are 8 hex digits and
message ids 26 Crockford base32 characters, both fit for a key as they are; an id
a client names that is not (``*``, ``>``, dots) is never looked up.

- :meth:`Unreads.put`: the entries of one call in one atomic batch (up to 1,000 a
  batch; nats-server 2.12+, else publishes in flight together), answered once a
  quorum stored them: durable when it returns.  Putting the same (reader, id)
  again writes the same value: idempotent.  Concurrent calls share atomic batches
  (:attr:`Unreads.shared`, the appends' :class:`~.group.GroupCommit`): each member of
  a group acks its copy on its own, so a 1,000-member group's delivered receipts
  would otherwise cost a thousand single publishes, each its own request and
  replicated write.
- Expiry: each entry carries a ``Nats-TTL``, so JetStream removes it by itself
  after its message expired; there is nothing to sweep.  TTLs are whole seconds
  counted from now, and an :class:`~pinrelay.store.base.Unread` has no send time,
  so they come from this store's clock: the time left plus the store's grace.  An
  entry already expired by that clock (a caller whose clock is behind ours, as the
  tests' fixed one; or a message that expired while it was delivered) keeps
  :data:`STALE_TTL_S` rather than going at once: a day of a small entry, against a
  read receipt lost.  :meth:`Unreads.find` decides by ``expires_ms`` and the
  caller's time, so an expired entry is never returned, removed or not.
- :meth:`Unreads.find`: one read per id on the bucket's leader, at most
  :data:`IN_FLIGHT` at once.  A ``read`` follows its delivery by milliseconds, and
  a replica's Direct Get may not have the put yet (DECISIONS 22).
- A read entry (``Store.append``'s ``read``) is put again marked read, with the
  TTL of the expiry the read gave it (24 h at most): ``find`` skips it unless asked
  ``with_read`` (Chat.delivered: a receipt asked for again is known).
- :meth:`Unreads.drop`: delete markers in one atomic batch, each with a 1 s TTL:
  the marker replaces the entry (history 1) and then goes by itself.  A purge per
  id would be a request and a replicated purge each; removing is what JetStream
  does worst (DECISIONS 34).
- :meth:`Unreads.remove_all` (a deleted device): one purge of the reader's keys.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import Unread
from pinrelay.store.jetstream.appends import MAX_ATOMIC_BATCH, Outgoing, send_batch
from pinrelay.store.jetstream.errors import ApiError
from pinrelay.store.jetstream.group import GroupCommit
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN, UnreadRec, json_enc, unread_dec

T = TypeVar("T")

#: TTL of an entry put after its expiry by this store's clock (see the module doc).
STALE_TTL_S = 24 * 3600
#: Longest TTL given: JetStream counts it in nanoseconds (int64: 292 years).
MAX_TTL_S = 10 * 365 * 24 * 3600
#: How long a delete marker stays before JetStream removes it.
MARKER_TTL_S = 1
#: Requests in flight at once for one call.
IN_FLIGHT = 32


def unread_ttl_s(expires_ms: int, now_ms: int, grace_s: int) -> int:
    """The ``Nats-TTL`` of an entry whose message expires at ``expires_ms``."""
    left_ms = expires_ms - now_ms
    if left_ms <= 0:
        return STALE_TTL_S
    return min(math.ceil(left_ms / 1000) + grace_s, MAX_TTL_S)


def unread_key(reader: str, message_id: str) -> str | None:
    """The entry's key, or None if either part is unfit for one."""
    if SAFE_TOKEN.match(reader) and SAFE_TOKEN.match(message_id):
        return f"{reader}.{message_id}"
    return None


async def bounded(calls: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run ``calls`` with at most ``limit`` at once: their results, in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


class Unreads:
    """Put, find and drop unread entries (module doc)."""

    def __init__(
        self, kv: Kv, bucket: Bucket, grace_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.grace_s = grace_s
        self.clock = clock
        #: Many writes in one atomic batch (set by the store's open).
        self.atomic = False
        #: Concurrent puts share atomic batches (None: each call alone).
        self.shared: GroupCommit | None = None

    def share_batches(self) -> None:
        """Let concurrent puts share atomic batches (the store's ``group_commit``)."""
        self.shared = GroupCommit(self.api, self._alone)

    async def put(self, entries: Sequence[Unread], *, read: bool = False) -> None:
        """Store ``entries`` (``read``: marked read, each kept to its expiry)."""
        self.api.check_open()
        now_ms = int(self.clock() * 1000)
        items: dict[str, Outgoing] = {}
        for e in entries:
            key = unread_key(e.reader, e.id)
            if key is None:
                raise PinrelayError(f"unread entry {e.reader}/{e.id!r}", ErrorCode.INVALID)
            if key not in items:
                payload = json_enc.encode(UnreadRec(e.sender, e.expires_ms, e.group, read))
                ttl = unread_ttl_s(e.expires_ms, now_ms, self.grace_s)
                items[key] = Outgoing(
                    len(items), self.bucket.subject(key), payload, {"Nats-TTL": str(ttl)}
                )
        if self.atomic and self.shared is not None and items:
            # One queue: the bucket is one stream.  Entries carry no message id, and
            # writing one twice (a retried batch) writes the same value.
            await self.shared.publish(0, list(items.values()), "", {})
        else:
            await self._publish(list(items.values()), f"write {self.bucket.name}")

    async def _alone(
        self, _part: int, items: list[Outgoing], _nonce: str, _devices: object
    ) -> list[int]:
        """One call's entries by themselves (a group refused, or a call alone)."""
        await self._publish(items, f"write {self.bucket.name}")
        return []

    async def find(
        self, reader: str, ids: Sequence[str], now_ms: int, with_read: bool = False
    ) -> list[Unread]:
        self.api.check_open()
        keys = {i: key for i in ids if (key := unread_key(reader, i)) is not None}

        def read(key: str) -> Callable[[], Awaitable[UnreadRec | None]]:
            async def one() -> UnreadRec | None:
                got = await self.kv.get(self.bucket, key)
                return None if got is None else unread_dec.decode(got.value)

            return one

        found = await bounded([read(key) for key in keys.values()], IN_FLIGHT)
        return [
            Unread(reader, i, rec.sender, rec.expires_ms, rec.group)
            for i, rec in zip(keys, found, strict=True)
            if rec is not None and rec.expires_ms > now_ms and (with_read or not rec.read)
        ]

    async def drop(self, reader: str, ids: Sequence[str]) -> None:
        self.api.check_open()
        headers = {"KV-Operation": "DEL", "Nats-TTL": str(MARKER_TTL_S)}
        keys = dict.fromkeys(key for i in ids if (key := unread_key(reader, i)) is not None)
        items = [Outgoing(n, self.bucket.subject(k), b"", headers) for n, k in enumerate(keys)]
        await self._publish(items, f"remove from {self.bucket.name}")

    async def remove_all(self, reader: str) -> None:
        """Remove every entry of ``reader`` (its device is deleted)."""
        if SAFE_TOKEN.match(reader):
            body = {"filter": self.bucket.subject(f"{reader}.>")}
            what = f"remove from {self.bucket.name}"
            await self.api.request(f"STREAM.PURGE.{self.bucket.stream}", body, what)

    async def _publish(self, items: list[Outgoing], what: str) -> None:
        """Store ``items``: atomic batches where the bucket takes them, else one
        publish each (also for a batch the server refuses)."""
        rest = items
        if self.atomic and len(items) > 1:
            rest = []
            for start in range(0, len(items), MAX_ATOMIC_BATCH):
                chunk = items[start : start + MAX_ATOMIC_BATCH]
                if not await self.api.call(self._batch(chunk), what):
                    rest += chunk

        def publish(item: Outgoing) -> Callable[[], Awaitable[object]]:
            async def op() -> object:
                return await self.api.publish(item.subject, item.payload, item.headers)

            return lambda: self.api.call(op, what)

        await bounded([publish(item) for item in rest], IN_FLIGHT)

    def _batch(self, chunk: list[Outgoing]) -> Callable[[], Awaitable[bool]]:
        async def op() -> bool:
            try:  # a batch id per attempt: writing the same values again is harmless
                await send_batch(self.api, chunk, uuid.uuid4().hex)
            except ApiError as err:
                if err.transient:
                    raise
                return False  # refused (too many batches in flight...): one by one
            return True

        return op
