"""Records cached in each relay, kept right by a watch on their KV bucket.

A device record or an API key is read on every link hello, inbox call and push;
read from the bucket's leader each time, that was about a third of a message's
round trips (issue 12).  Each relay now keeps the records it read in a bounded
cache, and follows the bucket with an ordered consumer from the moment the cache
is switched on: every later write or removal of a cached key replaces or drops
its entry.

Why an entry is never stale for long:

- the watch delivers every change after it began, in order (an ordered consumer
  resumes after the last sequence it delivered, across reconnects and leader
  changes), so a cached entry is replaced within the watch's lag (milliseconds;
  seconds while a leader is elected, which the relay's other writes wait out too);
- a read that began before the watch was live, or during which the watch saw a
  change of that key, is returned but not cached (:meth:`RecordCache.begin`);
- a change older than the cached revision is ignored (the leader read was newer).

Bounded: at most ``size`` entries, least recently used first out.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from nats.aio.msg import Msg as NatsMsg
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext

from pinrelay.store.jetstream.layout import Bucket

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Cached records per cache, at most (each a few hundred bytes).
CACHE_SIZE = 100_000
#: Seconds between the watch's idle heartbeats; two missed ones re-create it.
WATCH_HEARTBEAT_S = 2.0


@dataclass(slots=True)
class Cached(Generic[T]):
    value: T
    revision: int


class RecordCache(Generic[T]):
    """Key → (record, revision), filled by leader reads, changed by the watch."""

    def __init__(self, decode: Callable[[bytes], T], size: int = CACHE_SIZE) -> None:
        self.decode = decode
        self.size = size
        self._entries: OrderedDict[str, Cached[T]] = OrderedDict()
        #: Keys being read now → the newest revision the watch saw meanwhile (0: none).
        self._reading: dict[str, int] = {}
        #: Whether the watch runs; entries are kept and used only while it does.
        self.live = False
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Cached[T] | None:
        if not self.live:
            return None
        got = self._entries.get(key)
        if got is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return got

    async def through(
        self, key: str, load: Callable[[], Awaitable[Cached[T] | None]]
    ) -> Cached[T] | None:
        """The cached record of ``key``, else ``load()`` (a leader read), cached if it may be."""
        cached = self.get(key)
        if cached is not None:
            return cached
        caching = self.begin(key)
        try:
            got = await load()
        except BaseException:
            if caching:
                self.abandon(key)
            raise
        if caching:
            self.fill(key, None if got is None else got.value, 0 if got is None else got.revision)
        return got

    def begin(self, key: str) -> bool:
        """A leader read of ``key`` starts; False if its result must not be cached."""
        if not self.live:
            return False
        self._reading.setdefault(key, 0)
        return True

    def fill(self, key: str, value: T | None, revision: int) -> None:
        """The read begun with :meth:`begin` returned (value None: no such key)."""
        seen = self._reading.pop(key, 0)
        if not self.live or seen > revision:
            self._entries.pop(key, None)  # changed while we read: read again next time
            return
        if value is None:
            self._entries.pop(key, None)
            return
        self.put(key, value, revision)

    def abandon(self, key: str) -> None:
        """The read begun with :meth:`begin` failed."""
        self._reading.pop(key, None)

    def put(self, key: str, value: T, revision: int) -> None:
        """A record this relay just wrote (the revision its write got)."""
        if not self.live:
            return
        got = self._entries.get(key)
        if got is not None and got.revision > revision:
            return
        self._entries[key] = Cached(value, revision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def changed(self, key: str, raw: bytes | None, revision: int) -> None:
        """The watch saw ``key`` written (``raw``) or removed (None) at ``revision``."""
        if key in self._reading:
            self._reading[key] = max(self._reading[key], revision)
        got = self._entries.get(key)
        if got is None or got.revision >= revision:
            return
        if raw is None:
            del self._entries[key]
            return
        try:
            got.value, got.revision = self.decode(raw), revision
        except Exception:  # not ours to judge here: read it from the leader next time
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
        self._reading.clear()

    def __len__(self) -> int:
        return len(self._entries)


_REMOVED = (b"DEL", b"PURGE")


class Follower(Protocol):
    """What a :class:`Watch` tells of its bucket (a :class:`RecordCache` is one)."""

    live: bool

    def changed(self, key: str, raw: bytes | None, revision: int) -> None: ...

    def clear(self) -> None: ...


class Watch:
    """Follows one KV bucket from now on, telling a :class:`Follower` each change."""

    def __init__(self, bucket: Bucket, follower: Follower) -> None:
        self.bucket = bucket
        self.follower = follower
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self, js: JetStreamContext) -> None:
        """Subscribe (an ordered consumer, new changes only), then switch the follower on."""
        self._sub = await js.subscribe(
            f"{self.bucket.prefix}>",
            stream=self.bucket.stream,
            cb=self._on_change,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            idle_heartbeat=WATCH_HEARTBEAT_S,
        )
        self.follower.clear()
        self.follower.live = True

    async def stop(self) -> None:
        self.follower.live = False
        self.follower.clear()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_change(self, msg: NatsMsg) -> None:
        key = msg.subject.removeprefix(self.bucket.prefix)
        try:
            revision = msg.metadata.sequence.stream
        except Exception:  # not a JetStream delivery: nothing to learn from it
            return
        op = (msg.headers or {}).get("KV-Operation", "").encode()
        self.follower.changed(key, None if op in _REMOVED else msg.data, revision)
