"""Device records in their KV bucket, each change a compare-and-set.

A device record (``<bucket_prefix>_devices``, PIN → JSON) carries a random
``gen``; each message carries its device's gen, and a read skips other gens, so a
re-created PIN never sees its predecessor's messages.  ``last_cursor`` is raised
after a publish is acknowledged (coalesced per device, :meth:`Devices.raise_last_cursor`)
and by any read that finds a higher one; ``acked_cursor`` by an ack.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.kv import KeyedLocks, Kv
from pinrelay.store.jetstream.layout import Buckets
from pinrelay.store.jetstream.records import (
    SAFE_TOKEN,
    DeviceRec,
    device_dec,
    json_enc,
)

#: Compare-and-set attempts before a record is declared too busy.
MAX_CAS_ATTEMPTS = 100


class FoundDevice(NamedTuple):
    """A device record and the revision a compare-and-set of it must name."""

    rec: DeviceRec
    revision: int


class Devices:
    """Read, create, change and remove device records."""

    def __init__(self, kv: Kv, buckets: Buckets) -> None:
        self.kv = kv
        self.bucket = buckets.devices
        self._locks = KeyedLocks()
        self._last_written: dict[str, int] = {}
        self._last_wanted: dict[str, int] = {}

    async def get(self, pin: str) -> FoundDevice | None:
        """The record of ``pin`` and its revision; None if there is none."""
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return None
        got = await self.kv.get(self.bucket, pin)
        if got is None:
            return None
        return FoundDevice(device_dec.decode(got.value), got.revision)

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
            if got is None or got.rec.gen != rec.gen:
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
