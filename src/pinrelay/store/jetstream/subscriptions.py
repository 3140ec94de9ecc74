"""Web Push subscriptions on the cluster (issue 14): a record per subscription, an
index record per device.

**Keys.**  One bucket, ``<bucket_prefix>_subscriptions``, two kinds of key:

- ``<subscription id>`` (22 base64url characters): the record (:class:`SubRec`, JSON:
  pin, created_ms, keys, VAPID key, deleted_ms).  It is the authority: a push to
  ``/push/<id>`` knows only the id, and finds its device and keys here.
- ``<PIN>.live``: the device's index (:class:`IndexRec`), the ids of its live
  subscriptions.  Every create and delete of a device's subscription is a
  compare-and-set on it, so creates through any number of relays at once never take a
  device past MAX_SUBSCRIPTIONS (100); it also lists them.  Counting records instead
  would need them under keys naming the PIN, which a push does not know; and a count
  cannot be compared-and-set.

**Writes.**  Where the bucket takes atomic batches (nats-server 2.12+, :mod:`.setup`):
one batch of the index and the record, each with compare-and-set (the record's on
"absent" for a create, so an id is used once).  The server stores both or neither:
the index is exact.  Otherwise the index is written first on a create and last on a
delete, so it holds every live subscription and perhaps a few that are not (a crash
between the two writes, or a create in flight through another relay).  A listing
checks each id's record; a create that finds the index full first prunes it: ids whose
record is a tombstone go, and an id with no record is *claimed*, a tombstone written
for it on "absent": either the claim wins, and the create in flight loses its own
compare-and-set and answers CONFLICT, or the record is there and is judged as it is.
A lost compare-and-set (another relay wrote the device's index, or a record) reads
again, after a short random pause, at most :data:`MAX_ATTEMPTS` times (then 503); a
write retried after its answer was lost finds its own record and counts as done.
Within one relay a device's writes take turns (a lock per PIN).

**Tombstones.**  A delete replaces the record by a tombstone (``deleted_ms`` set) with
a ``Nats-TTL`` of SUBSCRIPTION_GONE_KEEP_MS (30 days from the write), after which
JetStream drops it by itself: no sweep.  Per-message TTLs need nats-server 2.11+, and
:mod:`.setup` switches them on for the bucket.

**Reads.**  :meth:`Subscriptions.get` runs on every Web Push request: records are
cached in each relay (:mod:`.watch`) and followed by a watch of the one-token keys
(records, not indexes), so a push costs no request once its subscription was read.
A delete is a write, which the watch sees: another relay's cache holds the tombstone
within the watch's lag (milliseconds; tests/store/test_jetstream_subscriptions.py).
An unknown id is cached as absent at revision 0, which a create replaces.  A cached
tombstone past its 30 days is read again, as its expiry writes nothing a watch sees.
:meth:`Subscriptions.of` reads the index from the leader, then each record (cached).

**Deleted devices.**  :meth:`Subscriptions.end_all` makes tombstones of every
subscription the index names (claiming ids without a record), then purges the index.
The store calls it after removing the device record, and again when asked to delete
a device it no longer finds, so a deletion that failed half-way is finished by its
retry.  A create racing with a deletion reads the device record again once written:
either the deletion's reading of the index saw the new id, or the create sees the
device gone (or another incarnation of its PIN) and makes its subscription a
tombstone itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import (
    MAX_SUBSCRIPTIONS,
    SUBSCRIPTION_GONE_KEEP_MS,
    StoreClosed,
    Subscription,
)
from pinrelay.store.jetstream.appends import Outgoing, send_batch
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.kv import KeyedLocks, Kv, cas_pause
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN, json_enc
from pinrelay.store.jetstream.unread import IN_FLIGHT, bounded
from pinrelay.store.jetstream.watch import Cached, RecordCache, Watch

#: Attempts of one write before the device's subscriptions are declared too busy.
MAX_ATTEMPTS = 20
#: A tombstone's Nats-TTL: JetStream forgets it after this many seconds.
TOMBSTONE_TTL_S = SUBSCRIPTION_GONE_KEEP_MS // 1000

_CAS = "Nats-Expected-Last-Subject-Sequence"


class SubRec(msgspec.Struct, omit_defaults=True):
    """A subscription's record, under its id (a tombstone once ``deleted_ms`` is set)."""

    pin: str
    created_ms: int
    p256dh: str | None = None
    auth: str | None = None
    vapid_key: str | None = None
    deleted_ms: int | None = None


