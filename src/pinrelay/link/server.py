"""The link server (docs/PROTOCOL.md).

One :class:`LinkProtocol` per TCP connection wraps websockets' sans-I/O
``ServerProtocol`` (handshake, framing, ping/pong, close) and our own
:class:`~pinrelay.core.session.ServerSession` (frame order, heartbeats).  There is
no task per connection: bytes arrive in ``data_received``, frames go out with
``transport.write``; one timer task walks all links for heartbeats.  Short tasks
run only for authentication and for reading the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import random
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from pinrelay import __version__
from pinrelay.auth import Authenticator
from pinrelay.chat import Chat
from pinrelay.core import frames
from pinrelay.core.errors import ErrorCode, PinrelayError, RateLimited
from pinrelay.core.ids import new_secret
from pinrelay.core.model import Device, StoredMessage
from pinrelay.core.quotas import LinkCounts, over
from pinrelay.core.session import (
    AUTHENTICATING,
    AWAIT_HELLO,
    AckReceived,
    ChatReceived,
    Failure,
    HelloReceived,
    PingReceived,
    ServerSession,
    Tick,
)
from pinrelay.delivery import AckWriter, Delivery, OnAcked, OnSent, beyond_limit, msg_frame
from pinrelay.link.requests import Requests
from pinrelay.link.system import SystemNotices
from pinrelay.link.wireframes import client_text_frames, text_frame, whole_frames
from pinrelay.metrics import Metrics
from pinrelay.router.base import Router
from pinrelay.store.base import Store
from pinrelay.webpush import WebPush

log = logging.getLogger(__name__)
# websockets logs every close at INFO: one line per link is noise at 20k links.
_ws_log = logging.getLogger("pinrelay.link.ws")
_ws_log.setLevel(logging.WARNING)

LINK_PATH = "/v1/link"
#: A closing link that does not finish the close handshake is dropped after this.
CLOSE_TIMEOUT = 5.0
#: How long a closing link server waits for the acks it still holds to be stored.
ACK_FLUSH_TIMEOUT = 2.0
#: Connections past ``max_links`` that still get a 503 at the upgrade; more are
#: dropped on accept.
REFUSAL_SLACK = 128
#: When a link refused by its tenant's links quota may try again (retry_after_ms).
LINKS_QUOTA_RETRY_MS = 5000
#: Last-seen writes per second, at most (see LinkServer.touch).
TOUCH_RATE = 500
#: A link's outgoing buffer above this: the relay stops reading from the link and
#: stops delivering to it, until the buffer is back under WRITE_LOW (PROTOCOL
#: "Flow control"; the memory bound in OPERATIONS "Memory per link").
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024
#: retry_after_ms of the error that closes a link which does not read.
STALL_RETRY_MS = 5_000


@dataclass(frozen=True, slots=True)
class LinkConfig:
    heartbeat_s: float = 30.0
    hello_timeout_s: float = 10.0
    default_window: int = 64
    max_window: int = 1024
    #: Largest frame either side sends: a ``send`` with a 32 KiB text and the ``msg``
    #: that carries it fit, even with every character escaped as ``\uXXXX`` (as
    #: Python's json.dumps does by default): 3 bytes of JSON per byte of UTF-8 at
    #: worst (``é`` is 2 bytes and 6 escaped; control characters are refused).
    max_frame: int = 100 * 1024
    max_links: int = 10_000
    node: str = "node-1"
    region: str = "local"
    #: How long after a drain clients are asked to wait, spread by jitter.
    drain_retry_ms: int = 2_000
    drain_jitter_ms: int = 8_000


def _queued_bytes(transport: asyncio.Transport) -> int:
    """Bytes written to the link that its client has not taken yet: our buffer, and
    the kernel's send queue (SIOCOUTQ).  The kernel's share shrinks as the client
    reads; ours only once the kernel has room for a whole chunk, seconds later on a
    slow reader with large socket buffers."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            size += int.from_bytes(queued, sys.byteorder)
    return size


