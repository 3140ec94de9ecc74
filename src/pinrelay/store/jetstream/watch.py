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
- a change older than the cached revision is ignored (the leader read was newer);
- a removal is a purge of the key's subject, which writes nothing a watch could
  see: the remover announces it on a core NATS subject every relay's cache listens
  to (:meth:`Watch.announce_removal`), and a relay that lost its connection, and so
  perhaps an announcement, empties its caches when it is back.

Bounded: at most ``size`` entries, least recently used first out; a cache of
records whose size varies (a device's contacts) weighs each one (``weigh``) and
holds at most ``size`` in weight instead.

A cache may also remember keys that have no record (``absent_size`` of them, least
recently asked first out): the device cache does, so that a push to a PIN with no
device is answered from memory as a push to another tenant's (cached) device is,
not after a leader read that would time it apart (PROTOCOL "Tenants": the same
answer and timing).  Any write of such a key the watch sees forgets its absence.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext

from pinrelay.store.jetstream.layout import Bucket

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Cached records per cache, at most (each a few hundred bytes).
CACHE_SIZE = 100_000
#: What a removal counts as, for a read in flight: newer than anything it returns.
REMOVED_REVISION = 1 << 62
#: Seconds between the watch's idle heartbeats; two missed ones re-create it.
WATCH_HEARTBEAT_S = 2.0


@dataclass(slots=True)
class Cached(Generic[T]):
    value: T
    revision: int
    #: What the entry counts for against the cache's ``size`` (set by the cache).
    weight: int = 1


def _one(value: object) -> int:
    return 1


class RecordCache(Generic[T]):
    """Key → (record, revision), filled by leader reads, changed by the watch."""

    def __init__(
        self,
        decode: Callable[[bytes], T],
        size: int = CACHE_SIZE,
        weigh: Callable[[T], int] = _one,
        absent_size: int = 0,
    ) -> None:
        self.decode = decode
        #: Keys known to have no record (module doc), at most ``absent_size``.
        self.absent_size = absent_size
        self._absent: OrderedDict[str, None] = OrderedDict()
        #: Most weight held (by default each entry weighs 1: most entries).
        self.size = size
        self.weigh = weigh
        self._entries: OrderedDict[str, Cached[T]] = OrderedDict()
        #: The entries' weights, summed.
        self.weight = 0
        #: Keys being read now → [readers, newest revision the watch saw meanwhile].
        self._reading: dict[str, list[int]] = {}
        #: Bumped by :meth:`clear`: a read begun before it is not cached.
        self._epoch = 0
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
        if self.live and key in self._absent:
            self._absent.move_to_end(key)
            self.hits += 1
            return None
        token = self.begin(key)
        try:
            got = await load()
        except BaseException:
            if token is not None:
                self._end(key)
            raise
        if token is not None:
            value, revision = (None, 0) if got is None else (got.value, got.revision)
            self.fill(key, value, revision, token)
        return got

    def begin(self, key: str) -> int | None:
        """A leader read of ``key`` starts: a token for :meth:`fill`, or None if its
        result must not be cached."""
        if not self.live:
            return None
        reading = self._reading.setdefault(key, [0, 0])
        reading[0] += 1
        return self._epoch

    def _end(self, key: str) -> int:
        """One read of ``key`` is over: the newest revision seen while reads ran."""
        reading = self._reading.get(key)
        if reading is None:
            return 0
        reading[0] -= 1
        if reading[0] <= 0:
            del self._reading[key]
        return reading[1]

    def fill(self, key: str, value: T | None, revision: int, token: int) -> None:
        """The read begun with :meth:`begin` returned (value None: no such key)."""
        seen = self._end(key)
        if not self.live or token != self._epoch or seen > revision:
            self._pop(key)  # changed while we read: read again next time
            return
        if value is None:
            self._pop(key)
            if self.absent_size:
                self._absent[key] = None
                self._absent.move_to_end(key)
                while len(self._absent) > self.absent_size:
                    self._absent.popitem(last=False)
            return
        self.put(key, value, revision)

    def put(self, key: str, value: T, revision: int) -> None:
        """A record this relay just wrote (the revision its write got)."""
        if not self.live:
            return
        self._absent.pop(key, None)
        got = self._entries.get(key)
        if got is not None and got.revision > revision:
            return
        self._pop(key)
        entry = Cached(value, revision, self.weigh(value))
        self._entries[key] = entry
        self.weight += entry.weight
        self._shrink()

    def _pop(self, key: str) -> None:
        got = self._entries.pop(key, None)
        if got is not None:
            self.weight -= got.weight

    def _shrink(self) -> None:
        """Drop the least recently used entries until the weight fits."""
        while self.weight > self.size and self._entries:
            _, got = self._entries.popitem(last=False)
            self.weight -= got.weight

    def drop(self, key: str) -> None:
        self._pop(key)

    def forget(self, key: str) -> None:
        """``key`` was removed (announced): drop it, and what reads in flight return."""
        self._pop(key)
        if key in self._reading:
            self._reading[key][1] = REMOVED_REVISION

    def changed(self, key: str, raw: bytes | None, revision: int) -> None:
        """The watch saw ``key`` written (``raw``) or removed (None) at ``revision``."""
        if key in self._reading:
            self._reading[key][1] = max(self._reading[key][1], revision)
        if raw is not None:
            self._absent.pop(key, None)
        got = self._entries.get(key)
        if got is None or got.revision >= revision:
            return
        if raw is None:
            self._pop(key)
            return
        try:
            value = self.decode(raw)
        except Exception:  # not ours to judge here: read it from the leader next time
            self._pop(key)
            return
        weight = self.weigh(value)
        self.weight += weight - got.weight
        got.value, got.revision, got.weight = value, revision, weight
        self._shrink()

    def clear(self) -> None:
        self._entries.clear()
        self._absent.clear()
        self.weight = 0
        self._reading.clear()
        self._epoch += 1

    def __len__(self) -> int:
        return len(self._entries)


_REMOVED = (b"DEL", b"PURGE")


class Follower(Protocol):
    """What a :class:`Watch` tells of its bucket (a :class:`RecordCache` is one)."""

    live: bool

    def changed(self, key: str, raw: bytes | None, revision: int) -> None: ...

    def forget(self, key: str) -> None: ...

    def clear(self) -> None: ...


class Watch:
    """Follows one KV bucket from now on, telling a :class:`Follower` each change."""

    def __init__(self, bucket: Bucket, follower: Follower, keys: str = ">") -> None:
        self.bucket = bucket
        self.follower = follower
        #: The keys followed, as a subject filter (``*``: one-token keys only).
        self.keys = keys
        self._sub: JetStreamContext.PushSubscription | None = None
        self._removals: Subscription | None = None

    @property
    def removal_subject(self) -> str:
        return f"_pinrelay.removed.{self.bucket.name}"

    async def announce_removal(self, nc: NATS, key: str) -> None:
        """Tell every relay's cache that ``key`` was removed (best effort; see above)."""
        await nc.publish(self.removal_subject, key.encode())

    async def start(self, nc: NATS, js: JetStreamContext) -> None:
        """Subscribe (an ordered consumer, new changes only), then switch the follower on."""
        self._removals = await nc.subscribe(self.removal_subject, cb=self._on_removal)
        self._sub = await js.subscribe(
            self.bucket.subject(self.keys),
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
        for sub in (self._sub, self._removals):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._sub = self._removals = None

    async def _on_removal(self, msg: NatsMsg) -> None:
        self.follower.forget(msg.data.decode(errors="replace"))

    async def _on_change(self, msg: NatsMsg) -> None:
        key = msg.subject.removeprefix(self.bucket.prefix)
        try:
            revision = msg.metadata.sequence.stream
        except Exception:  # not a JetStream delivery: nothing to learn from it
            return
        op = (msg.headers or {}).get("KV-Operation", "").encode()
        self.follower.changed(key, None if op in _REMOVED else msg.data, revision)
