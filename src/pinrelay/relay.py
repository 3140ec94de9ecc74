"""The composition root: one relay process (store, router, link, HTTP API)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from pinrelay.auth import Authenticator
from pinrelay.broadcast import Broadcaster
from pinrelay.chat import Chat
from pinrelay.config import RelayConfig, raise_fd_limit
from pinrelay.core.chat import Delivered
from pinrelay.core.quotas import RateBuckets
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.figures import FiguresRecorder, Folded
from pinrelay.incident_board import IncidentBoard
from pinrelay.ingest import Ingest
from pinrelay.link.server import LinkConfig, LinkServer
from pinrelay.link.system import SystemNotices
from pinrelay.lockfile import FOLDER_LOCK, Lock
from pinrelay.lockfile import acquire as acquire_lock
from pinrelay.matrix import MatrixGateway
from pinrelay.metrics import Metrics
from pinrelay.monitors import FeedLag, Monitors
from pinrelay.router.base import Router
from pinrelay.router.local import LocalRouter
from pinrelay.store.base import Store
from pinrelay.store.sqlite import SqliteStore
from pinrelay.storedbytes import StoredBytesQuota
from pinrelay.webhooks import WebhookSender
from pinrelay.webpush import WebPush

log = logging.getLogger("pinrelay")

#: How long the store may be unreachable before links are drained.
STORE_GRACE_S = 2.0


def nats_connection_name(node: str) -> str:
    """The name of a relay's NATS connection: how the servers' ``/connz`` tells it."""
    return f"pinrelay-{node}"


class Relay:
    """Everything one relay process holds; the API reads it from ``app.state``."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.store: Store
        self.router: Router
        #: Cluster mode: JetStream expires messages itself and the store can go away.
        self.clustered = config.nats_urls is not None
        #: A cluster store's feed of new messages (its lag is a monitor's; DECISIONS 63).
        feed: FeedLag | None = None
        if config.nats_urls is None:
            db = Path(config.data) / "pinrelay.db"
            sqlite = SqliteStore(
                db, observer=self.metrics.observe_commit, inline_commits=config.inline_commits
            )
            self.metrics.inline_commits.set_function(lambda: sqlite.inline_committed)
            self.store = sqlite
            self.router = LocalRouter(config.link_url)
        else:
            # Imported here: nats-py and the aiohttp it imports take as long to import
            # as the rest of the relay, which a relay on SQLite does not need.
            from pinrelay.router.nats import NatsRouter
            from pinrelay.store.jetstream import JetStreamStore

            js = JetStreamStore(
                config.nats_urls,
                name=nats_connection_name(config.node),
                partitions=config.partitions,
                direct_reads=config.direct_reads,
                purge_acked=config.purge_acked,
            )
            self.store = js
            feed = js.feed
            self.router = NatsRouter(
                node=config.node,
                region=config.region,
                link_url=config.link_url,
                http_url=config.http_url,
                bucket_prefix=js.bucket_prefix,
                subject_prefix=js.bucket_prefix,
                replicas=js.replicas,
                heartbeat_s=config.relay_heartbeat_s,
                ttl_s=config.relay_ttl_s,
                clock=clock,
                connection=lambda: js.connection,
                feed=js.feed,
            )
        #: Tenants' rate quotas on this relay (core/quotas.py).
        self.rates = RateBuckets()
        #: The stored_bytes quota's ledger (core/ledger.py).
        self.stored_bytes = StoredBytesQuota(self.store, config.node, clock)
        self.ingest = Ingest(
            self.store,
            self.router,
            clock,
            config.limits,
            self.metrics,
            on_stored=self.stored_bytes.stored,
        )
        self.chat = Chat(self.ingest, clock, config.chat)
        self.webpush = WebPush(self.ingest, clock, config.push_origin, config.webpush)
        self.matrix = MatrixGateway(self.webpush)
        self.broadcaster = Broadcaster(
            self.store,
            self.ingest,
            clock,
            config.node,
            marketing_cap=config.marketing_cap,
            takeover_s=config.broadcast_takeover_s,
            keep_s=config.broadcast_keep_days * 86_400,
            audit_keep_s=config.audit_keep_days * 86_400,
            page=config.broadcast_page,
        )
        #: Incidents this relay knows, and who hears of changes (incident_board.py).
        self.incidents = IncidentBoard(self.store, clock, refresh_s=config.watch_every_s)
        #: Outgoing webhooks: every relay enqueues what its board hears (webhooks.py).
        self.webhooks = WebhookSender(
            self.store,
            clock,
            config.node,
            retry_base_s=min(1.0, config.webhook_retry_cap_s),
            retry_cap_s=config.webhook_retry_cap_s,
            lease_s=config.webhook_lease_s,
            poll_s=config.watch_every_s,
            observe=lambda ok: self.metrics.webhook_attempts.labels("ok" if ok else "failed").inc(),
        )
        self.incidents.on_event.append(self.webhooks.heard)
        self.metrics.webhooks_known.set_function(lambda: self.webhooks.known)
        self.metrics.long_polls.set_function(lambda: len(self.long_polls))
        self.metrics.webhooks_in_memory.set_function(lambda: self.webhooks.in_memory)
        self.auth = Authenticator(
            self.store,
            FailureLimiter(limit=config.auth_failure_limit),
            self.metrics,
            clock,
            config.admin_key,
        )
        # Links and HTTP connections each have their share of the open-file limit, so
        # neither can starve the other (api/httpbounds.py, rule 1).
        fd_links = max(16, raise_fd_limit() - config.http_max_connections)
        self.max_links = min(config.max_links, fd_links) if config.max_links else fd_links
        self.link = LinkServer(
            store=self.store,
            router=self.router,
            config=LinkConfig(
                heartbeat_s=config.heartbeat_s,
                hello_timeout_s=config.hello_timeout_s,
                default_window=config.default_window,
                max_window=config.max_window,
                max_links=self.max_links,
                node=config.node,
                region=config.region,
            ),
            metrics=self.metrics,
            clock=clock,
            auth=self.auth,
            chat=self.chat,
            webpush=self.webpush,
            on_acked=self.acked,
            on_sent=self.broadcaster.sent,
            on_gone=self.stored_bytes.acked,
        )
        self.monitors = Monitors(
            self.store,
            self.incidents,
            clock,
            node=config.node,
            region=config.region,
            data=Path(config.data),
            links=lambda: len(self.link.connections),
            region_links=self.router.region_links,
            shed=self._shed,
            expired=lambda: self._count("pinrelay_messages_expired_total"),
            waits=self.metrics.waits.take,
            tenant_waits=self.metrics.waits.take_tenants,
            owed=self.metrics.owed.oldest,
            feed=feed,
            # A cluster's NATS connection; on SQLite, healthy() says the writer
            # process lives, which the store probe judges (component store).
            connected=self.store.healthy if self.clustered else lambda: True,
            alive=self.router.live_nodes,
            report_red=self.router.report_red,
            red_elsewhere=self.router.red_elsewhere,
            thresholds=config.monitor,
            incident_after_s=config.incident_after_s,
            resolve_after_s=config.resolve_after_s,
            every_s=config.watch_every_s,
            probe_s=config.watch_every_s,
        )
        #: The monitors' readings, folded and kept in the store for incident reports.
        folded = Folded()
        self.monitors.on_reading.append(folded.add)
        self.figures = FiguresRecorder(self.store, folded.take, config.figures_every_s, clock=clock)
        #: Incidents' system messages to this relay's links (link/system.py).
        self.link.system = SystemNotices(
            self.incidents,
            lambda: self.link.connections,
            region=config.region,
            clock=clock,
            every_s=config.incident_notify_every_s,
        )
        self.ready = False
        #: Set by :meth:`stop`; the wake-ups of the inbox's long polls (api/inbox.py),
        #: which stop answers at once instead of letting them hold the shutdown.
        self.stopping = False
        self.long_polls: set[asyncio.Event] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None

    def _count(self, name: str) -> int:
        return int(self.metrics.registry.get_sample_value(name) or 0)

    def _shed(self) -> int:
        """Links refused at capacity or while draining, so far (the shed monitor)."""
        return self._count("pinrelay_links_refused_total")

    @property
    def link_urls(self) -> list[str]:
        """Every live relay's link URL, this one's first."""
        return self.router.link_urls

    async def acked(self, pin: str, items: Sequence[Delivered]) -> None:
        """A device acknowledged tracked messages: chat receipts to their senders,
        Web Push receipts for theirs; both stored before the ack (delivery.py).
        Broadcasts' acks are counted."""
        if any(i.broadcast for i in items):
            self.broadcaster.acked([i.id for i in items if i.broadcast])
            items = [i for i in items if not i.broadcast]
        chats = [i for i in items if i.subscription is None]
        pushes = [i for i in items if i.subscription is not None]
        if chats and pushes:
            await asyncio.gather(self.chat.delivered(pin, chats), self.webpush.delivered(pushes))
        elif chats:
            await self.chat.delivered(pin, chats)
        elif pushes:
            await self.webpush.delivered(pushes)

    async def start(self) -> None:
        await self.store.open()
        loop = asyncio.get_running_loop()
        await self.router.start()
        if self.clustered:
            self._watchdog = loop.create_task(self._watch_store())
            # Chats that expired undelivered are announced by the store (its
            # expired_chats waits for them): failed receipts go out as they come.
            self._expirer = loop.create_task(self._expire_forever())
        else:
            # JetStream expires messages by itself (Nats-TTL) and reads skip expired
            # ones; its sweep walks the stream one request per message: not every 5 s.
            self._sweeper = loop.create_task(self._sweep_forever())
        # The incidents known before links open: a device that links at once hears
        # of those open at hello (link/system.py rule 3; the board's first read is
        # silent).  A store that does not answer now: the board's loop reads later.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.incidents.refresh(), 5)
        await self.link.start(self.config.host, self.config.link_port)
        self.broadcaster.start()
        await self.stored_bytes.start()
        self.incidents.start()
        self.monitors.start()
        self.figures.start()
        self.webhooks.start()
        self.ready = True

    async def _watch_store(self) -> None:
        """When the store stays away, send every link to another relay (``drain``).

        A NATS client that loses its server reconnects to another one within a moment;
        only an outage longer than ``STORE_GRACE_S`` drains links (once per outage),
        so losing one NATS node does not start a reconnect storm.
        """
        down_since: float | None = None
        drained = False
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if self.store.healthy():
                if down_since is not None:
                    log.warning("store available again after %.1f s", now - down_since)
                down_since, drained = None, False
                continue
            if down_since is None:
                down_since = now
            if not drained and self.ready and now - down_since >= STORE_GRACE_S:
                drained = True
                alternates = [u for u in self.link_urls if u != self.config.link_url]
                log.warning("store unavailable: draining %d links", len(self.link.connections))
                cfg = self.link.config
                for link in list(self.link.connections):
                    delay = cfg.drain_retry_ms + random.randint(0, cfg.drain_jitter_ms)
                    link.drain("store unavailable", delay, alternates)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                while True:
                    n = await self.store.sweep(int(self.clock() * 1000))
                    n += await self.chat.expire()
                    self.metrics.expired.inc(n)
                    if n < 1000:
                        break
            except Exception:
                log.exception("sweeping expired messages failed")

    async def _expire_forever(self) -> None:
        while True:
            try:
                self.metrics.expired.inc(await self.chat.expire())
            except Exception as exc:  # the store away: its notices wait for us
                log.warning("failed receipts for expired chats: %r (retrying)", exc)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Graceful: drain links (clients come back later, spread), then close."""
        self.ready = False
        self.stopping = True
        for woken in self.long_polls:
            woken.set()
        for task in (self._sweeper, self._watchdog, self._expirer):
            if task is not None:
                task.cancel()
        alternates = [u for u in self.link_urls if u != self.config.link_url]
        await self.link.drain("shutdown", alternates)
        await self.broadcaster.stop()
        await self.stored_bytes.stop()
        await self.monitors.stop()
        await self.webhooks.stop()
        await self.incidents.stop()
        await self.figures.stop()
        if self.link.system is not None:
            self.link.system.close()
        await self.router.stop()
        await self.link.close()
        await self.store.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the relay drains links first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


#: How long the event loop may wait for the GIL while another thread runs Python code
#: (the thread pool: store set-up, metrics counts); CPython's default (5 ms) would show
#: up directly in push latency.  The SQLite writer is a process (DECISIONS 26).
GIL_SWITCH_INTERVAL_S = 0.0005
#: CPython's defaults are (700, 10, 10).
GC_THRESHOLDS = (20_000, 20, 20)


def lock_data_folder(data: Path) -> Lock:
    """One relay per data folder, whatever its engine (OPERATIONS, "One relay per data
    folder"): held until this process ends; raises lockfile.Locked, one line."""
    hint = "; stop that relay, or give this one its own --data"
    # (wait_s: `cluster status` may probe the lock for a moment.)
    return acquire_lock(data / FOLDER_LOCK, f"data folder {data}", hint, wait_s=0.5)


async def serve(
    config: RelayConfig,
    on_ready: Callable[[Relay], Any] | None = None,
    *,
    lock: Lock | None = None,
) -> None:
    """Run a relay until SIGTERM or SIGINT.  ``lock``: the data folder's, if the caller
    took it already (the CLI does, before it writes anything there)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    held = lock or lock_data_folder(Path(config.data))
    try:
        await _serve(config, on_ready)
    finally:
        held.release()


async def _serve(config: RelayConfig, on_ready: Callable[[Relay], Any] | None) -> None:
    from pinrelay.api.app import build_app
    from pinrelay.api.httpproto import http_protocol

    relay = Relay(config)
    await relay.start()
    app = build_app(relay)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="none",
            http=http_protocol(relay),
            ws="none",  # no WebSocket on the API: the link has its own port
            lifespan="off",
            # Forwarded headers only from the proxies the operator names (none by
            # default: uvicorn's own default trusts 127.0.0.1, any local process).
            proxy_headers=bool(config.forwarded_allow_ips),
            forwarded_allow_ips=config.forwarded_allow_ips or None,
            # Keep-alive and every other HTTP bound: HttpProtocol (api/httpbounds.py).
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = loop.create_task(server.serve())
    log.info("link capacity: %d links (open-file limit)", relay.max_links)
    while not server.started and not http.done():
        await asyncio.sleep(0.01)
    if http.done():
        await relay.stop()
        http.result()
        raise SystemExit(f"HTTP API could not listen on {config.host}:{config.port}")
    # What exists now (modules, the app, the store) lives as long as the process:
    # keep it out of every collection, and collect young objects less often, so a
    # full collection does not stall every link at once (latency tail).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if on_ready is not None:
        on_ready(relay)
    await stop.wait()
    log.info("shutting down: draining links")
    await relay.stop()
    server.should_exit = True
    await http
