"""The relay side of one device link, sans I/O.

Theory of operation (docs/PROTOCOL.md, "Session"):

1. A link starts in ``AWAIT_HELLO``.  The first frame must be ``hello``; anything
   else fails the link with ``bad_request``.  No hello within ``hello_timeout``
   fails it with ``hello_timeout``.
2. A hello moves the link to ``AUTHENTICATING`` while the I/O layer checks the
   token.  Frames that arrive before the answer fail the link: a client waits for
   ``welcome``.
3. :meth:`ServerSession.accept` sends ``welcome`` and moves to ``OPEN``, where
   ``ack`` and ``ping`` frames are legal; a ``ping`` is answered with ``pong``.
   Before ``welcome`` a ``ping`` is as illegal as any frame but ``hello``.
4. :meth:`ServerSession.fail` sends an ``error`` frame and moves to ``CLOSED``; the
   I/O layer then closes the WebSocket with ``code.close_code``.

The parser never raises: a bad frame becomes a :class:`Failure` event naming the
cause.  Timers stay outside: :meth:`tick` says what is due at ``now``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from pinrelay.core import frames, strictjson
from pinrelay.core.errors import ErrorCode


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSED = "closed"


AWAIT_HELLO, AUTHENTICATING, OPEN, CLOSED = State


@dataclass(frozen=True, slots=True)
class HelloReceived:
    hello: frames.Hello


@dataclass(frozen=True, slots=True)
class AckReceived:
    cursor: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The link must send ``pong`` (a ``pong`` frame echoing the ping's ``id``)."""

    pong: bytes


@dataclass(frozen=True, slots=True)
class ChatReceived:
    """A ``send``, a ``read`` or a ``subscribe``: the link queues it behind the
    earlier ones."""

    frame: frames.Send | frames.Read | frames.Subscribe


@dataclass(frozen=True, slots=True)
class Failure:
    """The link must send ``frame`` and close with ``code.close_code``."""

    code: ErrorCode
    detail: str
    frame: bytes


Event = HelloReceived | AckReceived | PingReceived | ChatReceived | Failure


class Tick(enum.Enum):
    """What :meth:`ServerSession.tick` says is due."""

    NOTHING = "nothing"
    SEND_PING = "send_ping"
    DEAD = "dead"
    HELLO_TIMEOUT = "hello_timeout"


#: Which frame type is legal in which state (h11-style table).
_LEGAL: dict[State, tuple[type[frames.ClientFrame], ...]] = {
    AWAIT_HELLO: (frames.Hello,),
    AUTHENTICATING: (),
    OPEN: (frames.Ack, frames.Ping, frames.Send, frames.Read, frames.Subscribe),
    CLOSED: (),
}


def error_frame(code: ErrorCode, detail: str, retry_after_ms: int | None = None) -> bytes:
    return frames.encode(
        frames.Error(
            code=code.wire, status=code.status, message=detail, retry_after_ms=retry_after_ms
        )
    )


class ServerSession:
    """Frame-level state of one link: parse, check order, time heartbeats."""

    __slots__ = ("_ping_sent_at", "deadline", "heartbeat_s", "last_rx", "state")

    def __init__(self, now: float, *, hello_timeout: float, heartbeat_s: float) -> None:
        self.state = AWAIT_HELLO
        self.heartbeat_s = heartbeat_s
        self.deadline = now + hello_timeout
        self.last_rx = now
        self._ping_sent_at: float | None = None

    def receive(self, data: frames.Buffer, now: float) -> Event | None:
        """Feed one text frame; return what it means (None once closed)."""
        self.last_rx = now
        self._ping_sent_at = None
        if self.state is CLOSED:
            return None
        try:
            frame = frames.decode_client(data)
        except msgspec.ValidationError as exc:
            return self.fail(ErrorCode.INVALID, f"invalid frame: {exc}")
        except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
            # RecursionError: absurdly deep nesting; UnicodeError: lone surrogates.
            return self.fail(ErrorCode.BAD_REQUEST, f"malformed frame: {exc}")
        if not isinstance(frame, _LEGAL[self.state]):
            tag = type(frame).__name__.lower()
            return self.fail(
                ErrorCode.BAD_REQUEST, f"'{tag}' frame not allowed in state {self.state.value}"
            )
        if isinstance(frame, frames.Ack):
            # The hot path: one integer field, where a repeated key changes nothing.
            if frame.cursor is None:
                return None  # a system message acked by its null cursor: nothing to do
            return AckReceived(frame.cursor)
        try:
            strictjson.check(data if isinstance(data, bytes | str) else bytes(data))
        except strictjson.StrictJsonError as exc:
            return self.fail(ErrorCode.BAD_REQUEST, f"malformed frame: {exc}")
        if isinstance(frame, frames.Hello):
            self.state = AUTHENTICATING
            return HelloReceived(frame)
        if isinstance(frame, frames.Ping):
            return PingReceived(frames.encode(frames.Pong(id=frame.id)))
        return ChatReceived(frame)

    def received_pong(self, now: float) -> None:
        self.last_rx = now
        self._ping_sent_at = None

    def accept(self, welcome: frames.Welcome) -> bytes:
        """Authentication succeeded: the ``welcome`` frame to send."""
        if self.state is not AUTHENTICATING:
            raise RuntimeError(f"accept() in state {self.state.value}")
        self.state = OPEN
        return frames.encode(welcome)

    def fail(self, code: ErrorCode, detail: str, retry_after_ms: int | None = None) -> Failure:
        self.state = CLOSED
        return Failure(code, detail, error_frame(code, detail, retry_after_ms))

    def close(self) -> None:
        self.state = CLOSED

    def tick(self, now: float) -> Tick:
        """What is due at ``now``: a ping, or closing a silent or dead link."""
        if self.state in (AWAIT_HELLO, AUTHENTICATING):
            return Tick.HELLO_TIMEOUT if now >= self.deadline else Tick.NOTHING
        if self.state is CLOSED:
            return Tick.NOTHING
        if self._ping_sent_at is not None:
            # A pong (or any frame) within one heartbeat proves the link alive.
            return Tick.DEAD if now - self._ping_sent_at >= self.heartbeat_s else Tick.NOTHING
        if now - self.last_rx >= self.heartbeat_s:
            self._ping_sent_at = now
            return Tick.SEND_PING
        return Tick.NOTHING