class LinkProtocol(asyncio.Protocol):
    __slots__ = (
        "_close_timer",
        "_fast",
        "_hello_timer",
        "_stalled_at",
        "_stalled_size",
        "_system_missed",
        "_tenant",
        "_unparsed",
        "delivery",
        "peer",
        "pin",
        "requests",
        "server",
        "session",
        "transport",
        "ws",
    )

    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        # Frames up to 4x max_frame are read and refused with an error frame (4413);
        # beyond that the WebSocket core fails the link with 1009 without reading on.
        self.ws = ServerProtocol(max_size=4 * server.config.max_frame, logger=_ws_log)
        self.session = ServerSession(
            server.clock(),
            hello_timeout=server.config.hello_timeout_s,
            heartbeat_s=server.config.heartbeat_s,
        )
        self.pin: str | None = None
        #: The tenant whose links quota counts this link (set once it is counted).
        self._tenant: str | None = None
        self.delivery: Delivery | None = None
        self.peer = "?"
        self._close_timer: asyncio.TimerHandle | None = None
        #: What websockets' parser was given since it last stood at a frame boundary
        #: (before the handshake: since the connection began); None once unknown.
        self._unparsed: bytes | None = b""
        #: The parser stands at a boundary of an open link, outside a fragmented
        #: message: runs of whole text frames may skip it (link/wireframes.py).
        self._fast = False
        self._hello_timer: asyncio.TimerHandle | None = None
        #: While the outgoing buffer is over WRITE_HIGH: since when it has not
        #: shrunk, and its size then (None: not paused).
        self._stalled_at: float | None = None
        self._stalled_size = 0
        #: A system message was not written while the buffer was full (link/system.py
        #: rule 5): the current ones go out once it drains.
        self._system_missed = False
        #: ``send``, ``read`` and ``subscribe`` frames, one at a time in arrival order.
        self.requests = Requests(self, server.chat, server.webpush)

    # --- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        server = self.server
        if len(server.connections) >= server.config.max_links + REFUSAL_SLACK:
            # Past the cap even the 503 at the upgrade would take descriptors kept for
            # the HTTP API and the store: drop it now (PROTOCOL "Capacity").
            server.metrics.links_refused.inc()
            self.transport.abort()
            return
        server.connections.add(self)
        # Its own timer, not the heartbeat walk (up to 2 s late): PROTOCOL "Session".
        self._hello_timer = asyncio.get_running_loop().call_later(
            self.server.config.hello_timeout_s, self._hello_due
        )

    def data_received(self, data: bytes) -> None:
        if self._fast:
            texts = client_text_frames(data, self.server.config.max_frame)
            if texts is not None:
                now = self.server.clock()
                for payload, stop in texts:
                    self._text(payload, now)
                    if self.ws.state is not WsState.OPEN:
                        # We are closing: websockets takes the rest, as it would have.
                        self._parse(data[stop:])
                        return
                return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """websockets' parser: everything but runs of plain text frames."""
        unparsed = self._unparsed
        if unparsed is not None:
            unparsed += data
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
                if unparsed is not None:
                    # The request ends at its first blank line; frames may follow.
                    end = unparsed.find(b"\r\n\r\n")
                    unparsed = unparsed[end + 4 :] if end >= 0 else None
            elif isinstance(event, Frame):
                self._frame(event)
        state = self.ws.state
        fast = False
        if unparsed is not None:
            if state is WsState.OPEN and whole_frames(unparsed):
                unparsed = b""
                fast = self.ws.current_size is None
            elif state is WsState.CLOSING or state is WsState.CLOSED:
                unparsed = None
            elif len(unparsed) > 4 * self.server.config.max_frame + 14:
                unparsed = None  # a frame websockets will refuse anyway: stop counting
        self._unparsed = unparsed
        self._fast = fast
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.session.close()
        if self.delivery is not None:
            self.delivery.close()
            self.server.metrics.links_open.dec()
        if self.pin is not None:
            self.server.router.detach(self.pin, self)
            self.server.touch(self.pin)
            if self._tenant is not None:
                self.server.tenant_links.remove(self._tenant, self.pin)

    def pause_writing(self) -> None:
        """The outgoing buffer passed WRITE_HIGH: stop reading and delivering.

        Whatever the client sends while it does not read stays in the kernel's
        buffers, not in ours: no pong, no error frame is produced for it (PROTOCOL
        "Flow control").  tick() closes a link whose buffer stops draining.
        """
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
            self._stalled_at = self.server.clock()
            self._stalled_size = _queued_bytes(transport)
        if self.delivery is not None:
            self.delivery.paused = True

    def _resume_reading(self) -> None:
        """Read again, unless the other reason to pause (writes, chat) still holds."""
        transport = self.transport
        paused = self._stalled_at is not None or self.requests.full
        if not paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def resume_writing(self) -> None:
        self._stalled_at = None
        self._resume_reading()
        if self._system_missed and self.server.system is not None:
            self._system_missed = False
            self.server.system.hello(self)
        if self.delivery is not None:
            self.delivery.paused = False
            self.delivery.wake()

    # --- WebSocket events ----------------------------------------------------
    def _handshake(self, request: Request) -> None:
        server = self.server
        if request.path.split("?", 1)[0] != LINK_PATH:
            response = self.ws.reject(404, f"The device link is at {LINK_PATH}\n")
        elif server.draining:
            server.metrics.links_refused.inc()
            response = self.ws.reject(503, "Relay is shutting down; retry later\n")
            response.headers["Retry-After"] = str(server.config.drain_retry_ms // 1000 + 1)
        elif len(server.connections) > server.config.max_links:
            server.metrics.links_refused.inc()
            response = self.ws.reject(503, "Relay is at its link capacity; retry later\n")
            response.headers["Retry-After"] = "5"
        else:
            response = self.ws.accept(request)
        self.ws.send_response(response)

    def _frame(self, frame: Frame) -> None:
        now = self.server.clock()
        if frame.opcode is Opcode.TEXT and frame.fin:
            self._text(bytes(frame.data), now)
        elif frame.opcode is Opcode.TEXT or frame.opcode is Opcode.CONT:
            # PROTOCOL: each frame is one unfragmented message (a first fragment that
            # happened to be whole JSON must not pass for the message).
            detail = "fragmented messages are not accepted: send each frame whole"
            self._fail(self.session.fail(ErrorCode.BAD_REQUEST, detail))
        elif frame.opcode is Opcode.BINARY:
            self._fail(self.session.fail(ErrorCode.BAD_REQUEST, "frames are JSON text"))
        elif frame.opcode is Opcode.PONG:
            self.session.received_pong(now)
        elif frame.opcode is Opcode.PING:
            self.session.received_pong(now)  # any traffic proves the peer alive

    def _text(self, data: bytes, now: float) -> None:
        if not data.isascii():
            try:
                data.decode()
            except UnicodeDecodeError as exc:
                # RFC 6455 §8.1: fail the connection with 1007, as websockets' own
                # connections do (websockets.asyncio.connection), on either path.
                self.session.close()
                self.ws.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self._flush()
                return
        if len(data) > self.server.config.max_frame:
            limit = self.server.config.max_frame
            detail = f"frame of {len(data)} bytes; the limit is {limit}"
            self._fail(self.session.fail(ErrorCode.TOO_LARGE, detail))
            return
        event = self.session.receive(data, now)
        if isinstance(event, AckReceived):
            self._ack(event.cursor)
        elif isinstance(event, PingReceived):
            self._send(event.pong)
        elif isinstance(event, ChatReceived):
            self.requests.add(event.frame)
        elif isinstance(event, HelloReceived):
            self.server.spawn(self._authenticate(event.hello))
        elif isinstance(event, Failure):
            self._fail(event)

    def _ack(self, cursor: int) -> None:
        if self.delivery is None:
            return
        try:
            self.delivery.ack(cursor)
        except PinrelayError as exc:
            self._fail(self.session.fail(exc.code, exc.detail))

    async def _authenticate(self, hello: frames.Hello) -> None:
        try:
            await self._check_hello(hello)
        except Exception:
            log.exception("authenticating %s failed", hello.pin)
            if self.session.state is AUTHENTICATING:
                self._fail(
                    self.session.fail(
                        ErrorCode.OVERLOADED, "relay cannot serve this link now", 1000
                    )
                )

    def _still_authenticating(self) -> bool:
        """After an await: the link may have failed, timed out or drained meanwhile."""
        transport = self.transport
        return (
            self.session.state is AUTHENTICATING
            and transport is not None
            and not transport.is_closing()
        )

    async def _check_hello(self, hello: frames.Hello) -> None:
        server = self.server
        try:
            principal = await server.auth.device(hello.pin, hello.token, "link " + self.peer)
        except RateLimited as exc:
            if self._still_authenticating():
                self._fail(
                    self.session.fail(
                        ErrorCode.RATE_LIMITED,
                        exc.detail,
                        retry_after_ms=int(exc.retry_after * 1000) + 1,
                    )
                )
                self._flush()
            return
        except PinrelayError as exc:
            if exc.code is not ErrorCode.UNAUTHORIZED:
                raise
            # One answer for an unknown PIN and a wrong token: no PIN enumeration.
            if self._still_authenticating():
                self._fail(self.session.fail(ErrorCode.UNAUTHORIZED, exc.detail))
                self._flush()
            return
        if not self._still_authenticating():
            return
        device = principal.device
        if hello.cursor > device.last_cursor:
            limit = await beyond_limit(server.store, device.pin, hello.cursor, device.last_cursor)
            if not self._still_authenticating():
                return
            if limit is not None:
                self._fail(
                    self.session.fail(
                        ErrorCode.INVALID,
                        f"cursor {hello.cursor} is ahead of the device's last message ({limit})",
                    )
                )
                self._flush()
                return
        if not await self._within_links_quota(device):
            return
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        window = min(hello.window or server.config.default_window, server.config.max_window)
        # Acks this relay has and has not stored yet (AckWriter: held ACK_DELAY_S, then
        # written) count as stored: their receipts are.  A device that links again at
        # once (an SDK's stop() acks, then closes) is not handed what it acknowledged.
        stored = max(device.acked_cursor, server.acks.cursor(device.pin))
        # hello.cursor says the client is done with everything up to it (PROTOCOL "hello").
        acked = max(hello.cursor, stored)
        self.pin = device.pin
        if device.tenant is not None:
            # Counted in the same turn of the loop as the check: no link slips between.
            self._tenant = device.tenant
            server.tenant_links.add(device.tenant, device.pin)
        self.delivery = Delivery(
            server.store,
            device.pin,
            acked=acked,
            window=window,
            send=self._send_messages,
            clock=server.clock,
            metrics=server.metrics,
            acks=server.acks,
            on_acked=server.on_acked,
            on_broken=self._receipts_failed,
            on_sent=server.on_sent,
            on_gone=None if server.on_gone is None else self._gone,
            tenant=device.tenant,
        )
        server.metrics.links_open.inc()
        server.router.attach(device.pin, self)
        self._send(
            self.session.accept(
                frames.Welcome(
                    session=new_secret(os.urandom, 12),
                    pin=device.pin,
                    cursor=acked,
                    window=window,
                    heartbeat_s=server.config.heartbeat_s,
                    max_frame=server.config.max_frame,
                    node=server.config.node,
                    region=server.config.region,
                    version=__version__,
                )
            )
        )
        if server.system is not None:  # incidents' news, before any stored message
            server.system.hello(self)
        if acked > stored:
            # Chat messages an earlier link delivered get their receipts, then the ack.
            self.delivery.settle_from(stored, acked)
        server.touch(device.pin)
        if not server.router.wakes_after_attach:
            self.delivery.wake()

    async def _within_links_quota(self, device: Device) -> bool:
        """Whether the device's tenant may hold one more link here (its ``links``
        quota, counted per relay: PROTOCOL "Quotas"); if not, the link fails with
        ``rate_limited`` (4429) naming the quota.  One cached tenant read (SQLite: a
        primary-key read), as every key's call does."""
        if device.tenant is None:
            return True
        tenant = await self.server.store.get_tenant(device.tenant)
        if not self._still_authenticating():
            return False
        limit = tenant.quotas.links if tenant is not None and tenant.live else None
        if self.server.tenant_links.admits(device.tenant, device.pin, limit):
            return True
        refusal = over(device.tenant, "links", f"{limit} links on this relay")
        self.server.metrics.quota_refusals.labels("links").inc()
        self._fail(
            self.session.fail(
                ErrorCode.RATE_LIMITED, refusal.detail, retry_after_ms=LINKS_QUOTA_RETRY_MS
            )
        )
        self._flush()
        return False

    def _gone(self, items: list[tuple[int, int]]) -> None:
        if self.server.on_gone is not None:
            self.server.on_gone(self._tenant, items)

    # --- sending -------------------------------------------------------------
    def _send_messages(self, batch: list[StoredMessage]) -> None:
        transport = self.transport
        if self.ws.state is WsState.OPEN and transport is not None:
            self._flush()  # whatever websockets queued goes first (as a rule, nothing)
            if not transport.is_closing():
                # Built by hand, all in one write (link/wireframes.py).
                transport.write(b"".join([text_frame(frames.encode(msg_frame(m))) for m in batch]))

    def _send(self, data: bytes) -> None:
        if self.ws.state is WsState.OPEN:
            self.ws.send_text(data)
            self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        chunks = self.ws.data_to_send()
        if chunks:
            eof = not chunks[-1]  # the sans-I/O core asks for EOF: the close is done
            data = b"".join(chunks)
            if data:
                transport.write(data)  # one write (one syscall) for every queued frame
            if eof:
                transport.close()
                return
        if self.ws.close_expected() and self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, transport.abort
            )

    def _fail(self, failure: Failure) -> None:
        self._send(failure.frame)
        self._close(failure.code.close_code, failure.detail)

    def _close(self, code: int, reason: str) -> None:
        if self.ws.state is WsState.OPEN:
            # A close reason fits in 123 bytes (RFC 6455 §5.5): cut bytes, not characters.
            short = reason.encode()[:123].decode(errors="ignore")
            self.ws.send_close(code, short)
            self._flush()
        elif self.transport is not None and self.ws.state is WsState.CONNECTING:
            self.transport.abort()

    # --- called by the router and the server ---------------------------------
    @property
    def linked(self) -> bool:
        return self.delivery is not None

    @property
    def tenant(self) -> str | None:
        return self._tenant

    def send_system(self, data: bytes) -> None:
        """A ``system`` msg (link/system.py): no window slot; not queued while the
        buffer is over WRITE_HIGH (rule 5)."""
        if self._stalled_at is not None:
            self._system_missed = True
        else:
            self._send(data)

    def wake(self, fresh: list[StoredMessage] | None = None) -> None:
        if self.delivery is not None:
            self.delivery.wake(fresh)

    def _receipts_failed(self) -> None:
        self._fail(self.session.fail(ErrorCode.OVERLOADED, "cannot store receipts now", 1000))

    def kick(self, code: ErrorCode, detail: str) -> None:
        self._fail(self.session.fail(code, detail))

    def _hello_due(self) -> None:
        self._hello_timer = None
        if self.session.state is AWAIT_HELLO or self.session.state is AUTHENTICATING:
            self._fail(self.session.fail(ErrorCode.HELLO_TIMEOUT, "no hello in time"))

    def _stalled(self, now: float) -> bool:
        """Whether the outgoing buffer has stayed over WRITE_HIGH without shrinking for
        ``heartbeat_s``: the client does not read (PROTOCOL "Flow control")."""
        transport = self.transport
        if self._stalled_at is None or transport is None:
            return False
        size = _queued_bytes(transport)
        if size < self._stalled_size:
            # The client reads, slowly: that proves it alive as a pong would.
            self._stalled_at, self._stalled_size = now, size
            self.session.received_pong(now)
            return False
        return now - self._stalled_at >= self.server.config.heartbeat_s

    def tick(self, now: float) -> None:
        if self._stalled(now) and self.ws.state is WsState.OPEN:
            waiting = self._stalled_size
            self._fail(
                self.session.fail(
                    ErrorCode.RATE_LIMITED,
                    f"the client does not read: {waiting} bytes wait for it",
                    retry_after_ms=STALL_RETRY_MS,
                )
            )
            return
        due = self.session.tick(now)
        if due is Tick.NOTHING:
            return
        if due is Tick.SEND_PING:
            if self.ws.state is WsState.OPEN:
                self.ws.send_ping(b"")
                self._flush()
        elif due is Tick.HELLO_TIMEOUT:
            self._fail(self.session.fail(ErrorCode.HELLO_TIMEOUT, "no hello in time"))
        elif due is Tick.DEAD and self.transport is not None:
            self.transport.abort()

    def drain(self, reason: str, retry_after_ms: int, alternates: list[str]) -> None:
        self._send(
            frames.encode(
                frames.Drain(reason=reason, retry_after_ms=retry_after_ms, alternates=alternates)
            )
        )
        self.session.close()
        self._close(1001, reason)


