"""API keys in their KV buckets: ``_keys`` (key id → JSON) and the index
``_keyhash`` (sha256(key hash) → key id), so a request's key is found in two reads,
done once per relay: the index never changes, and key records are cached and kept
right by a watch on ``_keys`` (:mod:`.watch`), so a revocation reaches every relay
within the watch's lag.
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
from pinrelay.store.jetstream.watch import CACHE_SIZE, Cached, RecordCache, Watch


class FoundKey(NamedTuple):
    """An API key record and the revision a compare-and-set of it must name."""

    rec: KeyRec
    revision: int


class Keys:
    """API keys and their hash index."""

    def __init__(self, kv: Kv, buckets: Buckets) -> None:
        self.kv = kv
        self.buckets = buckets
        self.cache: RecordCache[KeyRec] = RecordCache(key_dec.decode)
        self.watch = Watch(buckets.keys, self.cache)
        #: sha256(key hash) → key id: the index is written once and never changes.
        self._ids: dict[str, str] = {}

    async def create(self, key: ApiKey) -> None:
        self.kv.api.check_open()
        b = self.buckets
        rec = key_rec(key)
        if not SAFE_TOKEN.match(key.id):
            raise PinrelayError(f"invalid key id {key.id!r}", ErrorCode.INVALID)
        if not await self.kv.create(b.keys, key.id, json_enc.encode(rec)):
            got = await self.kv.get(b.keys, key.id)
            if got is None:  # refused as present, none read: uncommitted (DECISIONS 62)
                raise StoreClosed(f"API key {key.id} not committed yet")
            if key_dec.decode(got.value) != rec:
                raise PinrelayError(f"API key {key.id} exists", ErrorCode.CONFLICT)
        hashed = hash_key(key.key_hash)
        if not await self.kv.create(b.keyhash, hashed, key.id.encode()):
            got = await self.kv.get(b.keyhash, hashed)
            if got is None:  # refused as present, none read: uncommitted (DECISIONS 62)
                raise StoreClosed(f"API key {key.id}'s hash not committed yet")
            if got.value != key.id.encode():
                raise PinrelayError("an API key with that hash exists", ErrorCode.CONFLICT)

    async def get(self, key_id: str) -> FoundKey | None:
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(key_id):
            return None
        got = await self.kv.get(self.buckets.keys, key_id)
        return None if got is None else FoundKey(key_dec.decode(got.value), got.revision)

    async def find(self, key_hash: str) -> ApiKey | None:
        """The key whose secret hashes to ``key_hash`` (cached; see the module doc)."""
        self.kv.api.check_open()
        hashed = hash_key(key_hash)
        key_id = self._ids.get(hashed)
        if key_id is None:
            got = await self.kv.get(self.buckets.keyhash, hashed)
            if got is None:
                return None  # not remembered: a wrong key must not fill the memory
            key_id = got.value.decode()
            if len(self._ids) >= CACHE_SIZE:
                self._ids.pop(next(iter(self._ids)))
            self._ids[hashed] = key_id
        found = await self._cached(key_id)
        if found is None or found.key_hash != key_hash:
            return None
        return to_key(found)

    async def _cached(self, key_id: str) -> KeyRec | None:
        async def load() -> Cached[KeyRec] | None:
            found = await self.get(key_id)
            return None if found is None else Cached(found.rec, found.revision)

        got = await self.cache.through(key_id, load)
        return None if got is None else got.value

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
            written = await self.kv.update(
                self.buckets.keys, key_id, json_enc.encode(new), revision
            )
            if written is not None:
                self.cache.put(key_id, new, written)
                return True
        raise StoreClosed(f"key {key_id}: too many concurrent updates")
