"""Cluster router: devices linked to any relay of a NATS cluster (DESIGN, "router").

A :class:`~pinrelay.router.base.Router`; the links and waiters this relay holds live
in a :class:`LocalRouter` it keeps (used through its public methods only), plus:

- **Routes.**  The device → node route lives in a KV bucket (``<prefix>_routes``,
  key PIN, value node id).  A link's attach writes it, its detach removes it if it
  is still ours (compare-and-set on the revision written).  Reads go to the bucket's
  leader (no direct gets), so a route written before a push was accepted is seen by
  the wake-up that follows that push.
- **Wake-ups.**  A wake for a device linked here wakes its link; for a device linked
  to another node it is a core NATS message on ``<subjects>.node.<node>.wake``
  (PINs, one a line), and that node wakes its link with no ``fresh`` (it reads the
  store).  A stale route only costs a wasted wake-up: after the route is written the
  link reads its backlog again (:meth:`_claim`).
- **Kicks.**  Token rotation and deletion kick the device's link wherever it is
  (``<subjects>.node.<node>.kick``).  A link on another node that a new link
  replaces is kicked with the route revision it wrote, so a kick that arrives late
  never closes a newer link.
- **Long-poll waiters.**  A relay holding an inbox long-poll for a device subscribes
  to ``<subjects>.poll.<PIN>`` while it waits; a wake for a device with no route is
  published there too, so NATS carries it to whichever relays have a waiter (and
  drops it when none has).  Waiters also re-read the store every
  ``waiter_recheck_s``, which bounds the delay of a wake-up lost with a dying relay.
- **Live relays.**  Each relay puts its record (node, region, link URL, HTTP URL)
  in ``<prefix>_relays``, a bucket whose entries live ``ttl`` seconds, every
  ``heartbeat`` seconds, and reads everyone's back: :attr:`link_urls`.

Hand-off: with JetStream, wake-ups do not reach a link in cursor order (two appends
in flight on one relay finish in any order, and other relays append too), and the
Delivery's hand-off assumes they do: a hand-off of cursor 102 before 101 arrived
would skip 101 for good.  So by default ``fresh`` is not passed on (``handoff``):
every wake-up makes the link read the store, which is always right.
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
from pinrelay.store.jetstream import ensure_bucket, setup_may_retry

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
        handoff: bool = False,
        clock: Callable[[], float] = time.time,
        connection: Callable[[], tuple[NATS, JetStreamContext]] | None = None,
    ) -> None:
        #: The links and long-poll waiters held by this relay.
        self.local = LocalRouter(link_url)
        #: Where start() gets its NATS connection (the store's, in a relay).
        self._connection = connection
        self.node = node
        self.region = region
        self.own = RelayRecord(node=node, region=region, link_url=link_url, http_url=http_url, at=0)
        self.bucket_prefix = bucket_prefix
        self.subject_prefix = subject_prefix
        self.replicas = replicas
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.handoff = handoff
        self.clock = clock
        #: Route revision written for each link held here (once its write is done).
        self._revs: dict[str, int] = {}
        #: Live relays other than this one, by node id.
        self.peers: dict[str, RelayRecord] = {}
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
        self._outbox: dict[str, set[str]] = {}
        self._flush_scheduled = False
        #: Wake-ups and kicks sent to and received from other nodes (tests, metrics).
        self.remote_wakes_sent = 0
        self.remote_wakes_received = 0
        #: Per PIN with a long-poll waiting here: its poll subscription, being made.
        self._polls: dict[str, asyncio.Task[Subscription | None]] = {}
        self.waiter_recheck_s: float | None = 5.0
        # _claim reads the backlog once the route is written: one read per link.
        self.wakes_after_attach = True

    # --- lifecycle -----------------------------------------------------------
    def subject(self, node: str, what: str) -> str:
        return f"{self.subject_prefix}.node.{node}.{what}"

    def poll_subject(self, pin: str) -> str:
        return f"{self.subject_prefix}.poll.{pin}"

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
        while True:
            try:
                self._routes = await ensure_bucket(
                    js, f"{self.bucket_prefix}_routes", self.replicas, None
                )
                self._relays = await ensure_bucket(
                    js, f"{self.bucket_prefix}_relays", self.replicas, self.ttl_s
                )
                await self._check_unique(self._relays)
                break
            except (TimeoutError, nats.errors.Error) as exc:
                if not setup_may_retry(exc) or time.monotonic() > deadline:
                    raise StoreClosed(f"cannot set up the route buckets: {exc!r}") from exc
                log.info("setting up the route buckets: %r; retrying", exc)
                await asyncio.sleep(0.5)
        self._subs = [
            await nc.subscribe(self.subject(self.node, "wake"), cb=self._on_wake),
            await nc.subscribe(self.subject(self.node, "kick"), cb=self._on_kick),
        ]
        await self._beat()
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
        for task in [*self._tasks, *self._polls.values()]:
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
        record = msgspec.structs.replace(self.own, at=self.clock())
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

    # --- routes ----------------------------------------------------------------
    def attach(self, pin: str, link: Linked) -> None:
        self.local.attach(pin, link)
        self._revs.pop(pin, None)
        self._spawn(self._claim(pin, link))

    async def _claim(self, pin: str, link: Linked) -> None:
        """Write the route; kick the link it names elsewhere; then read the backlog again."""
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
        # A push accepted before the route was readable found no route: read again.
        if self.local.link(pin) is link:
            link.wake(None)

    def detach(self, pin: str, link: Linked) -> None:
        ours = self.local.link(pin) is link
        self.local.detach(pin, link)
        if ours:
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
        self.local.add_waiter(pin, waiter)
        if pin not in self._polls and self._nc is not None:
            self._polls[pin] = asyncio.get_running_loop().create_task(self._poll_subscribe(pin))

    async def _poll_subscribe(self, pin: str) -> Subscription | None:
        nc = self._nc
        if nc is None:
            return None
        try:
            sub = await nc.subscribe(self.poll_subject(pin), cb=self._on_poll)
            await nc.flush(timeout=2)  # the server has our interest before we read
            return sub
        except Exception as exc:  # the waiter still rechecks the store
            log.warning("subscribing to wake-ups for %s failed: %r", pin, exc)
            return None

    async def waiter_ready(self, pin: str) -> None:
        task = self._polls.get(pin)
        if task is not None:
            await asyncio.shield(task)

    def remove_waiter(self, pin: str, waiter: Callable[[], None]) -> None:
        self.local.remove_waiter(pin, waiter)
        if not self.local.has_waiters(pin) and (task := self._polls.pop(pin, None)) is not None:
            self._spawn(self._poll_unsubscribe(task))

    async def _poll_unsubscribe(self, task: asyncio.Task[Subscription | None]) -> None:
        sub = await task
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_poll(self, msg: Msg) -> None:
        pin = msg.subject.rsplit(".", 1)[-1]
        self.remote_wakes_received += 1
        self.local.wake(pin, None)

    # --- wake-ups and kicks ------------------------------------------------------
    def wake(self, pin: str, fresh: list[StoredMessage] | None = None) -> None:
        self.local.wake(pin, fresh if self.handoff else None)
        if self.local.link(pin) is None:
            self._spawn(self._wake_remote(pin))

    async def _wake_remote(self, pin: str) -> None:
        try:
            node = await self.route(pin)
        except Exception as exc:
            log.warning("looking up the route of %s failed: %r", pin, exc)
            return
        if node is None:
            # Not linked anywhere: maybe long-polling somewhere.
            await self._publish(self.poll_subject(pin), b"")
            return
        if node == self.node:
            return
        self._outbox.setdefault(node, set()).add(pin)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        """One message per node for every wake-up gathered in this loop iteration."""
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for node, pins in outbox.items():
            self.remote_wakes_sent += len(pins)
            self._spawn(self._send(node, "wake", "\n".join(sorted(pins)).encode()))

    async def _send(self, node: str, what: str, payload: bytes) -> None:
        await self._publish(self.subject(node, what), payload)

    async def _publish(self, subject: str, payload: bytes) -> None:
        nc = self._nc
        if nc is None:
            return
        try:
            await nc.publish(subject, payload)
        except Exception as exc:
            log.warning("publishing to %s failed: %r", subject, exc)

    async def _on_wake(self, msg: Msg) -> None:
        for pin in msg.data.decode(errors="replace").split("\n"):
            if pin:
                self.remote_wakes_received += 1
                self.local.wake(pin, None)

    def kick(self, pin: str, code: ErrorCode, detail: str) -> None:
        if self.local.link(pin) is not None:
            self.local.kick(pin, code, detail)
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
        rev = self._revs.pop(kick.pin, None)
        link.kick(code, kick.detail)
        if kick.rev is None and rev is not None:
            await self._release(kick.pin, rev)  # (a replaced link's route is the new node's now)