class LinkServer:
    """All links of one relay process, and the timer that walks them."""

    def __init__(
        self,
        *,
        store: Store,
        router: Router,
        config: LinkConfig,
        metrics: Metrics,
        clock: Callable[[], float],
        auth: Authenticator,
        chat: Chat | None = None,
        webpush: WebPush | None = None,
        on_acked: OnAcked | None = None,
        on_sent: OnSent | None = None,
        on_gone: Callable[[str | None, list[tuple[int, int]]], None] | None = None,
    ) -> None:
        self.store = store
        #: Told of counted messages a device of a tenant acknowledged (its ledger).
        self.on_gone = on_gone
        self.chat = chat
        #: Told of each tracked message sent (a broadcast's, counted).
        self.on_sent = on_sent
        self.webpush = webpush
        #: Told of tracked messages a device acknowledged, before the ack is stored.
        self.on_acked = on_acked
        self.router = router
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.auth = auth
        self.connections: set[LinkProtocol] = set()
        #: Each tenant's devices linked here, for its links quota (core/quotas.py).
        self.tenant_links = LinkCounts()
        self.acks = AckWriter(store)
        self.draining = False
        #: Incidents' news to the links (link/system.py); set by the relay.
        self.system: SystemNotices | None = None
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Last-seen times not written yet, oldest first (see touch).
        self._touches: dict[str, int] = {}
        self._touching: asyncio.Task[None] | None = None
        metrics.links_capacity.set(config.max_links)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("link task failed", exc_info=task.exception())

    def touch(self, pin: str) -> None:
        """Record that the device was seen; written soon, at most TOUCH_RATE a second.

        Last-seen is bookkeeping: a reconnect storm must not spend the store's
        capacity on it (in a cluster each write is a replicated KV update) while
        hellos and pushes wait (DECISIONS 24).
        """
        self._touches[pin] = int(self.clock() * 1000)
        if self._touching is None:
            self._touching = asyncio.get_running_loop().create_task(self._write_touches())

    async def _write_touches(self) -> None:
        per_step = max(1, TOUCH_RATE // 10)
        try:
            while self._touches:
                batch = list(itertools.islice(self._touches.items(), per_step))
                for pin, _ in batch:
                    del self._touches[pin]
                done = await asyncio.gather(
                    *(self.store.touch_device(pin, ms) for pin, ms in batch),
                    return_exceptions=True,
                )
                failed = [r for r in done if isinstance(r, BaseException)]
                if failed:
                    log.warning("%d last-seen writes failed: %r", len(failed), failed[0])
                if self._touches:
                    await asyncio.sleep(0.1)
        finally:
            self._touching = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: LinkProtocol(self), host, port, backlog=4096, reuse_address=True
        )
        self._ticker = loop.create_task(self._tick_forever())
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def _tick_forever(self) -> None:
        # One timer for all links; resolution a tenth of the heartbeat (max 2 s).
        interval = max(0.05, min(2.0, self.config.heartbeat_s / 10))
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            for link in list(self.connections):
                link.tick(now)

    async def drain(self, reason: str = "shutdown", alternates: list[str] | None = None) -> None:
        """Tell every link to go away and come back later, spread over time."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        cfg = self.config
        for link in list(self.connections):
            delay = cfg.drain_retry_ms + random.randint(0, cfg.drain_jitter_ms)
            link.drain(reason, delay, alternates or [])
        deadline = self.clock() + CLOSE_TIMEOUT
        while self.connections and self.clock() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for link in list(self.connections):
            if link.transport is not None:
                link.transport.abort()
        if self._server is not None:
            self._server.close()
        for task in [*self._tasks, *([self._touching] if self._touching else [])]:
            task.cancel()
        # Bounded: a store too slow to take them only costs redeliveries (DECISIONS 28).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.acks.flush(), ACK_FLUSH_TIMEOUT)
