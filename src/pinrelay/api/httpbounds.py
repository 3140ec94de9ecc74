"""Bounds on the HTTP API's connections: how many are held, for how long, and how
large a request's head and body may be (docs/DECISIONS.md, entry 30).

``HttpProtocol`` (api/httpproto.py) applies them to every connection, so they hold
for the push path and for everything that goes to Starlette alike.  The rules:

1. At most ``max_connections`` connections are held.  One more is answered 503 with
   ``Retry-After`` at once and closed: it never waits for a place.  Links have their
   own share of the open-file limit (relay.py): neither can starve the other.
2. A request has ``header_timeout_s`` for its request line and headers, counted from
   the connection (first request) or from its first byte (later ones), then
   ``body_timeout_s`` for its whole body.  Past either, the connection is closed.
   Once the body is in, there is no deadline: the handler takes its time (long-poll);
   but while the client does not read its answer (writing paused), it has
   ``body_timeout_s`` to start again, then the connection is aborted.
3. Between requests, an idle connection is closed after ``keepalive_s`` (uvicorn's
   keep-alive timer).
4. The request line and headers together are at most ``max_head`` bytes (431), the
   request line alone at most ``MAX_REQUEST_LINE`` (414).  The parser is never fed
   more of one head than that, so no connection buffers more: httptools keeps an
   unfinished header whole, however long.  At most ``MAX_PIPELINED`` requests
   (api/httpproto.py) wait behind the one being answered; one more closes the
   connection (uvicorn would queue every request of a read, thousands from 256 KiB).
5. A ``Content-Length`` over ``max_body`` is answered 413 before the body is read.
6. Every refusal is problem+json with ``Connection: close``, then a lingering close:
   the write side is shut and what the client still sends is read and dropped, up to
   ``LINGER_S`` and ``LINGER_BYTES``, so a client still writing reads the answer
   instead of a reset.
   At most ``MAX_LINGERING`` connections linger; beyond that they close at once.

Deadlines are numbers on each connection; one timer per server walks them every
``tick`` seconds, so a request costs no timer of its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from pinrelay.api.common import MAX_BODY
from pinrelay.api.problems import PROBLEM_JSON, problem_parts
from pinrelay.core.errors import ErrorCode

if TYPE_CHECKING:
    from pinrelay.config import RelayConfig

#: The request line alone (method, target, version), bytes; longer: 414.
MAX_REQUEST_LINE = 8 * 1024
#: How long, and how many bytes, a refused connection is read and dropped before it
#: is closed (whichever comes first).
LINGER_S = 2.0
LINGER_BYTES = 2 * 1024 * 1024
#: Connections lingering at once (they hold a file each, out of the relay's reserve).
MAX_LINGERING = 128
#: ``Retry-After`` of a 503 at the connection cap, seconds.
RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_s: float
    max_head: int
    max_body: int = MAX_BODY

    @classmethod
    def of(cls, config: RelayConfig) -> HttpLimits:
        return cls(
            max_connections=config.http_max_connections,
            header_timeout_s=config.http_header_timeout_s,
            body_timeout_s=config.http_body_timeout_s,
            keepalive_s=config.http_keepalive_timeout_s,
            max_head=config.http_max_header_bytes,
        )

    @property
    def tick(self) -> float:
        """How often deadlines are checked: a fifth of the shortest, 50-250 ms."""
        return min(0.25, max(0.05, min(self.header_timeout_s, self.body_timeout_s) / 5))


class Bounded(Protocol):
    """A connection under bounds: closed by :meth:`expire` once ``deadline`` passes."""

    #: ``loop.time()`` past which the connection is closed; None: no deadline.
    deadline: float | None

    def expire(self) -> None: ...


class HttpBounds:
    """The connections one HTTP server holds, and the timer that enforces deadlines."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.held: set[Bounded] = set()
        self.lingering: set[Bounded] = set()
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, conn: Bounded, loop: asyncio.AbstractEventLoop) -> bool:
        """Hold ``conn`` (rule 1); False: it is one too many."""
        if len(self.held) >= self.limits.max_connections:
            return False
        self.held.add(conn)
        self._arm(loop)
        return True

    def linger(self, conn: Bounded, loop: asyncio.AbstractEventLoop) -> bool:
        """Let a refused ``conn`` linger (rule 6); False: too many do, close it now."""
        if len(self.lingering) >= MAX_LINGERING:
            return False
        self.lingering.add(conn)
        conn.deadline = loop.time() + LINGER_S
        self._arm(loop)
        return True

    def release(self, conn: Bounded) -> None:
        self.held.discard(conn)
        self.lingering.discard(conn)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_later(self.limits.tick, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        due = [
            c
            for group in (self.held, self.lingering)
            for c in group
            if c.deadline is not None and c.deadline <= now
        ]
        for conn in due:
            conn.expire()
        if self.held or self.lingering:
            self._arm(loop)


def refusal(
    code: ErrorCode,
    detail: str,
    default_headers: list[tuple[bytes, bytes]],
    retry_after: float | None = None,
) -> bytes:
    """A whole problem+json response that closes the connection (rule 6)."""
    body, headers = problem_parts(code, detail, retry_after=retry_after)
    out = [STATUS_LINE[code.status]]
    for name, value in default_headers:
        out += (name, b": ", value, b"\r\n")
    out.append(b"content-type: %s\r\ncontent-length: %d\r\n" % (PROBLEM_JSON.encode(), len(body)))
    for key, text in headers.items():
        out.append(b"%s: %s\r\n" % (key.lower().encode("latin-1"), text.encode("latin-1")))
    out += (b"connection: close\r\n\r\n", body)
    return b"".join(out)
