"""Chat groups on the cluster (issue 13): a record per group, an index key per member.

**Keys.**  One bucket, ``<bucket_prefix>_groups``, two kinds of key:

- ``<group id>``: the group record (:class:`~.records.GroupRec`, JSON: name, creator,
  members sorted, created_ms).  It is the authority: a send's membership check, a
  listing and every change read it.  At MAX_GROUP (1,000) members it is about 11 KB.
- ``<PIN>.<group id>``: an empty index entry saying "this PIN may be in that group",
  so :meth:`Groups.of` lists ``<PIN>.*`` (one stream-info request on the bucket's
  leader; the server finds them in its subject tree by the literal first token) and
  keeps the groups whose record names the PIN.

The index is a superset of the truth, never less: entries are written *before* (or
in the same atomic batch as) the record that adds their PIN, and removed only in the
same atomic batch as the record that drops it, or after it.  A stale entry (a crash
between the writes, a lost race) costs a listing one cached record read and is
filtered out; it never puts a PIN in a group.  A record per group rather than a
record per device of its groups: a group's creation would then write 1,001 records
(more than an atomic batch holds) and every change one record per member changed,
each a compare-and-set that could lose to the member's other groups.

**Writes.**  Every write of a record is a compare-and-set on the revision it read
(``Nats-Expected-Last-Subject-Sequence``; 0 for a creation), with its index entries:

- where the bucket takes atomic batches (nats-server 2.12+, :mod:`.setup`) and the
  write holds at most 1,000 messages: one batch of the entries to add, the record,
  and delete markers for the entries to drop.  The server checks the revision and
  stores all or nothing: :meth:`Groups.change` is atomic, as SQLite's transaction.
  A removal's markers being conditional on the record is what makes them safe: an
  addition of the same PIN through another relay either read the record after the
  removal (and writes its entry after the marker) or loses its compare-and-set and
  reads again.
- a larger write (a 1,000-member group's creation is 1,001 messages), or a bucket
  without atomic batches: entries to add first (1,000 to a batch, or one publish
  each, 32 in flight), then the record, then the markers.  Crash-safe (a superset
  again), not atomic; a removal's marker written after the record can, on an older
  server, race with a re-addition of that PIN through another relay and hide the
  group from that PIN's listing until the PIN is added again.
- a record whose last member leaves is replaced by a conditional delete marker
  (``KV-Operation: DEL``) that JetStream drops after 1 s, as :mod:`.unread` drops
  its entries; index markers likewise.  A purge could not be conditional.

A lost compare-and-set (another change through another relay, or this relay's cache
lagging) reads the record from the leader and recomputes, after a short random
pause, at most :data:`MAX_ATTEMPTS` times (then 503).  A write retried after its
answer was lost loses to itself and, reading again, finds nothing left to change:
done.  Within one relay changes of one group take turns (a lock per id).  MAX_GROUP
is checked on the leader's record before anything is written: CONFLICT, nothing
changed.

**Reads.**  Records are cached per relay and kept right by a watch of the record
keys only (``*``; index entries are not followed), as :mod:`.contacts` does: a group
send's membership check usually costs no request, and a change through another relay
is seen within the watch's lag.  A group that does not exist is cached as an empty
record at revision 0, which its creation replaces.  A change's first attempt names
the cached revision (no read); "nothing to change" and "no such group" are believed
only of the leader's record.

**Deleted devices.**  :meth:`Groups.leave_all` removes a PIN from every group its
index names; the store calls it before it removes the device record, so a deletion
that fails half-way is finished by its retry.  A device added to a group between
the two, or a group change racing with a deletion, can leave a deleted PIN in a
group: a send to the group then stores a copy for it that is rejected as an unknown
device, and its creator can remove it.  Records carry no device gen (a group lists
PINs that are not devices too, as on SQLite).

**Request costs** (tests/store/test_jetstream_groups.py): a creation of up to 999
members one round trip (one atomic batch); a change one when the cache is right, a
leader read and a batch otherwise; a cached ``get`` none; ``of`` one listing plus one
read per group not cached.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import MAX_GROUP, Group, StoreClosed
from pinrelay.store.jetstream.appends import MAX_ATOMIC_BATCH, Outgoing, send_batch
from pinrelay.store.jetstream.kv import KeyedLocks, Kv, cas_pause
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN, GroupRec, group_dec, json_enc
from pinrelay.store.jetstream.unread import IN_FLIGHT, MARKER_TTL_S, bounded
from pinrelay.store.jetstream.watch import Cached, RecordCache, Watch

#: Attempts of one change before the group is declared too busy (StoreClosed).
MAX_ATTEMPTS = 20
#: Cached records' weight at most: one per record and one per member.
CACHE_WEIGHT = 200_000
#: "No such group", as cached (a real record always has a member).
ABSENT = GroupRec("", "")

_DELETE = {"KV-Operation": "DEL", "Nats-TTL": str(MARKER_TTL_S)}
_CAS = "Nats-Expected-Last-Subject-Sequence"


def _weigh(rec: GroupRec) -> int:
    return 1 + len(rec.members)


def to_group(group_id: str, rec: GroupRec) -> Group:
    return Group(group_id, rec.name, rec.creator, list(rec.members), rec.created_ms)


def index_key(pin: str, group_id: str) -> str:
    return f"{pin}.{group_id}"


def too_many() -> PinrelayError:
    return PinrelayError(f"a group has at most {MAX_GROUP} members", ErrorCode.CONFLICT)


class Groups:
    """Create, read, change and list groups (module doc)."""

    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        #: A write's messages in one atomic batch (set by the store's open).
        self.atomic = False
        self.cache: RecordCache[GroupRec] = RecordCache(group_dec.decode, CACHE_WEIGHT, _weigh)
        self.watch = Watch(bucket, self.cache, keys="*")
        self._locks = KeyedLocks()

    # --- reads ---------------------------------------------------------------------
    async def get(self, group_id: str) -> Group | None:
        """The group (cached: usually no request); None if there is none."""
        self.api.check_open()
        if not SAFE_TOKEN.match(group_id):
            return None
        got = await self.cache.through(group_id, lambda: self._fresh(group_id))
        if got is None or not got.value.members:
            return None
        return to_group(group_id, got.value)

    async def _fresh(self, group_id: str) -> Cached[GroupRec]:
        """The record from the bucket's leader (:data:`ABSENT` at revision 0: none)."""
        got = await self.kv.get(self.bucket, group_id)
        if got is None:
            return Cached(ABSENT, 0)
        return Cached(group_dec.decode(got.value), got.revision)

    async def of(self, pin: str) -> list[Group]:
        """The groups ``pin`` is a member of, by id: the index, checked by the records."""
        self.api.check_open()
        found = [g for g in await self._indexed(pin) if pin in g.members]
        return sorted(found, key=lambda g: g.id)

    async def _indexed(self, pin: str) -> list[Group]:
        """The groups the index names for ``pin`` (a superset of its groups)."""
        if not SAFE_TOKEN.match(pin):
            return []
        keys = await self.kv.keys(self.bucket, index_key(pin, "*"))
        ids = sorted({k.partition(".")[2] for k in keys})

        def read(group_id: str) -> Callable[[], Awaitable[Group | None]]:
            return lambda: self.get(group_id)

        return [g for g in await bounded([read(i) for i in ids], IN_FLIGHT) if g is not None]

    # --- writes --------------------------------------------------------------------
    async def create(self, group: Group) -> None:
        """Store a new group: its record and its members' index entries."""
        self.api.check_open()
        if not SAFE_TOKEN.match(group.id):
            raise PinrelayError(f"group id {group.id!r}", ErrorCode.INVALID)
        members = sorted(set(group.members))
        if len(members) > MAX_GROUP:
            raise too_many()
        rec = GroupRec(group.name, group.creator, members, group.created_ms)
        raw = json_enc.encode(rec)
        async with self._locks.hold(group.id):
            record = Outgoing(0, self.bucket.subject(group.id), raw, {_CAS: "0"})
            revision = await self._write(self._entries(group.id, members), record, [])
            if revision is None:
                # A creation retried after a lost answer finds its own record.
                got = await self._fresh(group.id)
                if not got.revision:  # refused as present, none read: uncommitted (DECISIONS 62)
                    raise StoreClosed(f"group {group.id} not committed yet")
                if got.value != rec:
                    raise PinrelayError(f"group {group.id} exists", ErrorCode.CONFLICT)
                revision = got.revision
            self.cache.put(group.id, rec, revision)

    async def change(
        self, group_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Group | None:
        """Add ``add``, then remove ``remove``: the group after, None if there is none
        (or it was left empty, and so deleted).  CONFLICT past MAX_GROUP members."""
        self.api.check_open()
        if not SAFE_TOKEN.match(group_id):
            return None
        async with self._locks.hold(group_id):
            cached = self.cache.get(group_id)
            for attempt in range(MAX_ATTEMPTS):
                fresh = cached is None
                got = cached if cached is not None else await self._fresh(group_id)
                cached = None
                rec = got.value
                members = sorted((set(rec.members) | set(add)) - set(remove))
                if not rec.members or members == rec.members or len(members) > MAX_GROUP:
                    if not fresh:
                        continue  # believed only of the leader's record (module doc)
                    self.cache.put(group_id, rec, got.revision)
                    if len(members) > MAX_GROUP and rec.members:
                        raise too_many()
                    return to_group(group_id, rec) if rec.members else None
                written = await self._replace(group_id, rec, members, got.revision)
                if written is not None:
                    new = GroupRec(rec.name, rec.creator, members, rec.created_ms)
                    self.cache.put(group_id, new if members else ABSENT, written)
                    return to_group(group_id, new) if members else None
                await cas_pause(attempt)
        raise StoreClosed(f"group {group_id}: too many concurrent changes")

    async def _replace(
        self, group_id: str, rec: GroupRec, members: list[str], revision: int
    ) -> int | None:
        """Write ``members`` over ``rec`` (at ``revision``) with the index entries that
        change: the record's new revision, or None if it moved on."""
        old, new = set(rec.members), set(members)
        cas = {_CAS: str(revision)}
        subject = self.bucket.subject(group_id)
        if members:
            raw = json_enc.encode(GroupRec(rec.name, rec.creator, members, rec.created_ms))
            record = Outgoing(0, subject, raw, cas)
        else:  # the last member left: the group goes (a marker, so conditional)
            record = Outgoing(0, subject, b"", {**_DELETE, **cas})
        added = self._entries(group_id, sorted(new - old))
        dropped = [
            Outgoing(0, self.bucket.subject(index_key(p, group_id)), b"", _DELETE)
            for p in sorted(old - new)
            if SAFE_TOKEN.match(p)
        ]
        return await self._write(added, record, dropped)

    def _entries(self, group_id: str, pins: Sequence[str]) -> list[Outgoing]:
        """Index entries for ``pins`` (a PIN unfit for a key is never a device)."""
        return [
            Outgoing(0, self.bucket.subject(index_key(p, group_id)), b"", {})
            for p in pins
            if SAFE_TOKEN.match(p)
        ]

    async def leave_all(self, pin: str) -> None:
        """Remove ``pin`` from every group the index names (its device is being deleted)."""
        groups = await self._indexed(pin)

        def leave(group_id: str) -> Callable[[], Awaitable[Group | None]]:
            return lambda: self.change(group_id, [], [pin])

        await bounded([leave(g.id) for g in groups if pin in g.members], IN_FLIGHT)

    # --- publishing ----------------------------------------------------------------
    async def _write(
        self, before: list[Outgoing], record: Outgoing, after: list[Outgoing]
    ) -> int | None:
        """Store ``before``, the compare-and-set ``record``, then ``after``: the
        record's revision, or None if it moved on (then ``after`` is not written)."""
        items = [*before, record, *after]
        if self.atomic and len(items) <= MAX_ATOMIC_BATCH:
            return await self._batch_cas(items, len(after))
        await self._put_all(before)
        if self.atomic and after and len(after) < MAX_ATOMIC_BATCH:
            return await self._batch_cas([record, *after], len(after))
        revision = await self._publish_cas(record)
        if revision is not None:
            await self._put_all(after)
        return revision

    async def _batch_cas(self, items: list[Outgoing], after: int) -> int | None:
        """One atomic batch holding a compare-and-set ``after`` items from its end."""
        if len(items) == 1:
            return await self._publish_cas(items[0])
        # A batch id per attempt: a retry is a new batch, checked anew.
        seq = await self.api.unless_moved(
            lambda: send_batch(self.api, items, uuid.uuid4().hex), f"write {self.bucket.name}"
        )
        return None if seq is None else seq - after

    async def _publish_cas(self, item: Outgoing) -> int | None:
        return await self.api.unless_moved(
            lambda: self.api.publish(item.subject, item.payload, item.headers),
            f"write {self.bucket.name}",
        )

    async def _put_all(self, items: list[Outgoing]) -> None:
        """Store unconditional ``items``: atomic batches where the bucket takes them
        (a round trip per 1,000), else one publish each, :data:`IN_FLIGHT` at once."""
        what = f"write {self.bucket.name}"
        if self.atomic and len(items) > 1:
            for start in range(0, len(items), MAX_ATOMIC_BATCH):
                chunk = items[start : start + MAX_ATOMIC_BATCH]

                async def op(chunk: list[Outgoing] = chunk) -> object:
                    return await send_batch(self.api, chunk, uuid.uuid4().hex)

                await self.api.call(op, what)
            return

        def publish(item: Outgoing) -> Callable[[], Awaitable[object]]:
            async def op() -> object:
                return await self.api.publish(item.subject, item.payload, item.headers)

            return lambda: self.api.call(op, what)

        await bounded([publish(item) for item in items], IN_FLIGHT)
