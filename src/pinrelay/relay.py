"""The composition root: one relay process (store, router, link, HTTP API)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from pinrelay.config import RelayConfig, raise_fd_limit
from pinrelay.core.ids import hash_secret
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.link.server import LinkConfig, LinkServer
from pinrelay.metrics import Metrics
from pinrelay.router.local import LocalRouter
from pinrelay.store.base import Store
from pinrelay.store.sqlite import SqliteStore

log = logging.getLogger("pinrelay")


class Relay:
    """Everything one relay process holds; the API reads it from ``app.state``."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.store: Store = store or SqliteStore(
            Path(config.data) / "pinrelay.db", observer=self.metrics.observe_commit
        )
        self.router = LocalRouter()
        self.auth_limiter = FailureLimiter(limit=config.auth_failure_limit)
        self.admin_key_hash = hash_secret(config.admin_key) if config.admin_key else None
        fd_links = raise_fd_limit()
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
            auth_limiter=self.auth_limiter,
        )
        self.ready = False
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def link_urls(self) -> list[str]:
        return [self.config.link_url]

    async def start(self) -> None:
        await self.store.open()
        await self.link.start(self.config.host, self.config.link_port)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self.ready = True

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                while True:
                    n = await self.store.sweep(int(self.clock() * 1000))
                    self.metrics.expired.inc(n)
                    if n < 1000:
                        break
            except Exception:
                log.exception("sweeping expired messages failed")

    async def stop(self) -> None:
        """Graceful: drain links (clients come back later, spread), then close."""
        self.ready = False
        await self.link.drain("shutdown")
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.link.close()
        await self.store.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the relay drains links first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: RelayConfig, on_ready: Callable[[Relay], Any] | None = None) -> None:
    from pinrelay.api.app import build_app

    relay = Relay(config)
    await relay.start()
    app = build_app(relay)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="none",
            http="httptools",
            lifespan="off",
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
    if on_ready is not None:
        on_ready(relay)
    await stop.wait()
    log.info("shutting down: draining links")
    await relay.stop()
    server.should_exit = True
    await http
