"""Service levels, make-good claims and codes on the cluster (core/credits.py,
core/makegood.py), in ``<bucket_prefix>_channels`` beside :mod:`.channels`' keys:

- ``sl.<tenant>``: the tenant's service level (JSON); removed when unset.
- ``mg.<incident>.<tenant>``: the broadcast id holding that make-good's claim,
  created by a compare-and-set on "absent" (the first claim wins).
- ``cg.<broadcast>.<PIN>``: the code issued to that device for that make-good,
  created the same way, so a page issued again (a fan-out resumed after a crash,
  on any relay) finds the first code;
- ``dd.<day start ms>``: a UTC day's delay counts per tenant (delay_days.py),
  written whole (any relay sums a day alike, so the first write stands); a key a
  day, never pruned (about 400 bytes each);
- ``code.<code>``: the code's record (:class:`CodeRecord`); its redemption is a
  compare-and-set that sets ``redeemed_ms`` only if unset, with a random nonce of the
  redemption, so one whose answer was lost, and that finds the code redeemed when it
  reads again, knows it was its own (DECISIONS 62).

:meth:`Credits.tenant_devices` has no index to read: it lists every device's key
(the devices bucket, one request on the leader per 100,000) and reads records
(cached) in PIN order until it has a page of the tenant's.  A make-good costs that
per page: rare, and bounded by the fleet's size.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec

from pinrelay.core.credits import ServiceLevel
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.makegood import Code, is_code
from pinrelay.store.jetstream.cas import Keyed
from pinrelay.store.jetstream.devices import Devices, FoundDevice
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN
from pinrelay.store.jetstream.unread import IN_FLIGHT, bounded

C = TypeVar("C", bound=Code)


class Claim(msgspec.Struct, frozen=True):
    broadcast: str


def _unless(code: C) -> Callable[[C | None], C | None]:
    """A change that writes ``code`` where there is none."""
    return lambda old: code if old is None else None


class CodeRecord(Code, frozen=True, kw_only=True):
    """A code as the cluster keeps it: with the nonce of the redemption that used it."""

    redeemed_by: str | None = None


def _plain(record: CodeRecord | None) -> Code | None:
    """The code as the Store contract gives it (without the nonce)."""
    if record is None:
        return None
    return Code(**{f: getattr(record, f) for f in Code.__struct_fields__})


class Credits:
    """The keys of the module doc."""

    def __init__(self, kv: Kv, bucket: Bucket, devices: Devices) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.devices = devices
        self.levels = Keyed(kv, bucket, ServiceLevel)
        self.claims = Keyed(kv, bucket, Claim)
        self.codes = Keyed(kv, bucket, Code)
        self.records = Keyed(kv, bucket, CodeRecord)

    def _token(self, value: str, what: str) -> str:
        if not SAFE_TOKEN.match(value):
            raise PinrelayError(f"{what} {value!r}", ErrorCode.INVALID)
        return value

    async def put_level(self, tenant: str, level: ServiceLevel | None) -> None:
        self.api.check_open()
        key = f"sl.{self._token(tenant, 'tenant')}"
        if level is None:
            await self.kv.remove(self.bucket, key)
        else:
            await self.levels.change(key, lambda _old: level)

    async def all_levels(self) -> dict[str, ServiceLevel]:
        self.api.check_open()
        keys = await self.kv.keys(self.bucket, "sl.*")
        found = await self.levels.many(keys)
        return {k.removeprefix("sl."): v for k, v in zip(keys, found, strict=True) if v is not None}

    async def tenant_devices(self, tenant: str, after: str, limit: int) -> list[str]:
        self.api.check_open()
        pins = sorted(k for k in await self.kv.keys(self.devices.bucket) if k > after)
        out: list[str] = []
        step = max(limit, 100)
        for at in range(0, len(pins), step):
            wave = pins[at : at + step]
            found = await bounded([self._reader(p) for p in wave], IN_FLIGHT)
            for pin, got in zip(wave, found, strict=True):
                if got is not None and got.rec.tenant == tenant:
                    out.append(pin)
                    if len(out) >= limit:
                        return out
        return out

    def _reader(self, pin: str) -> Callable[[], Awaitable[FoundDevice | None]]:
        return lambda: self.devices.get(pin)

    async def claim(self, incident: str, tenant: str, broadcast: str) -> str:
        self.api.check_open()
        key = f"mg.{self._token(incident, 'incident')}.{self._token(tenant, 'tenant')}"
        held, _ = await self.claims.change(
            key, lambda old: Claim(broadcast) if old is None else None
        )
        assert held is not None
        return held.broadcast

    async def issue(self, codes: Sequence[Code]) -> list[Code]:
        self.api.check_open()
        out: list[Code] = []
        for code in codes:
            key = f"cg.{self._token(code.broadcast, 'broadcast')}.{self._token(code.pin, 'PIN')}"
            held, wrote = await self.codes.change(key, _unless(code))
            assert held is not None
            if wrote or await self.records.get(f"code.{held.code}") is None:
                # The index first, then the record: a crash between them leaves an
                # index whose record the next issue (the page done again) writes.
                record = CodeRecord(**msgspec.structs.asdict(held))
                await self.records.change(f"code.{held.code}", _unless(record))
            out.append(msgspec.structs.replace(held, redeemed_ms=None))
        return out

    async def get_code(self, code: str) -> Code | None:
        self.api.check_open()
        if not is_code(code):
            return None
        return _plain(await self.records.get(f"code.{code}"))

    async def redeem(self, code: str, now_ms: int) -> tuple[Code | None, bool]:
        self.api.check_open()
        if not is_code(code):
            return None, False
        nonce = uuid.uuid4().hex
        after, wrote = await self.records.change(
            f"code.{code}",
            lambda old: (
                None
                if old is None or old.redeemed_ms is not None
                else msgspec.structs.replace(old, redeemed_ms=now_ms, redeemed_by=nonce)
            ),
        )
        # Found redeemed by this very call: its write landed, and its answer was lost.
        return _plain(after), wrote or (after is not None and after.redeemed_by == nonce)

    async def put_delay_day(self, day_ms: int, delays: dict[str, tuple[int, ...]]) -> None:
        self.api.check_open()
        # Absent only: two relays summing a day write the same counts.
        await self.kv.create(self.bucket, f"dd.{int(day_ms)}", _days_enc.encode(delays))

    async def delay_days(self, days_ms: Sequence[int]) -> dict[int, dict[str, tuple[int, ...]]]:
        self.api.check_open()

        def read(day: int) -> Callable[[], Awaitable[dict[str, tuple[int, ...]] | None]]:
            async def one() -> dict[str, tuple[int, ...]] | None:
                got = await self.kv.get(self.bucket, f"dd.{int(day)}")
                return None if got is None else _days_dec.decode(got.value)

            return one

        days = list(days_ms)
        found = await bounded([read(d) for d in days], IN_FLIGHT)
        return {d: f for d, f in zip(days, found, strict=True) if f is not None}


_days_enc = msgspec.json.Encoder()
_days_dec = msgspec.json.Decoder(dict[str, tuple[int, ...]])
