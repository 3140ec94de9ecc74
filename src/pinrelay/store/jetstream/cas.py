"""One KV key changed by compare-and-set, retried on conflict (:mod:`.channels`,
:mod:`.broadcasts`).

Read on the bucket's leader, changed by a pure function, written naming the revision
read (0: absent).  A lost compare-and-set (another relay wrote in between, or this
write was retried after its answer was lost and lost to itself) reads again and
recomputes, after a short random pause: a change that was in fact applied then finds
nothing left to do.  Within one relay, changes of one key take turns (a lock per
key), so only relays race: a popular channel's shard taking joins through one relay
costs no lost compare-and-sets.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import msgspec

from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.kv import KeyedLocks, Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import json_enc
from pinrelay.store.jetstream.unread import IN_FLIGHT, bounded

T = TypeVar("T")
#: Attempts of one change before the key is declared too busy (StoreClosed: 503).
MAX_ATTEMPTS = 50


class Keyed(Generic[T]):
    """The JSON records of one kind under keys of one bucket."""

    def __init__(self, kv: Kv, bucket: Bucket, kind: type[T]) -> None:
        self.kv = kv
        self.bucket = bucket
        self.dec: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind)
        self._locks = KeyedLocks()

    async def get(self, key: str) -> T | None:
        """The record under ``key`` on the leader; None if there is none."""
        got = await self.kv.get(self.bucket, key)
        return None if got is None else self.dec.decode(got.value)

    async def many(self, keys: Sequence[str]) -> list[T | None]:
        """The records under ``keys``, in order, :data:`~.unread.IN_FLIGHT` reads at once."""

        def read(key: str) -> Callable[[], Awaitable[T | None]]:
            return lambda: self.get(key)

        return await bounded([read(k) for k in keys], IN_FLIGHT)

    async def change(
        self, key: str, change: Callable[[T | None], T | None]
    ) -> tuple[T | None, bool]:
        """Apply ``change`` (None: nothing to write) to the record under ``key`` by
        compare-and-set: the record after, and whether this call wrote it.
        ``change`` may raise (a quota): nothing is written then."""
        async with self._locks.hold(key):
            for attempt in range(MAX_ATTEMPTS):
                got = await self.kv.get(self.bucket, key)
                old = None if got is None else self.dec.decode(got.value)
                new = change(old)
                if new is None:
                    return old, False
                revision = 0 if got is None else got.revision
                raw = json_enc.encode(new)
                if await self.kv.put(self.bucket, key, raw, revision) is not None:
                    return new, True
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise StoreClosed(f"{self.bucket.name} {key}: too many concurrent changes")
