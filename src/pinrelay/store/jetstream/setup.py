"""Connecting, and creating or checking the streams and KV buckets (``open``).

Idempotent: an existing stream (an operator's, or an older relay's) is adopted and
has what the engine needs switched on.  A cursor is a sequence of one stream, so
the partition count of a cluster's data is fixed: each stream records it in its
metadata, and a store opened with another count on the same subjects is refused
(changing it is a migration).  Each stream also takes its chats' expiry schedules
(:mod:`.expiry`): an older relay's stream gets their subjects and
``allow_msg_schedules`` added, and the shared consumer of their notices is created
(or left as it is).  The contacts, unread, groups and subscriptions buckets
take per-message TTLs, and atomic batches (nats-server 2.12+) unless the store is told
not to use them.  A bucket a newer version added (subscriptions, channels) is created when a
store opens a cluster an older one made, as any missing bucket is.  A cluster
that just started may not know its peers
or have a leader yet: set-up is retried (:func:`~.errors.setup_may_retry`).  The
streams and buckets are created or checked at once (:func:`together`), each request
the same whichever relay sends it, so relays opening together still agree.

**Layout versions.**  Each message stream records in its metadata
(:data:`~.layout.LAYOUT_META`) the shape of the store's data: none is layout 1 (before
tenants), 2 has tenants.  ``open`` reads the lowest over the streams
(:attr:`Prepared.layout`), runs the steps from there (the store's ``_migrate``) and
then records :data:`~.layout.LAYOUT_VERSION` (:meth:`Setup.stamp`).  Every step is
idempotent and safe with relays opening together, so a stamp lost to a crash, or to
another relay's concurrent update of the stream, only runs the steps again.  A new
stream is made with the current version (its data has no older shape).  A stream of
a newer layout than this code knows is refused: an older relay must not write records
it cannot read right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar, overload

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream import api, expiry
from pinrelay.store.jetstream.budgets import BUDGETS_BUCKET_TTL_S
from pinrelay.store.jetstream.errors import ApiError, name_in_use, setup_may_retry
from pinrelay.store.jetstream.idempotency import IDEMPOTENCY_TTL_S
from pinrelay.store.jetstream.layout import (
    LAYOUT_META,
    LAYOUT_VERSION,
    PARTITIONS_META,
    Bucket,
    Layout,
)
from pinrelay.store.jetstream.pairing import PAIRING_BUCKET_TTL_S
from pinrelay.store.jetstream.pushreceipts import PUSH_RECEIPTS_BUCKET_TTL_S

PAIRING_TTL = float(PAIRING_BUCKET_TTL_S)
RECEIPTS_TTL = float(PUSH_RECEIPTS_BUCKET_TTL_S)
BUDGETS_TTL = float(BUDGETS_BUCKET_TTL_S)

log = logging.getLogger(__name__)
T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")


async def connect(
    servers: Sequence[str],
    name: str,
    timeout: float,
    error_cb: Callable[[Exception], Awaitable[None]],
    disconnected_cb: Callable[[], Awaitable[None]],
    reconnected_cb: Callable[[], Awaitable[None]],
) -> NATS:
    """A connection that reconnects for ever once made; the first connect is bounded."""
    nc = NATS()
    try:
        await asyncio.wait_for(
            nc.connect(
                list(servers),
                name=name,
                connect_timeout=2,
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                # One line per event, not nats-py's traceback per reconnect attempt.
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            ),
            timeout,
        )
    except Exception as exc:  # connect raises a variety of errors
        with contextlib.suppress(Exception):
            await nc.close()
        raise StoreClosed(f"cannot connect to NATS at {list(servers)}: {exc!r}") from exc
    return nc


async def ensure_bucket(
    js: JetStreamContext, name: str, replicas: int, ttl: float | None
) -> KeyValue:
    """Create a KV bucket (file storage, history 1, reads on its leader) or adopt it."""
    config = KeyValueConfig(
        bucket=name,
        history=1,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=False,
        ttl=ttl,
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if not name_in_use(exc):
            raise
        return await js.key_value(name)


@overload
async def together(a: Awaitable[A], b: Awaitable[B], c: Awaitable[T], /) -> tuple[A, B, T]: ...
@overload
async def together(*steps: Awaitable[T]) -> tuple[T, ...]: ...
async def together(*steps: Awaitable[Any]) -> tuple[Any, ...]:
    """Run ``steps`` at once; their results in order.

    The first failure cancels the rest (a request cancelled in flight may still be
    done by the server: every step is idempotent, and :meth:`Setup._retrying` runs
    them all again) and is raised itself, not in an ExceptionGroup; of several, one
    that is not worth retrying (:func:`~.errors.setup_may_retry`) first, so a refusal
    is not retried as a passing failure would be.
    """
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(step)) for step in steps]
    except BaseExceptionGroup as failed:
        leaves = _leaves(failed)
        for exc in leaves:
            if isinstance(exc, Exception) and not setup_may_retry(exc):
                raise exc from None
        raise leaves[0] from None
    return tuple(task.result() for task in tasks)


async def settling(op: Callable[[], Awaitable[T]], deadline: float, what: str) -> T:
    """``op()``, tried again every 0.5 s while it fails as a settling cluster does
    (:func:`~.errors.setup_may_retry`); an attempt begun after ``deadline``
    (monotonic) is the last, and its error is raised.

    So a request that times out (10 s, as long as the deadline often is) after being
    sent in time is always tried once more.
    """
    while True:
        began = time.monotonic()
        try:
            return await op()
        except (TimeoutError, nats.errors.Error, ApiError) as exc:
            if not setup_may_retry(exc) or began > deadline:
                raise
            log.info("%s: %r; retrying", what, exc)
            await asyncio.sleep(0.5)


async def _awaited(step: Awaitable[T]) -> T:
    return await step


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def delete_streams(js: JetStreamContext, names: Sequence[str], timeout: float = 30) -> None:
    """Delete the streams ``names`` at once (those missing are gone already), each
    tried again for ``timeout`` s while the cluster settles (a delete whose answer
    timed out may have been done: then the next finds it gone)."""
    deadline = time.monotonic() + timeout

    async def delete(name: str) -> None:
        async def once() -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)

        await settling(once, deadline, f"deleting {name}")

    await together(*(delete(name) for name in names))


class Prepared(NamedTuple):
    """What :meth:`Setup.run` found the streams and buckets able to do."""

    #: Appends may be atomic batches (every message stream allows them).
    atomic: bool
    #: The contacts, unread, groups and subscriptions buckets take atomic batches
    #: (:mod:`.contacts`, :mod:`.unread`, :mod:`.groups`, :mod:`.subscriptions`); else
    #: their writes go one by one.
    bucket_batches: bool
    #: Chat messages get expiry schedules (:mod:`.expiry`): appends are atomic and
    #: every stream takes schedules (nats-server 2.12+).
    expiry: bool = False
    #: The oldest data layout a stream records (module doc, "Layout versions").
    layout: int = LAYOUT_VERSION


class Setup:
    """Creates or checks one store's streams and buckets."""

    def __init__(
        self, layout: Layout, replicas: int, want_atomic: bool, request_timeout: float
    ) -> None:
        self.layout = layout
        self.replicas = replicas
        self.want_atomic = want_atomic
        self.request_timeout = request_timeout

    async def run(self, nc: NATS, js: JetStreamContext, timeout: float) -> Prepared:
        """Set everything up, retrying for ``timeout`` s; what may be atomic.

        Raises StoreClosed when it cannot (the caller closes ``nc``).
        """
        return await self._retrying(lambda: self._prepare(nc, js), timeout)

    async def stamp(self, js: JetStreamContext, timeout: float) -> None:
        """Record :data:`~.layout.LAYOUT_VERSION` on every stream that holds an older one
        (the steps to it are done), retrying for ``timeout`` s; StoreClosed if it cannot."""
        await self._retrying(lambda: self._stamp(js), timeout)

    async def _retrying(self, op: Callable[[], Awaitable[T]], timeout: float) -> T:
        """``op()``, retried while the cluster is settling; StoreClosed if it fails."""
        try:
            return await settling(op, time.monotonic() + timeout, "setting up JetStream")
        except (TimeoutError, nats.errors.Error, ApiError) as exc:
            if isinstance(exc, nats.js.errors.APIError):
                exc = ApiError.of(exc)
            detail = exc.description if isinstance(exc, ApiError) else None
            raise StoreClosed(
                f"cannot set up JetStream ({self.layout.stream}): {detail or repr(exc)}"
            ) from exc

    async def _prepare(self, nc: NATS, js: JetStreamContext) -> Prepared:
        # Every stream and bucket at once: each is a Raft group the cluster forms, about
        # 0.1 s apiece.  After the check of the subjects, so a store refused for them
        # creates nothing.
        existing = await self._check_subjects(nc)
        buckets = self.layout.buckets
        batched = [buckets.contacts, buckets.unread, buckets.groups, buckets.subscriptions]
        plain = [
            (self.layout.pairing.name, PAIRING_TTL),
            (self.layout.push_receipts.name, RECEIPTS_TTL),
            (self.layout.budgets.name, BUDGETS_TTL),
            *(
                (b, float(IDEMPOTENCY_TTL_S) if b == buckets.idem.name else None)
                for b in self.layout.bucket_names()
                if b not in {bucket.name for bucket in batched}
            ),
        ]
        streams, batches, _ = await together(
            self._ensure_streams(js, existing),
            together(*(self._ensure_batch_bucket(js, b) for b in batched)),
            together(*(ensure_bucket(js, b, self.replicas, ttl) for b, ttl in plain)),
        )
        atomic, schedules, version = streams
        return Prepared(atomic, all(batches), atomic and schedules, version)

    async def _stamp(self, js: JetStreamContext) -> None:
        for name in self.layout.streams:
            have = (await js.stream_info(name)).config
            if layout_of_config(have) < LAYOUT_VERSION:
                have.metadata = {**(have.metadata or {}), LAYOUT_META: str(LAYOUT_VERSION)}
                await js.update_stream(have)
                log.info("stream %s: data layout %d recorded", name, LAYOUT_VERSION)

    async def _ensure_batch_bucket(self, js: JetStreamContext, bucket: Bucket) -> bool:
        """Create or adopt a KV bucket that takes atomic batches if wanted; whether it does.

        Its stream is created with atomic batches on, as nats-py creates a bucket's
        otherwise (history 1, TTLs allowed, leader reads): relays started together
        then all send the same request.  Switching them on afterwards raced with the
        other relays' creates, and the server answered neither for 10 s.  An existing
        bucket without them (made by a store told not to use them) is updated, as is
        one without per-message TTLs (which tombstones and markers carry).
        """
        config = StreamConfig(
            name=bucket.stream,
            subjects=[f"{bucket.prefix}>"],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.NEW,
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_direct=False,
            allow_msg_ttl=True,
            allow_atomic=self.want_atomic or None,
            duplicate_window=120.0,
        )
        try:
            info = await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if not name_in_use(exc):
                raise
            info = await js.stream_info(bucket.stream)
            have = info.config
            if not have.allow_msg_ttl or (self.want_atomic and not have.allow_atomic):
                have.allow_msg_ttl = True
                if self.want_atomic:
                    have.allow_atomic = True
                info = await js.update_stream(have)
        return self.want_atomic and bool(info.config.allow_atomic)

    async def _check_subjects(self, nc: NATS) -> set[str]:
        """Refuse a cluster where other streams store this layout's subjects; the
        layout's streams that exist."""
        layout = self.layout
        prefixes = (layout.prefix, layout.expiry_prefix(0).split(".")[0])
        answers = await together(
            *(
                api.ask(nc, "STREAM.NAMES", {"subject": f"{prefix}.>"}, self.request_timeout)
                for prefix in prefixes
            )
        )
        found = {name for resp in answers for name in resp.get("streams") or []}
        strangers = sorted(found - set(layout.streams))
        if strangers:
            raise StoreClosed(
                f"subjects {layout.prefix}.> are already stored by {', '.join(strangers)}: "
                f"another partition count ({layout.partitions} asked) or another stream name "
                "uses them; changing --partitions is a migration, not a setting"
            )
        return found

    async def _ensure_streams(
        self, js: JetStreamContext, existing: set[str]
    ) -> tuple[bool, bool, int]:
        """Create or check every partition's stream (after :meth:`_check_subjects`);
        whether they take atomic batches, and schedules, and the oldest data layout.

        The ``existing`` streams are checked before any other is created: one made for
        another partition count (3 of 4 partitions' names) refuses the store before
        it adds a stream (the fourth) to the cluster.
        """
        parts = range(self.layout.partitions)
        old = [p for p in parts if self.layout.stream_name(p) in existing]
        new = [p for p in parts if p not in old]
        infos = [
            *await together(*(self._ensure_partition(js, part) for part in old)),
            *await together(*(self._ensure_partition(js, part) for part in new)),
        ]
        # Atomic batch publish and schedules need nats-server 2.12+; older servers
        # drop the flags.
        atomic = all(bool(info.config.allow_atomic) for info in infos)
        schedules = all(bool(info.config.allow_msg_schedules) for info in infos)
        oldest = min(layout_of(info) for info in infos)
        return self.want_atomic and atomic, schedules, oldest

    async def _ensure_partition(self, js: JetStreamContext, part: int) -> StreamInfo:
        """One partition's stream, and the consumer of its expiry notices if it takes
        schedules (unused unless every stream does: :attr:`Prepared.expiry`)."""
        info = await self._ensure_stream(js, part)
        if self.want_atomic and info.config.allow_msg_schedules:
            await js.add_consumer(
                self.layout.stream_name(part), expiry.consumer_config(self.layout, part)
            )
        return info

    async def _ensure_stream(self, js: JetStreamContext, part: int) -> StreamInfo:
        """Create or adopt one stream."""
        layout = self.layout
        name = layout.stream_name(part)
        config = StreamConfig(
            name=name,
            subjects=layout.stream_subjects(part),
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            allow_rollup_hdrs=True,
            allow_msg_ttl=True,
            allow_direct=True,
            allow_atomic=self.want_atomic or None,
            allow_msg_schedules=self.want_atomic or None,
            duplicate_window=120.0,
            metadata={
                PARTITIONS_META: str(layout.partitions),
                LAYOUT_META: str(LAYOUT_VERSION),
            },
        )
        try:
            info = await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if not name_in_use(exc):
                raise
            # An operator's (or an older relay's) stream: keep it, switch on what we need.
            info = await js.stream_info(name)
            have = info.config
            made_for = (have.metadata or {}).get(PARTITIONS_META, str(layout.partitions))
            if made_for != str(layout.partitions):
                raise StoreClosed(
                    f"stream {name} was made for {made_for} partitions, not "
                    f"{layout.partitions}: changing --partitions is a migration, not a setting"
                ) from exc
            if layout_of(info) > LAYOUT_VERSION:
                raise StoreClosed(
                    f"stream {name} holds data of layout {layout_of(info)}, newer than this "
                    f"relay knows ({LAYOUT_VERSION}): run the newer pinrelay"
                ) from exc
            subjects = list(have.subjects or [])
            missing = [s for s in layout.stream_subjects(part) if s not in subjects]
            if (
                missing
                or not (have.allow_rollup_hdrs and have.allow_msg_ttl and have.allow_direct)
                or (self.want_atomic and not (have.allow_atomic and have.allow_msg_schedules))
            ):
                have.subjects = subjects + missing
                have.allow_rollup_hdrs = True
                have.allow_msg_ttl = True
                have.allow_direct = True
                if self.want_atomic:
                    have.allow_atomic = True
                    have.allow_msg_schedules = True
                info = await js.update_stream(have)
        return info


def layout_of_config(config: StreamConfig) -> int:
    """The data layout a stream's config records (module doc, "Layout versions")."""
    raw = (config.metadata or {}).get(LAYOUT_META, "1")
    try:
        return int(raw)
    except ValueError:
        raise StoreClosed(f"stream {config.name}: layout {raw!r} is not a number") from None


def layout_of(info: StreamInfo) -> int:
    return layout_of_config(info.config)
