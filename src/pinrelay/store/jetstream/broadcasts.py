"""Broadcasts, their counts and the audit log on the cluster (core/channels.py).

In ``<bucket_prefix>_channels``, beside :mod:`.channels`' keys.

**Broadcasts:**

- ``b.<broadcast id>``: the record (:class:`~pinrelay.core.channels.Broadcast`, JSON).
  :meth:`Broadcasts.put` is a compare-and-set that never goes back: an update whose
  ``after`` is below the stored one's, or that would undo ``done_ms``, writes nothing
  (False), so two relays resuming one fan-out cannot undo each other's progress.
- ``u.<broadcast id>``: an empty entry while the fan-out is unfinished, written
  before the record and removed after the record says done, so
  :meth:`Broadcasts.unfinished` lists these keys (not every broadcast ever made)
  and reads their records; one left by a crash is filtered out and removed then.
  Its create counts only once a read shows it (``Kv.ensure``, DECISIONS 62): a
  record whose entry was never committed would never be resumed.
- Both are removed (with the counts) once the broadcast is done and expired for
  ``--broadcast-keep-days`` (Store.prune_broadcasts), make-goods excepted.
- ``n.<broadcast id>.<node>``: one relay's totals of the broadcast and the batch of
  counts it last added (:class:`NodeCounts`), changed by that relay only (a
  compare-and-set all the same); :meth:`Broadcasts.counts` lists and sums them. A
  batch whose answer was lost is sent again as it was, and adds nothing where it
  landed (DECISIONS 62).
  A node name unfit for a key is hashed.

**Stored-bytes ledgers** (core/ledger.py): ``l.<node>``, each relay's last ledger,
written by that relay only (a compare-and-set all the same); :meth:`Ledgers.all`
lists and reads them.

**Audit log:** one key per line, ``a.<tenant>.<at_ms, 13 digits>.<random>``, so keys
sort by time within a tenant; written with ``Kv.ensure`` (DECISIONS 62: a line is
written once a read shows it, else StoreClosed);
:meth:`Audit.page` lists the tenant's keys (every key for None: one request on the
leader per 100,000), sorts them newest first and reads the page's lines only.  A
listing costs in proportion to the tenant's whole log: lines are few (a broadcast,
a channel made or deleted), kept ``--audit-keep-days`` (Store.prune_audit; a
tenant's deletion does not remove its lines).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping

from msgspec import Struct

from pinrelay.core.channels import AuditEntry, Broadcast, BroadcastCounts
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ledger import Ledger
from pinrelay.core.makegood import MAKEGOOD_CHANNEL
from pinrelay.store.jetstream.cas import Keyed
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN, json_enc
from pinrelay.store.jetstream.unread import IN_FLIGHT, bounded


def _node_token(node: str) -> str:
    return node if SAFE_TOKEN.match(node) else hashlib.sha256(node.encode()).hexdigest()[:32]


def _forward(old: Broadcast | None, new: Broadcast) -> bool:
    """Whether ``new`` may replace ``old`` (module doc)."""
    if old is None:
        return True
    return new.after >= old.after and not (old.done_ms is not None and new.done_ms is None)


class NodeCounts(Struct, frozen=True):
    """One relay's totals of a broadcast, and the batch of counts it last added."""

    delivered: int = 0
    acked: int = 0
    batch: str = ""


