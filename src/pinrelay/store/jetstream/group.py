"""Group commit: concurrent appends share atomic batch publishes (issue 12).

A single push published alone costs a request, a reply and a stream proposal of
its own.  Here, while one publish to a partition's stream is in flight, later
appends to that partition wait; when it is done, the waiting ones go out together
as one atomic batch (at most 1,000 messages), and each caller gets its own
sequences.  The SQLite writer does the same with its transactions.

What stays as it was:

- Each message keeps its own ``Nats-Msg-Id`` (``<nonce>.<index>``, or a receipt's
  name), so JetStream's de-duplication and idempotent takeovers work as for an
  append alone.
- An append's messages to one partition are never split over two batches unless
  they would be alone (:func:`~.appends.atomic_chunks`); such an append, or one
  alone in its group, is published by :meth:`~.appends.Appender.publish_part`,
  exactly as without grouping.
- Order: a caller's messages are contiguous and in order in the batch, and one
  batch per partition is in flight at a time.

An atomic batch is all or nothing, so one caller's message must not sink the
others.  Packing keeps out what the server is known to refuse (more than 1,000
messages, a topic subject rolled up twice), and a group the server refuses anyway
is published again caller by caller, alone, so only the faulty one fails: a
message stored before (a takeover's, or this very group's after a lost commit
acknowledgement: "batch contains duplicate message id") then finds its sequence as
an append alone does, and a receipt whose name was stored before is answered as
stored before (:mod:`.appends`).  A caller cancelled before its batch is sent is left out;
once sent, its messages are stored as those of a caller whose answer was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque

import nats.errors

from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.api import Api
from pinrelay.store.jetstream.appends import (
    MAX_ATOMIC_BATCH,
    Outgoing,
    PublishPart,
    atomic_chunks,
    send_batch,
)
from pinrelay.store.jetstream.errors import ApiError
from pinrelay.store.jetstream.records import DeviceRec


class Entry:
    """One caller's messages for one partition, and where its answer goes."""

    __slots__ = ("devices", "future", "items", "nonce", "rolled")

    def __init__(
        self,
        items: list[Outgoing],
        nonce: str,
        devices: dict[str, DeviceRec],
        future: asyncio.Future[list[int]],
    ) -> None:
        self.items = items
        self.nonce = nonce
        self.devices = devices
        self.future = future
        #: The topic subjects it rolls up: at most once per atomic batch.
        self.rolled = {i.subject for i in items if "Nats-Rollup" in i.headers}

    def settle(self, result: list[int] | BaseException) -> None:
        if self.future.done():  # its caller was cancelled
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


def take(queue: deque[Entry]) -> list[Entry]:
    """The next group: waiting entries in order, up to one atomic batch's worth."""
    taken = [queue.popleft()]
    size = len(taken[0].items)
    while queue and size + len(queue[0].items) <= MAX_ATOMIC_BATCH:
        size += len(queue[0].items)
        taken.append(queue.popleft())
    return taken


def pack(entries: list[Entry]) -> list[list[Entry]]:
    """Split a group into units the server takes as one atomic batch each.

    An entry that needs several batches on its own (over 1,000 messages, a topic
    repeated) is a unit by itself; otherwise entries share a unit while it stays
    under 1,000 messages and rolls each topic subject up once.
    """
    units: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    rolled: set[str] = set()
    for entry in entries:
        if len(entry.items) > 1 and len(atomic_chunks(entry.items)) > 1:
            units.append([entry])
            continue
        if current and (size + len(entry.items) > MAX_ATOMIC_BATCH or entry.rolled & rolled):
            units.append(current)
            current, size, rolled = [], 0, set()
        current.append(entry)
        size += len(entry.items)
        rolled |= entry.rolled
    if current:
        units.append(current)
    return units


class GroupCommit:
    """Publishes concurrent appends' messages together, one partition at a time."""

    def __init__(self, api: Api, alone: PublishPart) -> None:
        self.api = api
        #: An append's partition published by itself (``Appender.publish_part``).
        self.alone = alone
        self._queues: dict[int, deque[Entry]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        #: Counters for tests and benchmarks: atomic batches shared by several
        #: appends, the appends in them, and shared batches refused and redone alone.
        self.batches = 0
        self.grouped = 0
        self.fallbacks = 0

    def waiting(self, part: int) -> int:
        """Appends queued for ``part`` behind the publish in flight."""
        return len(self._queues.get(part, ()))

    async def publish(
        self, part: int, items: list[Outgoing], nonce: str, devices: dict[str, DeviceRec]
    ) -> list[int]:
        """Publish one partition's messages of an append: one sequence per message."""
        loop = asyncio.get_running_loop()
        entry = Entry(items, nonce, devices, loop.create_future())
        queue = self._queues.setdefault(part, deque())
        queue.append(entry)
        if part not in self._workers:
            self._workers[part] = loop.create_task(self._work(part, queue))
        try:
            return await entry.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                queue.remove(entry)  # not taken yet: never published
            raise

    async def _work(self, part: int, queue: deque[Entry]) -> None:
        """Publish groups for ``part`` until nobody waits (one batch in flight)."""
        entries: list[Entry] = []
        try:
            while queue:
                entries = take(queue)
                for unit in pack(entries):
                    await self._unit(part, unit)
        except BaseException:
            # Cancelled (the loop is shutting down): nobody waits for ever.
            closed = StoreClosed("store is closed")
            for entry in [*entries, *queue]:
                entry.settle(closed)
            queue.clear()
            raise
        finally:
            del self._workers[part]

    async def _unit(self, part: int, unit: list[Entry]) -> None:
        """One atomic batch's worth of entries: publish it, answer each caller."""
        unit = [e for e in unit if not e.future.done()]  # not the cancelled
        if len(unit) > 1:
            try:
                seqs = await self._commit([item for e in unit for item in e.items])
            except Exception as exc:  # unavailable past retry_for: nothing to redo alone
                for entry in unit:
                    entry.settle(exc)
                return
            if seqs is not None:
                self.batches += 1
                self.grouped += len(unit)
                at = 0
                for entry in unit:
                    entry.settle(seqs[at : at + len(entry.items)])
                    at += len(entry.items)
                return
            self.fallbacks += 1
        for entry in unit:
            if entry.future.done():  # cancelled meanwhile
                continue
            try:
                result: list[int] | BaseException = await self.alone(
                    part, entry.items, entry.nonce, entry.devices
                )
            except Exception as exc:
                result = exc
            entry.settle(result)

    async def _commit(self, chunk: list[Outgoing]) -> list[int] | None:
        """One atomic batch of several appends: its sequences, or None if refused.

        Retried on a transient failure with the same batch id and message ids; a
        retry after a lost commit acknowledgement is refused as a duplicate, and the
        fallback finds each caller's sequences.
        """
        batch_id = uuid.uuid4().hex
        last = len(chunk)

        async def op() -> list[int] | None:
            try:
                resp = await send_batch(self.api, chunk, batch_id)
            except ApiError as err:
                if err.transient:
                    raise
                return None
            except nats.errors.MaxPayloadError:  # one message too large for the server
                return None
            top, count = int(resp["seq"]), int(resp.get("count", last))
            if count != last:
                raise StoreClosed(f"atomic batch stored {count} of {last}")
            return list(range(top - last + 1, top + 1))

        return await self.api.call(op, "group publish")
