"""KV buckets, read and written on their leader with compare-and-set.

Raw JetStream requests rather than nats-py's ``KeyValue``: a read goes to the
bucket's leader (``STREAM.MSG.GET`` with ``last_by_subj``; the buckets have no
direct gets), listing uses the leader's stream info rather than a consumer (which
may sit on a lagging follower), and a write is a publish with
``Nats-Expected-Last-Subject-Sequence``: the revision it read, or 0 for "absent".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator

from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.api import Api, not_found
from pinrelay.store.jetstream.layout import Bucket


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """A key's latest value and the revision a compare-and-set must name."""

    value: bytes
    revision: int


class Kv:
    """Get, compare-and-set, list, remove and count keys of the store's buckets."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def get(self, bucket: Bucket, key: str) -> Entry | None:
        """The latest value and revision of ``key``, from the bucket's leader."""
        body = {"last_by_subj": bucket.subject(key)}
        resp = await self.api.request_unless(
            f"STREAM.MSG.GET.{bucket.stream}", body, f"read {bucket.name}", not_found
        )
        if resp is None:
            return None
        message = resp["message"]
        hdrs = message.get("hdrs")
        if hdrs:
            raw = base64.b64decode(hdrs)
            if b"KV-Operation: DEL" in raw or b"KV-Operation: PURGE" in raw:
                return None
        return Entry(base64.b64decode(message.get("data") or b""), int(message["seq"]))

    async def put(self, bucket: Bucket, key: str, value: bytes, revision: int) -> int | None:
        """Write ``key`` if its latest revision is ``revision`` (0: absent): the new
        revision, or None if ``key`` moved on.

        A raw publish rather than ``KeyValue.create``: that one re-reads after a
        conflict and raises when the winner's write is not applied yet.
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}

        return await self.api.unless_moved(
            lambda: self.api.publish(bucket.subject(key), value, headers), f"write {bucket.name}"
        )

    async def set(self, bucket: Bucket, key: str, value: bytes) -> int:
        """Write ``key`` whatever its revision (the last write in the stream wins)."""
        subject = bucket.subject(key)
        resp = await self.api.call(
            lambda: self.api.publish(subject, value, {}), f"write {bucket.name}"
        )
        return int(resp["seq"])

    async def create(self, bucket: Bucket, key: str, value: bytes) -> int | None:
        """Create ``key``: its revision, or None if it exists."""
        return await self.put(bucket, key, value, 0)

    async def ensure(self, bucket: Bucket, key: str, value: bytes) -> None:
        """Create ``key`` unless a read on the leader shows it there already.

        A create refused as "present" is believed only of such a read: a leader
        without its quorum refuses a retried create so for its own proposal, which
        it cannot commit ("wrong last sequence", DECISIONS 62).  StoreClosed then.
        """
        if await self.create(bucket, key, value) is None and await self.get(bucket, key) is None:
            raise StoreClosed(f"{bucket.name} {key}: not committed yet")

    async def update(self, bucket: Bucket, key: str, value: bytes, revision: int) -> int | None:
        """Compare-and-set: the new revision, or None if ``key`` moved past ``revision``."""
        return await self.put(bucket, key, value, revision)

    async def keys(self, bucket: Bucket, pattern: str = ">") -> list[str]:
        """The bucket's keys matching ``pattern`` (a subject filter), from its leader.

        Not ``KeyValue.keys()``: that reads through an ephemeral consumer, which may
        sit on a lagging follower.  Removed keys leave no subject (see :meth:`remove`).
        """
        keys: list[str] = []
        while True:
            body = {"subjects_filter": bucket.subject(pattern), "offset": len(keys)}
            resp = await self.api.request(
                f"STREAM.INFO.{bucket.stream}", body, f"list {bucket.name}"
            )
            subjects = resp.get("state", {}).get("subjects") or {}
            keys += [s.removeprefix(bucket.prefix) for s in subjects]
            if not subjects or len(keys) >= int(resp.get("total", 0)):
                return keys

    async def remove(self, bucket: Bucket, key: str) -> None:
        """Remove every revision of ``key`` and leave no marker behind.

        A purge of the subject rather than a KV delete: a delete marker would keep the
        subject (and the key count) alive.  A compare-and-set racing with it fails, as
        the subject's last sequence changed.
        """
        body = {"filter": bucket.subject(key)}
        await self.api.request(f"STREAM.PURGE.{bucket.stream}", body, f"remove from {bucket.name}")

    async def count(self, bucket: Bucket) -> int:
        resp = await self.api.request(f"STREAM.INFO.{bucket.stream}", {}, f"count {bucket.name}")
        return int(resp.get("state", {}).get("num_subjects", 0))


async def cas_pause(attempt: int) -> None:
    """Wait before retrying a lost compare-and-set: a random, growing pause (at most
    0.1 s), so that racing writers through several relays spread out."""
    await asyncio.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