class Broadcasts:
    """Broadcast records, their unfinished index and the relays' counts."""

    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.records = Keyed(kv, bucket, Broadcast)
        self.counters = Keyed(kv, bucket, NodeCounts)

    async def put(self, broadcast: Broadcast) -> bool:
        self.api.check_open()
        bid = broadcast.id
        if not SAFE_TOKEN.match(bid):
            raise PinrelayError(f"broadcast id {bid!r}", ErrorCode.INVALID)
        ok = True

        def change(old: Broadcast | None) -> Broadcast | None:
            nonlocal ok
            ok = _forward(old, broadcast)
            return broadcast if ok and old != broadcast else None

        if broadcast.done_ms is None and await self.records.get(f"b.{bid}") is None:
            await self.kv.ensure(self.bucket, f"u.{bid}", b"")  # a new one: indexed first
        await self.records.change(f"b.{bid}", change)
        if ok and broadcast.done_ms is not None:
            await self.kv.remove(self.bucket, f"u.{bid}")
        return ok

    async def get(self, broadcast_id: str) -> Broadcast | None:
        self.api.check_open()
        if not SAFE_TOKEN.match(broadcast_id):
            return None
        return await self.records.get(f"b.{broadcast_id}")

    async def unfinished(self) -> list[Broadcast]:
        """Broadcasts not done, oldest first; an index entry of a done one is removed."""
        self.api.check_open()
        ids = [k.removeprefix("u.") for k in await self.kv.keys(self.bucket, "u.*")]

        found = await self.records.many([f"b.{i}" for i in ids])
        for bid, rec in zip(ids, found, strict=True):
            if rec is not None and rec.done_ms is not None:
                await self.kv.remove(self.bucket, f"u.{bid}")
        left = [b for b in found if b is not None and b.done_ms is None]
        return sorted(left, key=lambda b: (b.created_ms, b.id))

    async def count(
        self, node: str, counts: Mapping[str, BroadcastCounts], batch: str = ""
    ) -> None:
        """Add ``node``'s counts to its key of each broadcast, unless that key's last
        batch was ``batch`` (Store.count_broadcasts)."""
        self.api.check_open()
        token = _node_token(node)

        def add(bid: str, more: BroadcastCounts) -> Callable[[], Awaitable[object]]:
            def change(old: NodeCounts | None) -> NodeCounts | None:
                was = old or NodeCounts()
                if batch and was.batch == batch:
                    return None  # stored already: its answer was lost
                return NodeCounts(was.delivered + more.delivered, was.acked + more.acked, batch)

            return lambda: self.counters.change(f"n.{bid}.{token}", change)

        calls = [
            add(bid, more)
            for bid, more in counts.items()
            if SAFE_TOKEN.match(bid) and (more.delivered or more.acked)
        ]
        await bounded(calls, IN_FLIGHT)

    async def prune(self, before_ms: int, limit: int) -> int:
        """Forget done and expired broadcasts (Store.prune_broadcasts): every record
        is read (one listing, and the records in parallel: hourly, a few thousand)."""
        self.api.check_open()
        keys = await self.kv.keys(self.bucket, "b.*")
        old = [
            b.id
            for b in await self.records.many(keys)
            if b is not None
            and b.done_ms is not None
            and max(b.done_ms, b.expires_ms) < before_ms
            and b.channel != MAKEGOOD_CHANNEL
        ][:limit]
        for bid in old:  # the counts first: a record never outlives its counts' removal
            await self.kv.remove(self.bucket, f"n.{bid}.*")
            await self.kv.remove(self.bucket, f"b.{bid}")
        return len(old)

    async def counts(self, broadcast_id: str) -> BroadcastCounts:
        """Every relay's counts of the broadcast, summed."""
        self.api.check_open()
        if not SAFE_TOKEN.match(broadcast_id):
            return BroadcastCounts()
        keys = await self.kv.keys(self.bucket, f"n.{broadcast_id}.*")

        found = [c for c in await self.counters.many(keys) if c is not None]
        return BroadcastCounts(sum(c.delivered for c in found), sum(c.acked for c in found))


class Audit:
    """The audit log: a key per line, sortable by time (module doc)."""

    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.lines = Keyed(kv, bucket, AuditEntry)

    async def append(self, entry: AuditEntry) -> None:
        self.api.check_open()
        if not SAFE_TOKEN.match(entry.tenant) or entry.at_ms < 0:
            raise PinrelayError(f"audit line of tenant {entry.tenant!r}", ErrorCode.INVALID)
        key = f"a.{entry.tenant}.{entry.at_ms:013d}.{uuid.uuid4().hex[:16]}"
        await self.kv.ensure(self.bucket, key, json_enc.encode(entry))

    async def prune(self, before_ms: int, limit: int) -> int:
        """Forget lines older than ``before_ms`` (their keys say when: no reads)."""
        self.api.check_open()
        old = sorted(
            (int(key.split(".")[2]), key)
            for key in await self.kv.keys(self.bucket, "a.>")
            if int(key.split(".")[2]) < before_ms
        )[:limit]
        for _, key in old:
            await self.kv.remove(self.bucket, key)
        return len(old)

    async def page(self, tenant: str | None, before_ms: int | None, limit: int) -> list[AuditEntry]:
        """Up to ``limit`` lines older than ``before_ms``, newest first."""
        self.api.check_open()
        if (tenant is not None and not SAFE_TOKEN.match(tenant)) or limit <= 0:
            return []
        keys = await self.kv.keys(self.bucket, "a.>" if tenant is None else f"a.{tenant}.>")
        lines: list[tuple[str, str]] = []  # (at_ms.random, key)
        for key in keys:
            _, _, at, rand = key.split(".")
            if before_ms is None or int(at) < before_ms:
                lines.append((f"{at}.{rand}", key))
        lines.sort(reverse=True)

        found = await self.lines.many([k for _, k in lines[:limit]])
        return [e for e in found if e is not None]


class Ledgers:
    """Each relay's stored-bytes ledger (module doc)."""

    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.records = Keyed(kv, bucket, Ledger)

    async def put(self, node: str, ledger: Ledger) -> None:
        self.api.check_open()
        await self.records.change(f"l.{_node_token(node)}", lambda _old: ledger)

    async def all(self) -> dict[str, Ledger]:
        self.api.check_open()
        keys = await self.kv.keys(self.bucket, "l.*")
        found = await self.records.many(keys)
        return {k.removeprefix("l."): v for k, v in zip(keys, found, strict=True) if v is not None}
