"""uvicorn's httptools protocol, with a response written in one send and a push path
of its own.

uvicorn writes a response's status line and headers, then its body, in two
``transport.write`` calls: two syscalls, and two segments the client must read.
Here the writes made in one turn of the event loop are joined and sent together
at its end (docs/DECISIONS.md, "A writer process", has the measurement).

``POST /v1/devices/{pin}/messages`` skips ASGI: the parser's callbacks fill a
``PushCycle`` and its task calls the push handler and writes the answer itself.
ASGI's scope, receive/send messages, the proxy-headers middleware and Starlette's
Request and Response cost a push more than its handler (DECISIONS 27).  Whatever
the push path does not take (a pipelined request, ``Expect: 100-continue``,
HTTP/1.0, ``X-Forwarded-For``, an odd URL) goes through ASGI as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from pinrelay.api.common import Call, check_body_headers, too_large
from pinrelay.api.httpbounds import (
    LINGER_BYTES,
    MAX_REQUEST_LINE,
    RETRY_AFTER_S,
    HttpBounds,
    HttpLimits,
    refusal,
)
from pinrelay.api.messages import push_body_limit, push_one_call, push_path_pin
from pinrelay.api.problems import PROBLEM_JSON, error_parts, problem_parts
from pinrelay.api.webpush import push_call as webpush_push_call
from pinrelay.api.webpush import push_path_sub
from pinrelay.core.errors import ErrorCode, LimitExceeded, PinrelayError
from pinrelay.core.webpush import MAX_BODY as WEBPUSH_MAX_BODY

if TYPE_CHECKING:
    from pinrelay.relay import Relay

log = logging.getLogger(__name__)
#: Requests a client may queue behind the one being answered (HTTP/1.1 pipelining).
MAX_PIPELINED = 8
_JSON = b"application/json"
_PROBLEM = PROBLEM_JSON.encode()


class CoalescingTransport:
    """Delegates to ``transport``; ``write`` is deferred to the end of the loop's turn."""

    __slots__ = ("_loop", "_out", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._out: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._out:
            self._loop.call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        out, self._out = self._out, []
        if out and not self._transport.is_closing():
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def write_now(self, data: bytes) -> None:
        """Write without waiting for the end of the turn (after what waits, in order)."""
        if self._out:
            self._out.append(data)
        elif not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(b) for b in self._out)

    def close(self) -> None:
        self.flush()  # a response written just before a close still goes out
        self._transport.close()

    def abort(self) -> None:
        self._out.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def push_pin(url: bytes) -> str | None:
    """The PIN of a push URL the push path takes, else None (an escaped or odd URL
    goes through Starlette, which decodes it)."""
    path, _, _ = url.partition(b"?")
    if b"%" in path or b"#" in url:
        return None
    return push_path_pin(path.decode("latin-1"))


def webpush_sub(url: bytes) -> str | None:
    """The subscription id of a Web Push URL (``/push/{sub}``) the push path takes,
    else None (as :func:`push_pin`)."""
    path, _, _ = url.partition(b"?")
    if b"%" in path or b"#" in url:
        return None
    return push_path_sub(path.decode("latin-1"))


class _Gone(Exception):
    """The client hung up before its body arrived: nobody reads an answer."""


