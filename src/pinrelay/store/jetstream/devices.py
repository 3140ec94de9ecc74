"""Device records in their KV bucket, each change a compare-and-set.

A device record (``<bucket_prefix>_devices``, PIN → JSON) carries a random
``gen``; each message carries its device's gen, and a read skips other gens, so a
re-created PIN never sees its predecessor's messages.  Records change rarely (a
token, last seen, acks written back, see :mod:`.acks`): no write per message.
Reads come from a cache kept right by a watch (:mod:`.watch`); a compare-and-set
reads the leader.  The record also names the device's tenant, the other tenants it
granted pushes (core/tenants.py) and its pending move request: an append restricted to
a tenant checks them on the record it reads anyway (:mod:`.appends`), and a move, its
acceptance or a grant is a compare-and-set like any other change.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.tenants import DEFAULT_TENANT
from pinrelay.store.base import MAX_GRANTS, Move, StoreClosed
from pinrelay.store.jetstream.kv import KeyedLocks, Kv
from pinrelay.store.jetstream.layout import Buckets
from pinrelay.store.jetstream.records import (
    SAFE_TOKEN,
    DeviceRec,
    device_dec,
    json_enc,
)
from pinrelay.store.jetstream.watch import Cached, RecordCache, Watch

#: Compare-and-set attempts before a record is declared too busy.
MAX_CAS_ATTEMPTS = 100


#: PINs with no device remembered per relay (store/jetstream/watch.py).
ABSENT_PINS = 10_000


class FoundDevice(NamedTuple):
    """A device record and the revision a compare-and-set of it must name."""

    rec: DeviceRec
    revision: int


class Moved(NamedTuple):
    """An accepted move: the tenant the device left (None: it had none)."""

    left: str | None


class Devices:
    """Read, create, change and remove device records."""

    def __init__(self, kv: Kv, buckets: Buckets) -> None:
        self.kv = kv
        self.bucket = buckets.devices
        self._locks = KeyedLocks()
        # Absent PINs too: a push to none costs what a push to a cached device does.
        self.cache: RecordCache[DeviceRec] = RecordCache(device_dec.decode, absent_size=ABSENT_PINS)
        self.watch = Watch(self.bucket, self.cache)

    async def get(self, pin: str) -> FoundDevice | None:
        """The record of ``pin`` and its revision (cached); None if there is none."""
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return None

        async def load() -> Cached[DeviceRec] | None:
            got = await self.get_fresh(pin)
            return None if got is None else Cached(got.rec, got.revision)

        got = await self.cache.through(pin, load)
        return None if got is None else FoundDevice(got.value, got.revision)

    async def get_fresh(self, pin: str) -> FoundDevice | None:
        """The record of ``pin`` from the bucket's leader (for a compare-and-set)."""
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return None
        got = await self.kv.get(self.bucket, pin)
        if got is None:
            return None
        return FoundDevice(device_dec.decode(got.value), got.revision)

    async def create(
        self,
        pin: str,
        token_hash: str,
        label: str | None,
        now_ms: int,
        tenant: str | None = DEFAULT_TENANT,
    ) -> DeviceRec | None:
        """A new record for ``pin`` of ``tenant``; None if the PIN is taken."""
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return None
        rec = DeviceRec(token_hash, now_ms, uuid.uuid4().hex, label, tenant=tenant)
        revision = await self.kv.create(self.bucket, pin, json_enc.encode(rec))
        if revision is None:
            # A create retried after a lost acknowledgement finds its own record.
            got = await self.get_fresh(pin)
            if got is None:  # refused as present, none read: uncommitted (DECISIONS 62)
                raise StoreClosed(f"device {pin} not committed yet")
            if got.rec.gen != rec.gen:
                return None
            revision = got.revision
        self.cache.put(pin, rec, revision)
        return rec

    async def update(
        self, pin: str, change: Callable[[DeviceRec], DeviceRec | None]
    ) -> DeviceRec | None:
        """Apply ``change`` with compare-and-set; None if there is no device.

        ``change`` returns None for "nothing to write".  The first attempt names the
        cached revision (no read); a conflict (the cache lagged, or another relay
        wrote in between) re-reads from the leader and tries again.
        """
        async with self._locks.hold(pin):
            cached = self.cache.get(pin)
            for _ in range(MAX_CAS_ATTEMPTS):
                fresh = cached is None
                if cached is not None:
                    got: FoundDevice | None = FoundDevice(cached.value, cached.revision)
                    cached = None
                else:
                    got = await self.get_fresh(pin)
                if got is None:
                    self.cache.drop(pin)
                    return None
                rec, revision = got
                new = change(rec)
                if new is None:
                    if not fresh:
                        continue  # "nothing to write" is only believed of the leader's copy
                    self.cache.put(pin, rec, revision)
                    return rec
                written = await self.kv.update(self.bucket, pin, json_enc.encode(new), revision)
                if written is not None:
                    self.cache.put(pin, new, written)
                    return new
            raise StoreClosed(f"device {pin}: too many concurrent updates")

    async def set_token(self, pin: str, token_hash: str) -> bool:
        """Change the device's token hash; False if there is no device."""

        def change(r: DeviceRec) -> DeviceRec | None:
            return (
                None
                if r.token_hash == token_hash
                else msgspec.structs.replace(r, token_hash=token_hash)
            )

        return await self.update(pin, change) is not None

    async def touch(self, pin: str, now_ms: int) -> None:
        """Record when the device was last seen."""

        def change(r: DeviceRec) -> DeviceRec | None:
            return (
                None
                if r.last_seen_ms == now_ms
                else msgspec.structs.replace(r, last_seen_ms=now_ms)
            )

        await self.update(pin, change)

    async def set_tenant(self, pin: str, tenant: str | None) -> bool:
        """Move the device to ``tenant`` and drop its grants; False if there is no device."""

        def change(r: DeviceRec) -> DeviceRec | None:
            if r.tenant == tenant and not r.grants:
                return None
            return msgspec.structs.replace(r, tenant=tenant, grants=[])

        return await self.update(pin, change) is not None

    async def request_move(self, pin: str, move: Move | None) -> bool:
        """Keep (or, None, withdraw) the device's move request; False for no device."""
        to, expires_ms = (None, 0) if move is None else (move.tenant, move.expires_ms)

        def change(r: DeviceRec) -> DeviceRec | None:
            if (r.move_to, r.move_expires_ms) == (to, expires_ms):
                return None
            return msgspec.structs.replace(r, move_to=to, move_expires_ms=expires_ms)

        return await self.update(pin, change) is not None

    async def accept_move(self, pin: str, tenant: str, now_ms: int) -> Moved | None:
        """Do the device's pending move to ``tenant`` in one compare-and-set; the
        tenant it left, or None if there was no such request."""
        moved: Moved | None = None

        def change(r: DeviceRec) -> DeviceRec | None:
            nonlocal moved  # the last call's verdict is the written record's
            moved = Moved(r.tenant) if r.move_to == tenant and r.move_expires_ms > now_ms else None
            if moved is None:
                return None
            return msgspec.structs.replace(
                r, tenant=tenant, grants=[], move_to=None, move_expires_ms=0
            )

        return moved if await self.update(pin, change) is not None else None

    async def set_grant(self, pin: str, tenant: str, granted: bool) -> bool:
        """Grant ``tenant`` pushes to the device, or revoke it; False if there is no
        device, CONFLICT if it holds MAX_GRANTS already."""

        def change(r: DeviceRec) -> DeviceRec | None:
            if (tenant in r.grants) == granted or (granted and len(r.grants) >= MAX_GRANTS):
                return None  # the full case is judged below, on the leader's copy
            grants = {*r.grants, tenant} if granted else set(r.grants) - {tenant}
            return msgspec.structs.replace(r, grants=sorted(grants))

        rec = await self.update(pin, change)
        if rec is None:
            return False
        if granted and tenant not in rec.grants:
            raise PinrelayError(
                f"a device may grant at most {MAX_GRANTS} tenants", ErrorCode.CONFLICT
            )
        return True

    async def remove(self, pin: str) -> bool:
        """Remove the record of ``pin``; False if there was none (its messages stay)."""
        async with self._locks.hold(pin):
            got = await self.get_fresh(pin)
            if got is None:
                self.cache.drop(pin)
                return False
            await self.kv.remove(self.bucket, pin)
            self.cache.forget(pin)
            with contextlib.suppress(Exception):  # best effort: see .watch
                await self.watch.announce_removal(self.kv.api.nc, pin)
        return True
