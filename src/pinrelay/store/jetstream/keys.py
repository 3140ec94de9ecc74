"""API keys in their KV buckets: ``_keys`` (key id → JSON) and the index
``_keyhash`` (sha256(key hash) → key id), so a request's key is found in two reads.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import ApiKey
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.devices import MAX_CAS_ATTEMPTS
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Buckets
from pinrelay.store.jetstream.records import (
    SAFE_TOKEN,
    KeyRec,
    hash_key,
    json_enc,
    key_dec,
    key_rec,
    to_key,
)


class FoundKey(NamedTuple):
    """An API key record and the revision a compare-and-set of it must name."""

    rec: KeyRec
    revision: int


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

    async def get(self, key_id: str) -> FoundKey | None:
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(key_id):
            return None
        got = await self.kv.get(self.buckets.keys, key_id)
        return None if got is None else FoundKey(key_dec.decode(got.value), got.revision)

    async def find(self, key_hash: str) -> ApiKey | None:
        self.kv.api.check_open()
        got = await self.kv.get(self.buckets.keyhash, hash_key(key_hash))
        if got is None:
            return None
        found = await self.get(got.value.decode())
        if found is None or found.rec.key_hash != key_hash:
            return None
        return to_key(found.rec)

    async def all(self) -> list[ApiKey]:
        self.kv.api.check_open()
        keys: list[ApiKey] = []
        for key_id in await self.kv.keys(self.buckets.keys):
            found = await self.get(key_id)
            if found is not None:
                keys.append(to_key(found.rec))
        keys.sort(key=lambda k: (k.created_ms, k.id))
        return keys

    async def revoke(self, key_id: str) -> bool:
        self.kv.api.check_open()
        for _ in range(MAX_CAS_ATTEMPTS):
            found = await self.get(key_id)
            if found is None or found.rec.revoked:
                return False
            rec, revision = found
            new = msgspec.structs.replace(rec, revoked=True)
            if await self.kv.update(self.buckets.keys, key_id, json_enc.encode(new), revision):
                return True
        raise StoreClosed(f"key {key_id}: too many concurrent updates")
