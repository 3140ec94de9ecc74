"""Pairing codes in their KV bucket (``<bucket_prefix>_pairing``, code hash → JSON).

A code is created once (compare-and-set on "absent") and used once: redeeming
reads the record from the bucket's leader and overwrites it with a used record
with compare-and-set on the revision it read, so of any number of relays trying
at once exactly one wins; the others find the subject moved on and answer "used".
The used record keeps a random nonce, so a redemption whose acknowledgement was
lost (and whose retry then lost the compare-and-set to itself) still knows it won.
A compare-and-set refused while the leader still reads the code unused is not
"used": a leader without its quorum refuses so for its own proposal it cannot
commit (DECISIONS 62); that is StoreClosed (503, retry), as is a create refused
while the leader reads no record.
The bucket's max age (an hour past a code's 10 minutes) forgets old records: no
sweep needed.

A device's newest code replaces its earlier ones: once a code's record is written,
the key ``pin_<PIN>`` is set to its hash (a plain write: of codes made at once, the
last write in the stream wins, so no relay's clock decides).  Redeeming a code that
key does not name answers "replaced".  A code whose ``pin_`` write failed (its maker
got an error, not the code) is thus replaced from the start if the device had an
earlier one; a key forgotten by the max age named a code expired long ago.
"""

from __future__ import annotations

import uuid

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import PAIRING_KEEP_MS, Redemption, StoreClosed
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN, json_enc

#: The bucket's max age: longer than any code lives, plus the time a used or expired
#: code is still reported as such.
PAIRING_BUCKET_TTL_S = 600 + PAIRING_KEEP_MS // 1000


class PairingRec(msgspec.Struct, omit_defaults=True):
    pin: str
    expires_ms: int
    #: Set once the code is used, with the nonce of the redemption that used it.
    used_ms: int | None = None
    used_by: str | None = None


_dec = msgspec.json.Decoder(PairingRec)


def _newest_key(pin: str) -> str:
    """The key naming the device's newest code (a code's key is a hex hash)."""
    return f"pin_{pin}"


class Pairings:
    """Create and redeem pairing codes."""

    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.bucket = bucket

    async def create(self, code_hash: str, pin: str, expires_ms: int) -> None:
        await self._create(code_hash, pin, expires_ms)
        await self.kv.set(self.bucket, _newest_key(pin), code_hash.encode())

    async def _create(self, code_hash: str, pin: str, expires_ms: int) -> None:
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(code_hash):
            raise PinrelayError("a pairing code's hash must be a KV key", ErrorCode.INVALID)
        rec = PairingRec(pin, expires_ms)
        if await self.kv.create(self.bucket, code_hash, json_enc.encode(rec)) is None:
            # A create retried after a lost acknowledgement finds its own record.
            got = await self.kv.get(self.bucket, code_hash)
            if got is None:  # "present" but not committed (module doc)
                raise StoreClosed(f"pairing code {code_hash[:8]} not committed yet")
            if _dec.decode(got.value) != rec:
                raise PinrelayError("that pairing code exists", ErrorCode.CONFLICT)

    async def redeem(self, code_hash: str, now_ms: int) -> Redemption:
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(code_hash):
            return Redemption("unknown")
        got = await self.kv.get(self.bucket, code_hash)
        if got is None:
            return Redemption("unknown")
        rec = _dec.decode(got.value)
        if rec.used_ms is not None:
            return Redemption("used")
        if rec.expires_ms <= now_ms:
            return Redemption("expired")
        newest = await self.kv.get(self.bucket, _newest_key(rec.pin))
        if newest is not None and newest.value != code_hash.encode():
            return Redemption("replaced")
        nonce = uuid.uuid4().hex
        used = msgspec.structs.replace(rec, used_ms=now_ms, used_by=nonce)
        if await self.kv.update(self.bucket, code_hash, json_enc.encode(used), got.revision):
            return Redemption("redeemed", rec.pin)
        # Lost the compare-and-set: to another redemption, or to our own first attempt
        # whose answer was lost (Api.call retried the publish).
        again = await self.kv.get(self.bucket, code_hash)
        now = None if again is None else _dec.decode(again.value)
        if now is not None and now.used_by == nonce:
            return Redemption("redeemed", rec.pin)
        if now is not None and now.used_ms is None:  # refused, yet unused (module doc)
            raise StoreClosed(f"pairing code {code_hash[:8]}: redemption not committed yet")
        return Redemption("used")
