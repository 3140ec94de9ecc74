"""Tenants on the cluster (core/tenants.py, issue 15): a record per tenant in
``<bucket_prefix>_tenants`` (tenant id → JSON :class:`~.records.TenantRec`).

**Writes.**  A create is a create-if-absent: a taken id, by a live tenant or a
tombstone, is CONFLICT (a create retried after its answer was lost finds its own
record and counts as done).  An update is a compare-and-set on the leader's record,
retried on conflict; it keeps the stored ``created_ms``.  A deletion is an update
that sets ``deleted_ms``: the record stays, a tombstone, so an id is never reused;
nothing is ever removed from the bucket.

**Reads.**  :meth:`Tenants.get` runs on every call with a key: records are cached in
each relay and followed by a watch (:mod:`.watch`), so it costs no request once
read.  Every change is a write the watch sees (there are no removals), so a
suspension or deletion through one relay is in every relay's cache within the
watch's lag (milliseconds; tests/store/test_jetstream_tenants.py).  An unknown id is
cached as absent at revision 0, which a create replaces.  :meth:`Tenants.all` reads
the leader.

**Device counts.**  The record counts its tenant's devices (``devices``): a create
adds one before the device's record is made (and takes it back if the PIN was
taken), a deletion takes one after the record is gone, a move takes one from the old
tenant and adds one to the new.  Each is a compare-and-set of the tenant's record,
so creates racing on several relays are ordered by its revision and the devices
quota holds exactly.  A crash between the two writes leaves the count one high,
never low: the quota errs on the side of refusing.  Devices made before counting
began (layout 2 stores upgraded with devices in the default tenant) are not counted.

**The default tenant.**  :meth:`Tenants.ensure_default` creates it when missing, at
every open: relays opening together each try a create-if-absent and all but one find
it there.  With device and key records that name no tenant read as the default's
(:mod:`.records`), that is the migration to layout 2 (:mod:`.setup`, "Layout
versions").
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.tenants import DEFAULT_TENANT, TENANT_ID_RE, Tenant
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.devices import MAX_CAS_ATTEMPTS
from pinrelay.store.jetstream.kv import KeyedLocks, Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import (
    TenantRec,
    json_enc,
    tenant_dec,
    tenant_rec,
    to_tenant,
)
from pinrelay.store.jetstream.unread import IN_FLIGHT, bounded
from pinrelay.store.jetstream.watch import Cached, RecordCache, Watch

#: "No such tenant", as cached (a real record has a name).
ABSENT = TenantRec("", 0)


class Tenants:
    """Create, read, list and change tenants (module doc)."""

    def __init__(self, kv: Kv, bucket: Bucket, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.clock = clock
        self.cache: RecordCache[TenantRec] = RecordCache(tenant_dec.decode)
        self.watch = Watch(bucket, self.cache)
        #: A relay's own changes of one tenant's record take turns: creates of one
        #: tenant's devices in flight together would otherwise lose their
        #: compare-and-sets to each other until they gave up (only other relays race).
        self._locks = KeyedLocks()

    async def _fresh(self, tenant_id: str) -> Cached[TenantRec]:
        """The record from the bucket's leader (:data:`ABSENT` at revision 0: none)."""
        got = await self.kv.get(self.bucket, tenant_id)
        if got is None:
            return Cached(ABSENT, 0)
        return Cached(tenant_dec.decode(got.value), got.revision)

    async def get(self, tenant_id: str) -> Tenant | None:
        """The tenant or its tombstone (cached: usually no request)."""
        self.api.check_open()
        if not TENANT_ID_RE.match(tenant_id):
            return None
        got = await self.cache.through(tenant_id, lambda: self._fresh(tenant_id))
        rec = ABSENT if got is None else got.value
        return to_tenant(tenant_id, rec) if rec.name else None

    async def all(self) -> list[Tenant]:
        """Every tenant, tombstones included, by id (from the leader)."""
        self.api.check_open()
        ids = sorted(await self.kv.keys(self.bucket))

        def read(tenant_id: str) -> Callable[[], Awaitable[Cached[TenantRec]]]:
            return lambda: self._fresh(tenant_id)

        found = await bounded([read(i) for i in ids], IN_FLIGHT)
        return [to_tenant(i, got.value) for i, got in zip(ids, found, strict=True) if got.revision]

    async def create(self, tenant: Tenant) -> None:
        """Store a new tenant: CONFLICT if its id is taken (a tombstone's included)."""
        self.api.check_open()
        if not TENANT_ID_RE.match(tenant.id):
            raise PinrelayError(f"invalid tenant id {tenant.id!r}", ErrorCode.INVALID)
        rec = tenant_rec(tenant)
        revision = await self.kv.create(self.bucket, tenant.id, json_enc.encode(rec))
        if revision is None:
            got = await self._fresh(tenant.id)
            if not got.revision:  # refused as present, none read: uncommitted (DECISIONS 62)
                raise StoreClosed(f"tenant {tenant.id} not committed yet")
            if got.value != rec:  # else: our own create, its answer lost
                raise PinrelayError(f"tenant {tenant.id} exists", ErrorCode.CONFLICT)
            revision = got.revision
        self.cache.put(tenant.id, rec, revision)

    async def update(self, tenant: Tenant) -> bool:
        """Replace a live tenant's name, suspension, quotas and ``deleted_ms`` by
        compare-and-set; False if there is no live tenant with that id."""
        self.api.check_open()
        if not TENANT_ID_RE.match(tenant.id):
            return False
        for _ in range(MAX_CAS_ATTEMPTS):
            got = await self._fresh(tenant.id)
            if not got.value.name or got.value.deleted_ms is not None:
                return False
            new = tenant_rec(tenant, created_ms=got.value.created_ms)
            new.devices = got.value.devices  # counted by count_devices alone
            if new == got.value:
                self.cache.put(tenant.id, new, got.revision)
                return True
            written = await self.kv.update(
                self.bucket, tenant.id, json_enc.encode(new), got.revision
            )
            if written is not None:
                self.cache.put(tenant.id, new, written)
                return True
        raise StoreClosed(f"tenant {tenant.id}: too many concurrent updates")

    async def count_devices(self, tenant_id: str, delta: int, limit: int | None = None) -> bool:
        """Add ``delta`` to the tenant's device count by compare-and-set; False (and
        nothing written) if that would take it past ``limit``.  A tenant that is absent
        or a tombstone counts nothing (True).  The first attempt names the cached
        revision (no read); a conflict re-reads the leader, so creates racing on
        several relays are serialized by the record's revision and never pass
        ``limit`` ("Device counts" in the module doc)."""
        self.api.check_open()
        if not TENANT_ID_RE.match(tenant_id):
            return True
        async with self._locks.hold(tenant_id):
            return await self._count(tenant_id, delta, limit)

    async def _count(self, tenant_id: str, delta: int, limit: int | None) -> bool:
        cached = self.cache.get(tenant_id)
        for _ in range(MAX_CAS_ATTEMPTS):
            fresh = cached is None or not cached.revision
            got = await self._fresh(tenant_id) if fresh or cached is None else cached
            cached = None
            rec = got.value
            if not rec.name or rec.deleted_ms is not None:
                return True
            count = max(0, rec.devices + delta)
            if delta > 0 and limit is not None and count > limit:
                if fresh:
                    return False  # judged on the leader's copy only
                continue
            new = msgspec.structs.replace(rec, devices=count)
            written = await self.kv.update(
                self.bucket, tenant_id, json_enc.encode(new), got.revision
            )
            if written is not None:
                self.cache.put(tenant_id, new, written)
                return True
        raise StoreClosed(f"tenant {tenant_id}: too many concurrent updates")

    async def ensure_default(self) -> bool:
        """Create the default tenant if it is missing; whether this call did."""
        rec = TenantRec(DEFAULT_TENANT, int(self.clock() * 1000))
        return await self.kv.create(self.bucket, DEFAULT_TENANT, json_enc.encode(rec)) is not None
