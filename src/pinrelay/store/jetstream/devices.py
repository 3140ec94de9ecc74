"""Device records and API keys in their KV buckets, each change a compare-and-set.

A device record (``<bucket_prefix>_devices``, PIN → JSON) carries a random
``gen``; each message carries its device's gen, and a read skips other gens, so a
re-created PIN never sees its predecessor's messages.  ``last_cursor`` is raised
after a publish is acknowledged (coalesced per device, :meth:`Devices.raise_last_cursor`)
and by any read that finds a higher one; ``acked_cursor`` by an ack.

API keys live in ``_keys`` (key id → JSON) with an index ``_keyhash``
(sha256(key hash) → key id).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import ApiKey
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.kv import KeyedLocks, Kv
from pinrelay.store.jetstream.layout import Buckets
from pinrelay.store.jetstream.records import (
    SAFE_TOKEN,
    DeviceRec,
    KeyRec,
    device_dec,
    hash_key,
    json_enc,
    key_dec,
    key_rec,
    to_key,
)

#: Compare-and-set attempts before a record is declared too busy.
MAX_CAS_ATTEMPTS = 100


class Devices:
    """Read, create, change and remove device records."""

    def __init__(self, kv: Kv, buckets: Buckets) -> None:
        self.kv = kv
        self.bucket = buckets.devices
        self._locks = KeyedLocks()
        self._last_written: dict[str, int] = {}
        self._last_wanted: dict[str, int] = {}

    async def get(self, pin: str) -> tuple[DeviceRec, int] | None:
        """The record of ``pin`` and its revision; None if there is none."""
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return None
        got = await self.kv.get(self.bucket, pin)
        if got is None:
            return None
        return device_dec.decode(got.value), got.revision

    async def create(
        self, pin: str, token_hash: str, label: str | None, now_ms: int
    ) -> DeviceRec | None:
        """A new record for ``pin``; None if the PIN is taken."""
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return None
        rec = DeviceRec(token_hash, now_ms, uuid.uuid4().hex, label)
        if not await self.kv.create(self.bucket, pin, json_enc.encode(rec)):
            # A create retried after a lost acknowledgement finds its own record.
            got = await self.get(pin)
            if got is None or got[0].gen != rec.gen:
                return None
        return rec

    async def update(
        self, pin: str, change: Callable[[DeviceRec], DeviceRec | None]
    ) -> DeviceRec | None:
        """Apply ``change`` with compare-and-set; None if there is no device.

        ``change`` returns None for "nothing to write".  A conflict (another relay
        wrote in between) re-reads and tries again.
        """
        async with self._locks.hold(pin):
            for _ in range(MAX_CAS_ATTEMPTS):
                got = await self.get(pin)
                if got is None:
                    return None
                rec, revision = got
                new = change(rec)
                if new is None:
                    return rec
                if await self.kv.update(self.bucket, pin, json_enc.encode(new), revision):
                    return new
            raise StoreClosed(f"device {pin}: too many concurrent updates")

    async def remove(self, pin: str) -> bool:
        """Remove the record of ``pin``; False if there was none (its messages stay)."""
        async with self._locks.hold(pin):
            got = await self.get(pin)
            if got is None:
                return False
            await self.kv.remove(self.bucket, pin)
        return True

    def forget(self, pin: str) -> None:
        """Drop what is remembered about a removed device."""
        self._last_written.pop(pin, None)

    async def raise_last_cursor(self, pin: str, seq: int) -> None:
        """Raise the device's last_cursor to at least ``seq`` (coalesced per device)."""
        self._last_wanted[pin] = max(self._last_wanted.get(pin, 0), seq)
        if self._last_written.get(pin, 0) >= seq:
            return
        async with self._locks.hold(f"last:{pin}"):
            if self._last_written.get(pin, 0) >= seq:
                return
            target = self._last_wanted.get(pin, seq)

            def change(r: DeviceRec) -> DeviceRec | None:
                return (
                    None
                    if r.last_cursor >= target
                    else msgspec.structs.replace(r, last_cursor=target)
                )

            await self.update(pin, change)
            self._last_written[pin] = max(self._last_written.get(pin, 0), target)
            if self._last_wanted.get(pin) == target:
                self._last_wanted.pop(pin, None)
                self._last_written.pop(pin, None)


class Keys:
    """API keys and their hash index."""

    def __init__(self, kv: Kv, buckets: Buckets) -> None:
        self.kv = kv
        self.buckets = buckets

    async def create(self, key: ApiKey) -> None:
        self.kv.api.check_open()
        b = self.buckets
        rec = key_rec(key)
        if not SAFE_TOKEN.match(key.id):
            raise PinrelayError(f"invalid key id {key.id!r}", ErrorCode.INVALID)
        if not await self.kv.create(b.keys, key.id, json_enc.encode(rec)):
            got = await self.kv.get(b.keys, key.id)
            if got is None or key_dec.decode(got.value) != rec:
                raise PinrelayError(f"API key {key.id} exists", ErrorCode.CONFLICT)
        hashed = hash_key(key.key_hash)
        if not await self.kv.create(b.keyhash, hashed, key.id.encode()):
            got = await self.kv.get(b.keyhash, hashed)
            if got is None or got.value != key.id.encode():
                raise PinrelayError("an API key with that hash exists", ErrorCode.CONFLICT)

    async def get(self, key_id: str) -> tuple[KeyRec, int] | None:
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(key_id):
            return None
        got = await self.kv.get(self.buckets.keys, key_id)
        return None if got is None else (key_dec.decode(got.value), got.revision)

    async def find(self, key_hash: str) -> ApiKey | None:
        self.kv.api.check_open()
        got = await self.kv.get(self.buckets.keyhash, hash_key(key_hash))
        if got is None:
            return None
        found = await self.get(got.value.decode())
        if found is None or found[0].key_hash != key_hash:
            return None
        return to_key(found[0])

    async def all(self) -> list[ApiKey]:
        self.kv.api.check_open()
        keys: list[ApiKey] = []
        for key_id in await self.kv.keys(self.buckets.keys):
            found = await self.get(key_id)
            if found is not None:
                keys.append(to_key(found[0]))
        keys.sort(key=lambda k: (k.created_ms, k.id))
        return keys

    async def revoke(self, key_id: str) -> bool:
        self.kv.api.check_open()
        for _ in range(MAX_CAS_ATTEMPTS):
            found = await self.get(key_id)
            if found is None or found[0].revoked:
                return False
            rec, revision = found
            new = msgspec.structs.replace(rec, revoked=True)
            if await self.kv.update(self.buckets.keys, key_id, json_enc.encode(new), revision):
                return True
        raise StoreClosed(f"key {key_id}: too many concurrent updates")
