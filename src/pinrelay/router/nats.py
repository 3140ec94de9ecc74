"""Cluster router: devices linked to any relay of a NATS cluster (DESIGN, "router").

A :class:`~pinrelay.router.base.Router`; the links and waiters this relay holds live
in a :class:`LocalRouter` it keeps (used through its public methods only), plus:

- **New messages.**  The store's feed (:mod:`pinrelay.store.jetstream.feed`)
  brings every relay every new message in stream order; this router follows the
  devices it holds a link or a long-poll for, and hands their messages to them as
  they arrive (``fresh``: in cursor order with no gap, so a caught-up link sends
  them with no read).  A push's own wake-up (:meth:`wake`) therefore does nothing
  here: the feed reaches the device wherever it is linked, with no route lookup.
- **Routes.**  The device → node route lives in a KV bucket (``<prefix>_routes``,
  key PIN, value node id), for kicks and :meth:`is_online`.  A link's attach writes
  it, its detach removes it if it is still ours (compare-and-set on the revision
  written).
- **Kicks.**  Token rotation and deletion kick the device's link wherever it is
  (``<subjects>.node.<node>.kick``).  A link on another node that a new link
  replaces is kicked with the route revision it wrote, so a kick that arrives late
  never closes a newer link.
- **Long-poll waiters.**  A relay holding an inbox long-poll follows the device
  while it waits, so the feed wakes it.  Waiters also re-read the store every
  ``waiter_recheck_s``, a safety net.
- **Live relays.**  Each relay puts its record (node, region, link URL, HTTP URL)
  in ``<prefix>_relays``, a bucket whose entries live ``ttl`` seconds, every
  ``heartbeat`` seconds, and reads everyone's back: :attr:`link_urls`.

Why not hand over what a push stored, as the single relay does: appends finish in
any order (two in flight on one relay, others on other relays), and a hand-off of
cursor 102 before 101 arrived would skip 101 for good.  The feed is in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import StoredMessage
from pinrelay.router.base import Linked
from pinrelay.router.local import LocalRouter
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream import ApiError, ensure_bucket, settling, together
from pinrelay.store.jetstream.feed import Feed

log = logging.getLogger(__name__)


class NodeIdInUse(PinrelayError):
    """Another live relay announces the same node id."""

    code = ErrorCode.CONFLICT


class RelayRecord(msgspec.Struct, kw_only=True):
    """One live relay, as it announces itself."""

    node: str
    region: str
    link_url: str
    http_url: str
    #: Wall-clock seconds of the heartbeat that wrote it.
    at: float
    #: Device links it held then (the monitors' estimate of who an incident affects).
    links: int = 0
    #: The components its monitors judged red then (core/monitors.py: a holder
    #: resolves no incident of a component red on another relay of its region).
    red: tuple[str, ...] = ()


class _Kick(msgspec.Struct, omit_defaults=True):
    pin: str
    code: str
    detail: str
    #: Kick only a link whose route revision is at most this (None: any link).
    rev: int | None = None


_record_dec = msgspec.json.Decoder(RelayRecord)
_kick_dec = msgspec.json.Decoder(_Kick)
_enc = msgspec.json.Encoder()


class NatsRouter:
    def __init__(
        self,
        *,
        node: str,
        region: str,
        link_url: str,
        http_url: str,
        bucket_prefix: str = "pinrelay",
        subject_prefix: str = "pinrelay",
        replicas: int = 3,
        heartbeat_s: float = 2.0,
        ttl_s: float = 6.0,
        clock: Callable[[], float] = time.time,
        connection: Callable[[], tuple[NATS, JetStreamContext]] | None = None,
        feed: Feed | None = None,
    ) -> None:
        #: The links and long-poll waiters held by this relay.
        self.local = LocalRouter(link_url)
        #: Where start() gets its NATS connection (the store's, in a relay).
        self._connection = connection
        #: The store's feed of new messages (None: this router only routes and kicks).
        self.feed = feed
        self.node = node
        self.region = region
        self.own = RelayRecord(node=node, region=region, link_url=link_url, http_url=http_url, at=0)
        self.bucket_prefix = bucket_prefix
        self.subject_prefix = subject_prefix
        self.replicas = replicas
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.clock = clock
        #: Route revision written for each link held here (once its write is done).
        self._revs: dict[str, int] = {}
        #: Live relays other than this one, by node id.
        self.peers: dict[str, RelayRecord] = {}
        #: What this relay's monitors judge red (report_red), for its heartbeats.
        self._red: frozenset[str] = frozenset()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._routes: KeyValue | None = None
        self._relays: KeyValue | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Routes to other nodes, as last seen by the watch (for is_online).
        self._remote: dict[str, str] = {}
        self.waiter_recheck_s: float | None = 5.0
        # A link reads its backlog at once: the feed, not the route, brings what follows.
        self.wakes_after_attach = False

    # --- lifecycle -----------------------------------------------------------
    def subject(self, node: str, what: str) -> str:
        return f"{self.subject_prefix}.node.{node}.{what}"

    def __len__(self) -> int:
        return len(self.local)

    async def start(self, setup_timeout: float = 20.0) -> None:
        """Create or check the buckets, subscribe, announce this relay.

        Relays started together on a fresh cluster race to create the buckets while
        JetStream places them: a timeout or "no peers" is retried, as the store's
        ``open`` does, for up to ``setup_timeout`` seconds.
        """
        assert self._connection is not None, "a NatsRouter needs a connection to start"
        nc, js = self._connection()
        self._nc, self._js = nc, js
        deadline = time.monotonic() + setup_timeout

        async def buckets() -> None:
            self._routes, self._relays = await together(
                ensure_bucket(js, f"{self.bucket_prefix}_routes", self.replicas, None),
                ensure_bucket(js, f"{self.bucket_prefix}_relays", self.replicas, self.ttl_s),
            )
            await self._check_unique(self._relays)

        try:
            await settling(buckets, deadline, "setting up the route buckets")
        except (TimeoutError, nats.errors.Error, ApiError) as exc:
            raise StoreClosed(f"cannot set up the route buckets: {exc!r}") from exc
        if self.feed is not None:
            self.feed.deliver = self.local.wake
        self._subs = [await nc.subscribe(self.subject(self.node, "kick"), cb=self._on_kick)]
        try:  # the buckets' streams may have no leader yet on a fresh cluster
            await settling(self._beat, deadline, "writing this relay's record")
        except (TimeoutError, nats.errors.Error, ApiError) as exc:
            raise StoreClosed(f"cannot write this relay's record: {exc!r}") from exc
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.create_task(self._heartbeat_forever())
        self._watcher = loop.create_task(self._watch_routes())

    async def _check_unique(self, relays: KeyValue) -> None:
        """Refuse a node id that a live relay elsewhere holds (routes would mix)."""
        try:
            entry = await relays.get(self.node)
        except nats.js.errors.KeyNotFoundError:
            return
        if not entry.value:
            return
        with contextlib.suppress(msgspec.DecodeError):
            other = _record_dec.decode(entry.value)
            same = (other.link_url, other.http_url) == (self.own.link_url, self.own.http_url)
            if not same and self.clock() - other.at < self.ttl_s:
                raise NodeIdInUse(
                    f"node id {self.node!r} is in use by a live relay at {other.http_url}; "
                    "give each relay its own --node-id"
                )

    async def stop(self) -> None:
        """Leave the live list at once (best effort) and stop listening."""
        for task in (self._heartbeat, self._watcher):
            if task is not None:
                task.cancel()
        if self._relays is not None and self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._relays.purge(self.node), 2.0)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.feed is not None:
            self.feed.deliver = None
        for task in self._tasks:
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._nc is None:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- live relays -----------------------------------------------------------
    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
            except Exception as exc:  # NATS away: the record runs out, others drop us
                log.warning("relay heartbeat failed: %r", exc)

    async def _beat(self) -> None:
        relays = self._relays
        assert relays is not None
        record = msgspec.structs.replace(
            self.own, at=self.clock(), links=len(self), red=tuple(sorted(self._red))
        )
        await relays.put(self.node, _enc.encode(record))
        await self._refresh_peers(relays)

    async def _refresh_peers(self, relays: KeyValue) -> None:
        """Everyone's record, from the bucket's leader; stale ones left out.

        Listed with the leader's stream info, not ``kv.keys()``: that reads through an
        ephemeral consumer, which may sit on a lagging follower.
        """
        js = self._js
        assert js is not None
        bucket = f"{self.bucket_prefix}_relays"  # as start() made it
        prefix = f"$KV.{bucket}."
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
        keys = [s.removeprefix(prefix) for s in (info.state.subjects or {})]
        peers: dict[str, RelayRecord] = {}
        now = self.clock()
        for key in keys:
            if key == self.node:
                continue
            try:
                entry = await relays.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            if not entry.value:
                continue
            try:
                record = _record_dec.decode(entry.value)
            except msgspec.DecodeError:
                continue
            if now - record.at < self.ttl_s:
                peers[record.node] = record
        self.peers = peers
        log.debug("live relays: %s (keys %s)", sorted(peers), keys)

    @property
    def link_urls(self) -> list[str]:
        """Every live relay's link URL, this one's first."""
        now = self.clock()
        others = sorted(
            (r for r in self.peers.values() if now - r.at < self.ttl_s), key=lambda r: r.node
        )
        return [self.own.link_url, *(r.link_url for r in others)]

    def region_links(self) -> int:
        """Links held by the live relays of this relay's region (others' as of their
        last heartbeat; the last known if heartbeats stopped with the store)."""
        return len(self) + sum(r.links for r in self.peers.values() if r.region == self.own.region)

    def report_red(self, components: frozenset[str]) -> None:
        self._red = components

    def red_elsewhere(self) -> frozenset[str]:
        now = self.clock()
        return frozenset(
            c
            for r in self.peers.values()
            if r.region == self.own.region and now - r.at < self.ttl_s
            for c in r.red
        )

    def live_nodes(self) -> frozenset[str] | None:
        now = self.clock()
        return frozenset(
            [self.node, *(r.node for r in self.peers.values() if now - r.at < self.ttl_s)]
        )

    # --- routes ----------------------------------------------------------------
    def attach(self, pin: str, link: Linked) -> None:
        replaced = self.local.link(pin)
        if replaced is None or replaced is link:
            self._follow(pin)  # a link replacing another here keeps its follow
        self.local.attach(pin, link)
        self._revs.pop(pin, None)
        self._spawn(self._claim(pin, link))

    def _follow(self, pin: str) -> None:
        if self.feed is not None:
            self.feed.follow(pin)

    def _unfollow(self, pin: str) -> None:
        if self.feed is not None:
            self.feed.unfollow(pin)

    async def _claim(self, pin: str, link: Linked) -> None:
        """Write the route; kick the link it names elsewhere."""
        routes = self._routes
        assert routes is not None
        try:
            old_node: str | None = None
            old_rev = 0
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                old = await routes.get(pin)
                if old.value:
                    old_node, old_rev = old.value.decode(), old.revision or 0
            rev = await routes.put(pin, self.node.encode())
            if self.local.link(pin) is link:
                self._revs[pin] = rev
            elif self.local.link(pin) is None:
                await self._release(pin, rev)  # detached while we wrote: undo
            if old_node is not None and old_node != self.node:
                kick = _Kick(
                    pin=pin,
                    code=ErrorCode.REPLACED.name,
                    detail="another link for this device replaced this one",
                    rev=old_rev,
                )
                await self._send(old_node, "kick", _enc.encode(kick))
        except Exception as exc:
            log.warning("writing the route of %s failed: %r", pin, exc)

    def detach(self, pin: str, link: Linked) -> None:
        ours = self.local.link(pin) is link
        self.local.detach(pin, link)
        if ours:
            self._unfollow(pin)
            rev = self._revs.pop(pin, None)
            if rev is not None:
                self._spawn(self._release(pin, rev))

    async def _release(self, pin: str, rev: int) -> None:
        routes = self._routes
        assert routes is not None
        if self.local.link(pin) is not None:
            return
        # Only if nobody wrote it since (compare-and-set on our revision).
        with contextlib.suppress(nats.js.errors.APIError, nats.errors.Error):
            await routes.delete(pin, last=rev)

    async def route(self, pin: str) -> str | None:
        """The node that holds the device's link, as the route bucket says."""
        routes = self._routes
        if routes is None:
            return None
        try:
            entry = await routes.get(pin)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    def is_online(self, pin: str) -> bool:
        """Linked (or long-polling) here, or routed to another live relay.

        The routes of other relays come from a watch on the route bucket, so this is
        approximate: a link made a moment ago elsewhere may read as offline.
        """
        if self.local.is_online(pin):
            return True
        node = self._remote.get(pin)
        return node is not None and node != self.node and node in self.peers

    async def _watch_routes(self) -> None:
        """Keep :attr:`_remote` (PIN → node) in step with the route bucket."""
        routes = self._routes
        assert routes is not None
        while True:
            try:
                watcher = await routes.watchall()
                try:
                    self._remote = {}
                    async for entry in watcher:
                        if entry is None:
                            continue  # the end of what was stored when the watch began
                        if entry.operation in ("DEL", "PURGE") or not entry.value:
                            self._remote.pop(entry.key, None)
                        else:
                            self._remote[entry.key] = entry.value.decode(errors="replace")
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching routes failed (retrying): %r", exc)
            await asyncio.sleep(1.0)

    # --- long-poll waiters ---------------------------------------------------------
    def add_waiter(self, pin: str, waiter: Callable[[], None]) -> None:
        self._follow(pin)
        self.local.add_waiter(pin, waiter)

    async def waiter_ready(self, pin: str) -> None:
        """Following is immediate: the feed wakes this waiter from now on."""

    def remove_waiter(self, pin: str, waiter: Callable[[], None]) -> None:
        self.local.remove_waiter(pin, waiter)
        self._unfollow(pin)

    # --- wake-ups and kicks ------------------------------------------------------
    def wake(self, pin: str, fresh: list[StoredMessage] | None = None) -> None:
        """A push stored messages for ``pin``: the feed brings them (module doc)."""

    async def _send(self, node: str, what: str, payload: bytes) -> None:
        nc = self._nc
        if nc is None:
            return
        try:
            await nc.publish(self.subject(node, what), payload)
        except Exception as exc:
            log.warning("sending a %s to %s failed: %r", what, node, exc)

    def kick(self, pin: str, code: ErrorCode, detail: str) -> None:
        if self.local.link(pin) is not None:
            self.local.kick(pin, code, detail)
            self._unfollow(pin)
            rev = self._revs.pop(pin, None)
            if rev is not None:
                self._spawn(self._release(pin, rev))
            return
        self._spawn(self._kick_remote(_Kick(pin=pin, code=code.name, detail=detail)))

    async def _kick_remote(self, kick: _Kick) -> None:
        try:
            node = await self.route(kick.pin)
        except Exception as exc:
            log.warning("looking up the route of %s failed: %r", kick.pin, exc)
            return
        if node is not None and node != self.node:
            await self._send(node, "kick", _enc.encode(kick))

    async def _on_kick(self, msg: Msg) -> None:
        try:
            kick = _kick_dec.decode(msg.data)
            code = ErrorCode[kick.code]
        except (msgspec.DecodeError, KeyError):
            log.warning("ignoring a malformed kick: %r", msg.data[:200])
            return
        link = self.local.link(kick.pin)
        if link is None:
            return
        if kick.rev is not None:
            mine = self._revs.get(kick.pin)
            if mine is None or mine > kick.rev:
                return  # a newer link than the one that was replaced
        self.local.take(kick.pin)
        self._unfollow(kick.pin)
        rev = self._revs.pop(kick.pin, None)
        link.kick(code, kick.detail)
        if kick.rev is None and rev is not None:
            await self._release(kick.pin, rev)  # (a replaced link's route is the new node's now)