class PushCycle:
    """One push request on the push path.

    uvicorn's protocol reads a few attributes of whatever request is in progress
    (``response_complete``, ``keep_alive``, ``disconnected``, ``message_event``):
    they mean here what they mean on its own cycles.
    """

    __slots__ = (
        "_waiter",
        "body",
        "call",
        "complete",
        "disconnected",
        "keep_alive",
        "limit",
        "over",
        "pin",
        "protocol",
        "response_complete",
    )

    def __init__(self, protocol: HttpProtocol, call: Call, pin: str, keep_alive: bool) -> None:
        self.protocol = protocol
        self.call = call
        self.pin = pin
        self.keep_alive = keep_alive
        self.limit = push_body_limit(call.relay)
        self.body = bytearray()
        self.complete = False
        self.over = False
        self.disconnected = False
        self.response_complete = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def message_event(self) -> PushCycle:
        return self  # connection_lost calls message_event.set(): see set()

    # --- the parser's side -----------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if self.over or self.response_complete:
            return
        if len(self.body) + len(chunk) > self.limit:
            self.over = True  # answered 413; the rest of the body is read and dropped
            self.body = bytearray()
            self.set()
        else:
            self.body += chunk

    def finish(self) -> None:
        self.complete = True
        self.set()

    def set(self) -> None:
        """Wake the handler waiting for the body (it arrived, or the client left)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the handler's side ----------------------------------------------------
    async def read(self) -> bytes:
        check_body_headers(self.call.headers, self.limit)
        if not (self.complete or self.over or self.disconnected):
            self._waiter = self.protocol.loop.create_future()
            await self._waiter
        if self.disconnected:
            raise _Gone
        if self.over:
            raise too_large(self.limit)
        return bytes(self.body)

    async def handle(self) -> tuple[int, bytes | None, bytes, dict[str, str]]:
        """Status, content type (None: no body), body and headers of the answer."""
        return 201, _JSON, await push_one_call(self.call, self.pin, self.read), {}

    async def run(self) -> None:
        try:
            status, ctype, body, headers = await self.handle()
        except _Gone:
            return
        except PinrelayError as exc:
            status, ctype = exc.code.status, _PROBLEM
            body, headers = error_parts(exc, self.call.path)
        except Exception:
            log.exception("unhandled error on POST %s", self.call.path)
            status, ctype = 500, _PROBLEM
            body, headers = problem_parts(ErrorCode.INTERNAL, "internal error; see the relay's log")
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()
        if not self.disconnected:
            self._respond(status, ctype, body, headers)

    def _respond(
        self, status: int, ctype: bytes | None, body: bytes, headers: dict[str, str]
    ) -> None:
        protocol = self.protocol
        out = [STATUS_LINE[status]]
        for name, value in protocol.server_state.default_headers:
            out += (name, b": ", value, b"\r\n")
        if ctype is not None:
            out.append(b"content-type: %s\r\n" % ctype)
        out.append(b"content-length: %d\r\n" % len(body))
        for key, text in headers.items():
            out.append(b"%s: %s\r\n" % (key.lower().encode("latin-1"), text.encode("latin-1")))
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        out += (b"\r\n", body)
        transport = protocol.transport
        # One write already: no need to wait for the end of the turn (a turn of the
        # loop saved per push).
        transport.write_now(b"".join(out))
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()


class WebPushCycle(PushCycle):
    """A Web Push request (``POST /push/{sub}``, RFC 8030 §5) on the push path: any
    media type, at most ``MAX_BODY`` bytes, answered with headers and no body."""

    __slots__ = ()

    def __init__(self, protocol: HttpProtocol, call: Call, sub: str, keep_alive: bool) -> None:
        super().__init__(protocol, call, sub, keep_alive)
        self.limit = WEBPUSH_MAX_BODY

    async def read(self) -> bytes:
        length = self.call.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            raise LimitExceeded(f"the body is {length} bytes; the limit is {self.limit}")
        if not (self.complete or self.over or self.disconnected):
            self._waiter = self.protocol.loop.create_future()
            await self._waiter
        if self.disconnected:
            raise _Gone
        if self.over:
            raise too_large(self.limit)
        return bytes(self.body)

    async def handle(self) -> tuple[int, bytes | None, bytes, dict[str, str]]:
        status, headers = await webpush_push_call(self.call, self.pin, self.read)
        return status, None, b"", headers


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's protocol with the push path and the bounds of api/httpbounds.py."""

    transport: CoalescingTransport  # type: ignore[assignment]
    #: The relay whose pushes take the push path; None: everything goes through ASGI.
    relay: ClassVar[Relay | None] = None
    #: The server's connections and their limits; None: unbounded (uvicorn's own).
    bounds: ClassVar[HttpBounds | None] = None

    # Per connection (httpbounds rules 2 and 4): bytes of the head being read, whether
    # a head is being read (not a body), and whether the connection was refused.
    deadline: float | None = None
    _head_bytes = 0
    _in_head = True
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)  # type: ignore[arg-type]
        bounds = self.bounds
        if bounds is None:
            return
        if not bounds.admit(self, self.loop):  # rule 1
            self._refuse(
                ErrorCode.OVERLOADED,
                "the relay holds as many HTTP connections as it may; retry later",
                retry_after=RETRY_AFTER_S,
            )
            return
        self.timeout_keep_alive = bounds.limits.keepalive_s  # type: ignore[assignment]
        self.deadline = self.loop.time() + bounds.limits.header_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.bounds is not None:
            self.bounds.release(self)

    def data_received(self, data: bytes) -> None:
        """Feed the parser no more of one head than ``max_head`` bytes (rule 4)."""
        bounds = self.bounds
        if bounds is None:
            super().data_received(data)
            return
        if self._refused:  # lingering: dropped, up to LINGER_BYTES (rule 6)
            self._head_bytes += len(data)
            if self._head_bytes > LINGER_BYTES and not self.transport.is_closing():
                self.transport.close()
            return
        max_head = bounds.limits.max_head
        while not self._refused:
            if self._in_head:
                room = max_head - self._head_bytes
                piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
                self._head_bytes += len(piece)
            else:
                piece, data = data, b""
            if piece:
                super().data_received(piece)
            if not data or self._refused or self.transport.is_closing():
                return
            if self._in_head and self._head_bytes >= max_head:
                self._refuse(
                    ErrorCode.HEADERS_TOO_LARGE,
                    f"the request line and headers exceed {max_head} bytes",
                )

    def expire(self) -> None:
        """A deadline passed (rules 2 and 6): close, as if the client had left.

        Aborted, not closed, when answers wait unsent: a client that does not read
        would otherwise hold its connection (and its slot under the cap) for good.
        """
        self.deadline = None
        transport = self.transport
        if transport.get_write_buffer_size() > 0:
            transport.abort()
        elif not transport.is_closing():
            transport.close()

    _deadline_before_pause: float | None = None

    def pause_writing(self) -> None:
        """The client stopped reading: it gets ``body_timeout_s`` to read again."""
        super().pause_writing()
        bounds = self.bounds
        if bounds is not None and not self._refused:
            self._deadline_before_pause = self.deadline
            self.deadline = self.loop.time() + bounds.limits.body_timeout_s

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.bounds is not None and not self._refused:
            self.deadline = self._deadline_before_pause

    def _unsupported_upgrade_warning(self) -> None:
        pass  # no WebSocket on the API port: an upgrade is a plain request, not a log line

    def _refuse(self, code: ErrorCode, detail: str, retry_after: float | None = None) -> None:
        """Answer ``code`` and close: after a lingering read when possible (rule 6)."""
        if self._refused:
            return
        self._refused = True
        self.deadline = None
        self._head_bytes = 0  # from now on: the bytes dropped while lingering
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head refused behind a request still being answered: the
            # answer in progress cannot be followed by this one; close.
            cycle.disconnected = True
            transport.close()
            return
        transport.write(refusal(code, detail, self.server_state.default_headers, retry_after))
        transport.flush()
        self.flow.resume_reading()
        bounds = self.bounds
        if bounds is not None and transport.can_write_eof() and bounds.linger(self, self.loop):
            transport.write_eof()
        else:
            transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        bounds = self.bounds
        if bounds is not None and self.deadline is None:  # rule 2, a later request
            self.deadline = self.loop.time() + bounds.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        super().on_url(url)
        if len(self.url) > MAX_REQUEST_LINE and self.bounds is not None:
            self._refuse(
                ErrorCode.URI_TOO_LONG, f"the request target exceeds {MAX_REQUEST_LINE} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        bounds = self.bounds
        if bounds is not None and len(self.pipeline) >= MAX_PIPELINED:
            # Queued requests cost memory until answered, and one read may hold
            # thousands: a client may have a few in flight, not more (rule 4).
            self._refuse(ErrorCode.RATE_LIMITED, "too many pipelined requests")
            return
        if bounds is not None:
            self._in_head = False
            self._head_bytes = 0
            max_body = bounds.limits.max_body
            for name, value in self.headers:
                if name == b"content-length":
                    if value.isdigit() and int(value) > max_body:  # rule 5
                        self._refuse(
                            ErrorCode.TOO_LARGE,
                            f"body is {int(value)} bytes; the limit is {max_body}",
                        )
                        return
                    break
            self.deadline = self.loop.time() + bounds.limits.body_timeout_s
        cycle = self._push_cycle()
        if cycle is None:
            super().on_headers_complete()
            return
        self.cycle = cycle  # type: ignore[assignment]
        task = self.loop.create_task(cycle.run())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _push_cycle(self) -> PushCycle | None:
        relay = self.relay
        parser = self.parser
        busy = self.cycle is not None and not self.cycle.response_complete
        if (
            relay is None
            or busy  # pipelined: uvicorn queues it behind the one in progress
            or self.expect_100_continue
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or self.limit_concurrency is not None
        ):
            return None
        cycle: type[PushCycle] = PushCycle
        pin = push_pin(self.url)
        if pin is None:
            pin = webpush_sub(self.url)
            if pin is None:
                return None
            cycle = WebPushCycle
        headers: dict[str, str] = {}
        for name, value in self.headers:
            key = name.decode("latin-1")
            if key not in headers:  # the first of repeated headers, as Starlette reads
                headers[key] = value.decode("latin-1")
        if "x-forwarded-for" in headers:  # a trusted proxy's: uvicorn's middleware reads it
            return None
        path = self.url.partition(b"?")[0].decode("latin-1")
        call = Call(relay, path, headers, self.client[0] if self.client else None)
        return cycle(self, call, pin, keep_alive=parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        cycle = self.cycle
        if isinstance(cycle, PushCycle):
            cycle.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_head = True  # what follows is the next request's head
        self.deadline = None  # the handler takes its time (rule 2)
        cycle = self.cycle
        if isinstance(cycle, PushCycle):
            cycle.finish()
        else:
            super().on_message_complete()


def http_protocol(relay: Relay) -> type[HttpProtocol]:
    """The protocol class uvicorn builds for every connection of ``relay``'s API."""

    class RelayHttpProtocol(HttpProtocol):
        pass

    RelayHttpProtocol.relay = relay
    RelayHttpProtocol.bounds = HttpBounds(HttpLimits.of(relay.config))
    return RelayHttpProtocol