class IndexRec(msgspec.Struct, omit_defaults=True):
    """A device's live subscriptions, by id, under ``<PIN>.live``."""

    ids: list[str] = []


#: "No such subscription", as cached (a real record names its device).
ABSENT = SubRec("", 0)
_sub_dec = msgspec.json.Decoder(SubRec)
_index_dec = msgspec.json.Decoder(IndexRec)


class Index(NamedTuple):
    """A device's index as read from the leader, with the revision to compare-and-set."""

    ids: list[str]
    revision: int


def index_key(pin: str) -> str:
    return f"{pin}.live"


def to_subscription(sub_id: str, rec: SubRec) -> Subscription:
    return Subscription(
        sub_id, rec.pin, rec.created_ms, rec.p256dh, rec.auth, rec.vapid_key, rec.deleted_ms
    )


def conflict(detail: str) -> PinrelayError:
    return PinrelayError(detail, ErrorCode.CONFLICT)


class Subscriptions:
    """Create, read, list and delete Web Push subscriptions (module doc)."""

    def __init__(
        self, kv: Kv, bucket: Bucket, devices: Devices, clock: Callable[[], float] = time.time
    ) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.devices = devices
        self.clock = clock
        #: The index and the record in one atomic batch (set by the store's open).
        self.atomic = False
        self.cache: RecordCache[SubRec] = RecordCache(_sub_dec.decode)
        self.watch = Watch(bucket, self.cache, keys="*")
        self._locks = KeyedLocks()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- reads ---------------------------------------------------------------------
    async def get(self, sub_id: str) -> Subscription | None:
        """The subscription or its tombstone (cached: usually no request)."""
        self.api.check_open()
        if not SAFE_TOKEN.match(sub_id):
            return None
        cached = self.cache.get(sub_id)
        if cached is not None and self._forgotten(cached.value):
            self.cache.drop(sub_id)  # perhaps expired by now: ask the leader (module doc)
            cached = None
        if cached is None:
            cached = await self.cache.through(sub_id, lambda: self._fresh(sub_id))
        rec = ABSENT if cached is None else cached.value
        return to_subscription(sub_id, rec) if rec.pin else None

    def _forgotten(self, rec: SubRec) -> bool:
        """Whether a tombstone is past its keep time (and so gone from the bucket)."""
        gone = rec.deleted_ms
        return gone is not None and gone + SUBSCRIPTION_GONE_KEEP_MS <= self._now_ms()

    async def _fresh(self, sub_id: str) -> Cached[SubRec]:
        """The record from the bucket's leader (:data:`ABSENT` at revision 0: none)."""
        got = await self.kv.get(self.bucket, sub_id)
        if got is None:
            return Cached(ABSENT, 0)
        return Cached(_sub_dec.decode(got.value), got.revision)

    async def _index(self, pin: str) -> Index:
        got = await self.kv.get(self.bucket, index_key(pin))
        if got is None:
            return Index([], 0)
        return Index(list(_index_dec.decode(got.value).ids), got.revision)

    async def of(self, pin: str) -> list[Subscription]:
        """``pin``'s live subscriptions, oldest first: the index, checked by the records."""
        self.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return []
        index = await self._index(pin)

        def read(sub_id: str) -> Callable[[], Awaitable[Subscription | None]]:
            return lambda: self.get(sub_id)

        found = await bounded([read(i) for i in index.ids], IN_FLIGHT)
        live = [s for s in found if s is not None and s.pin == pin and s.deleted_ms is None]
        return sorted(live, key=lambda s: (s.created_ms, s.id))

    # --- writes --------------------------------------------------------------------
    async def create(self, sub: Subscription) -> None:
        """Store a new subscription: CONFLICT if its id is taken or its device full."""
        self.api.check_open()
        if not (SAFE_TOKEN.match(sub.id) and SAFE_TOKEN.match(sub.pin)):
            raise PinrelayError(f"subscription {sub.pin}/{sub.id!r}", ErrorCode.INVALID)
        rec = SubRec(sub.pin, sub.created_ms, sub.p256dh, sub.auth, sub.vapid_key)
        device = await self.devices.get(sub.pin)
        async with self._locks.hold(sub.pin):
            revision = await self._create(sub.id, rec, json_enc.encode(rec))
        self.cache.put(sub.id, rec, revision)
        if device is None:
            return
        # A deletion of the device may have read its index before this write (module doc).
        now = await self.devices.get_fresh(sub.pin)
        if now is None or now.rec.gen != device.rec.gen:
            await self.delete(sub.pin, sub.id, self._now_ms())

    async def _create(self, sub_id: str, rec: SubRec, raw: bytes) -> int:
        """Write the record and its index entry: the record's revision."""
        pin = rec.pin
        for attempt in range(MAX_ATTEMPTS):
            got = await self.kv.get(self.bucket, sub_id)
            if got is not None:
                if got.value == raw:  # our own write, its answer lost
                    return got.revision
                raise conflict("that subscription id exists")
            index = await self._index(pin)
            ids = index.ids
            if sub_id not in ids:  # (it is when an earlier attempt stopped half-way)
                if len(ids) >= MAX_SUBSCRIPTIONS:
                    ids = await self._prune(pin, ids)
                if len(ids) >= MAX_SUBSCRIPTIONS:
                    raise conflict(f"a device holds at most {MAX_SUBSCRIPTIONS} subscriptions")
                ids = [*ids, sub_id]
            record = self._item(sub_id, raw, 0)
            changed = None if ids == index.ids else self._index_item(pin, ids, index.revision)
            if self.atomic and changed is not None:
                written = await self._batch([changed, record])
            else:
                written = None
                if changed is None or await self._publish(changed) is not None:
                    written = await self._publish(record)
                    if written is None:  # the id was taken meanwhile, or our answer lost
                        again = await self.kv.get(self.bucket, sub_id)
                        if again is None:  # refused as present, none read (DECISIONS 62)
                            raise StoreClosed(f"subscription {sub_id} not committed yet")
                        if again.value == raw:
                            return again.revision
                        await self._unindex(pin, sub_id)
                        raise conflict("that subscription id exists")
            if written is not None:
                return written
            await cas_pause(attempt)
        raise StoreClosed(f"subscriptions of {pin}: too many concurrent changes")

    async def _prune(self, pin: str, ids: list[str]) -> list[str]:
        """Those of ``ids`` whose record is ``pin``'s and live (claiming ids with none)."""

        def judge(sub_id: str) -> Callable[[], Awaitable[bool]]:
            async def live() -> bool:
                got = await self._settled(pin, sub_id)
                return got.pin == pin and got.deleted_ms is None

            return live

        verdicts = await bounded([judge(i) for i in ids], IN_FLIGHT)
        return [i for i, keep in zip(ids, verdicts, strict=True) if keep]

    async def _settled(self, pin: str, sub_id: str) -> SubRec:
        """The record of ``sub_id`` from the leader; one there is none of is claimed
        for ``pin`` (a tombstone written on "absent") and returned as that tombstone."""
        for attempt in range(MAX_ATTEMPTS):
            got = await self.kv.get(self.bucket, sub_id)
            if got is not None:
                return _sub_dec.decode(got.value)
            tomb = SubRec(pin, 0, deleted_ms=self._now_ms())
            revision = await self._publish(self._item(sub_id, json_enc.encode(tomb), 0, True))
            if revision is not None:
                self.cache.put(sub_id, tomb, revision)
                return tomb
            await cas_pause(attempt)
        raise StoreClosed(f"subscription {sub_id}: too many concurrent changes")

    async def delete(self, pin: str, sub_id: str, now_ms: int) -> bool:
        """Make ``pin``'s live subscription a tombstone; False if it has none by that id."""
        self.api.check_open()
        if not (SAFE_TOKEN.match(pin) and SAFE_TOKEN.match(sub_id)):
            return False
        mine: bytes | None = None
        async with self._locks.hold(pin):
            for attempt in range(MAX_ATTEMPTS):
                got = await self.kv.get(self.bucket, sub_id)
                if got is None:
                    return False
                rec = _sub_dec.decode(got.value)
                if rec.pin != pin or rec.deleted_ms is not None:
                    return got.value == mine  # True: our own write, its answer lost
                tomb = msgspec.structs.replace(rec, deleted_ms=now_ms)
                mine = json_enc.encode(tomb)
                record = self._item(sub_id, mine, got.revision, True)
                index = await self._index(pin)
                ids = [i for i in index.ids if i != sub_id]
                if self.atomic and ids != index.ids:
                    written = await self._batch(
                        [self._index_item(pin, ids, index.revision), record]
                    )
                else:
                    written = await self._publish(record)
                    if written is not None and ids != index.ids:
                        await self._unindex(pin, sub_id)
                if written is not None:
                    self.cache.put(sub_id, tomb, written)
                    return True
                await cas_pause(attempt)
        raise StoreClosed(f"subscriptions of {pin}: too many concurrent changes")

    async def end_all(self, pin: str) -> None:
        """Make tombstones of every subscription of ``pin`` (its device is deleted),
        deleted now by this store's clock (the contract gives no time: SQLite's writer
        reads its own too)."""
        self.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return
        now_ms = self._now_ms()
        async with self._locks.hold(pin):
            index = await self._index(pin)
            if index.revision == 0:
                return

            def end(sub_id: str) -> Callable[[], Awaitable[None]]:
                return lambda: self._end(pin, sub_id, now_ms)

            await bounded([end(i) for i in index.ids], IN_FLIGHT)
            await self.kv.remove(self.bucket, index_key(pin))

    async def _end(self, pin: str, sub_id: str, now_ms: int) -> None:
        """Make ``sub_id`` a tombstone if it is ``pin``'s and live (claim it if absent)."""
        for attempt in range(MAX_ATTEMPTS):
            got = await self.kv.get(self.bucket, sub_id)
            if got is None:
                await self._settled(pin, sub_id)
                return
            rec = _sub_dec.decode(got.value)
            if rec.pin != pin or rec.deleted_ms is not None:
                return
            tomb = msgspec.structs.replace(rec, deleted_ms=now_ms)
            raw = json_enc.encode(tomb)
            written = await self._publish(self._item(sub_id, raw, got.revision, True))
            if written is not None:
                self.cache.put(sub_id, tomb, written)
                return
            await cas_pause(attempt)
        raise StoreClosed(f"subscription {sub_id}: too many concurrent changes")

    async def _unindex(self, pin: str, sub_id: str) -> None:
        """Take ``sub_id`` out of ``pin``'s index (compare-and-set, read again if lost)."""
        for attempt in range(MAX_ATTEMPTS):
            index = await self._index(pin)
            if sub_id not in index.ids:
                return
            ids = [i for i in index.ids if i != sub_id]
            if await self._publish(self._index_item(pin, ids, index.revision)) is not None:
                return
            await cas_pause(attempt)
        raise StoreClosed(f"subscriptions of {pin}: too many concurrent changes")

    # --- publishing ----------------------------------------------------------------
    def _item(self, sub_id: str, raw: bytes, revision: int, tomb: bool = False) -> Outgoing:
        """A record's write, on ``revision`` (0: absent); a tombstone expires."""
        headers = {_CAS: str(revision)}
        if tomb:
            headers["Nats-TTL"] = str(TOMBSTONE_TTL_S)
        return Outgoing(0, self.bucket.subject(sub_id), raw, headers)

    def _index_item(self, pin: str, ids: list[str], revision: int) -> Outgoing:
        raw = json_enc.encode(IndexRec(ids))
        return Outgoing(0, self.bucket.subject(index_key(pin)), raw, {_CAS: str(revision)})

    async def _publish(self, item: Outgoing) -> int | None:
        """One compare-and-set write: its revision, or None if the key moved on."""
        return await self.api.unless_moved(
            lambda: self.api.publish(item.subject, item.payload, item.headers),
            f"write {self.bucket.name}",
        )

    async def _batch(self, items: list[Outgoing]) -> int | None:
        """Compare-and-set writes in one atomic batch: the last one's revision, or None
        if any key moved on (then none was written)."""
        # A batch id per attempt: a retry is a new batch, checked anew.
        return await self.api.unless_moved(
            lambda: send_batch(self.api, items, uuid.uuid4().hex), f"write {self.bucket.name}"
        )
