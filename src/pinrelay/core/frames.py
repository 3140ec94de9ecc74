"""Link frames: JSON text frames, each an object with a ``type`` tag.

One msgspec Struct per frame, named after its tag (docs/PROTOCOL.md, "Frames").
Evolution rule: a new field always gets a default, and decoders ignore fields
they do not know, so old clients keep working with newer relays.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from pinrelay.core.webpush import P256Point, SubscriptionKeys, SubscriptionView

#: Cursor: per-device sequence number, strictly increasing, starting at 1.
Cursor = Annotated[int, Meta(ge=0, le=2**53 - 1)]
#: Window a client may ask for; the relay caps it (see link.max_window).
WindowSize = Annotated[int, Meta(ge=1, le=4096)]
#: What a ``ping`` may carry for its ``pong`` to echo: short, so pongs stay small.
PingId = Annotated[str, Meta(max_length=64)]


class Hello(Struct, tag="hello", tag_field="type", kw_only=True):
    """Client → relay, first frame: who I am and where I left off."""

    pin: str
    token: str
    cursor: Cursor = 0
    window: WindowSize | None = None
    client: str | None = None


class Ack(Struct, tag="ack", tag_field="type", kw_only=True):
    """Client → relay: every message up to ``cursor`` is done (cumulative).  None:
    a client that acked a ``system`` message by its null cursor; nothing is done."""

    cursor: Cursor | None


class Ping(Struct, tag="ping", tag_field="type", kw_only=True):
    """Client → relay, on an open link: answer with ``pong`` (PROTOCOL "Heartbeats").

    For clients whose WebSocket library hides control frames (browsers)."""

    id: PingId | None = None


class Pong(Struct, tag="pong", tag_field="type", kw_only=True):
    """Relay → client: the answer to ``ping``, with its ``id``."""

    id: str | None = None


class Send(Struct, tag="send", tag_field="type", kw_only=True):
    """Client → relay: a chat message to a contact or a group (PROTOCOL "Chat").

    Only the types are checked here; sizes, the PIN and the ttl are the chat's to
    check, and a ``send`` that breaks them is answered with ``unsent``, not an error.
    """

    to: str
    text: str
    client_id: str
    ttl: float | None = None


class Read(Struct, tag="read", tag_field="type", kw_only=True):
    """Client → relay: the user read these chat messages (ids of ``msg`` frames).
    With a ``client_id``, the relay answers ``read_done`` once the receipts are
    stored (so a client knows which reads a crash may have lost)."""

    ids: Annotated[list[str], Meta(min_length=1, max_length=256)]
    client_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None


class ReadDone(Struct, tag="read_done", tag_field="type", kw_only=True):
    """Relay → client: the ``read`` with this ``client_id`` is handled (its receipts,
    if any, are stored)."""

    client_id: str


class Subscribe(Struct, tag="subscribe", tag_field="type", kw_only=True):
    """Client → relay: make a Web Push subscription (PROTOCOL "Web Push")."""

    client_id: Annotated[str, Meta(min_length=1, max_length=64)]
    keys: SubscriptionKeys | None = None
    applicationServerKey: P256Point | None = None


class Subscribed(Struct, tag="subscribed", tag_field="type", kw_only=True):
    """Relay → client: the subscription the ``subscribe`` with ``client_id`` made."""

    client_id: str
    subscription: SubscriptionView


class Sent(Struct, tag="sent", tag_field="type", kw_only=True):
    """Relay → client: the ``send`` with ``client_id`` is stored for every recipient."""

    client_id: str
    id: str
    to: str


class Unsent(Struct, tag="unsent", tag_field="type", kw_only=True):
    """Relay → client: the ``send`` with ``client_id`` was refused; nothing was stored."""

    client_id: str
    code: str
    message: str
    retry_after_ms: int | None = None


class Welcome(Struct, tag="welcome", tag_field="type", kw_only=True):
    """Relay → client: the link is open; ``cursor`` is where delivery resumes after."""

    session: str
    pin: str
    cursor: int
    window: int
    heartbeat_s: float
    max_frame: int
    node: str
    region: str
    version: str


class Msg(Struct, tag="msg", tag_field="type", kw_only=True):
    """Relay → client: one message.  ``data`` is the pushed JSON value, verbatim."""

    id: str
    cursor: int
    kind: str
    data: Raw
    topic: str | None
    urgency: str
    sent_at: str
    expires_at: str
    sender: str | None = msgspec.field(default=None, name="from")


class SystemMsg(Struct, tag="msg", tag_field="type", kw_only=True):
    """Relay → client: a ``msg`` of kind ``system`` (an incident's news, PROTOCOL
    "System messages").  Not stored: ``cursor`` is null and it is never acked.  Its
    own type, not in ``ServerFrame`` (one tag per union): :func:`decode_server_any`."""

    id: str
    cursor: None = None
    kind: Literal["system"] = "system"
    data: Raw
    topic: None = None
    urgency: str = "high"
    sent_at: str
    expires_at: str
    sender: None = msgspec.field(default=None, name="from")


class Error(Struct, tag="error", tag_field="type", kw_only=True):
    """Relay → client: what went wrong; the relay closes with 4000 + ``status``."""

    code: str
    status: int
    message: str
    retry_after_ms: int | None = None


class Drain(Struct, tag="drain", tag_field="type", kw_only=True):
    """Relay → client: go away and come back after ``retry_after_ms`` (± jitter)."""

    reason: str
    retry_after_ms: int
    alternates: list[str] = msgspec.field(default_factory=list)


ClientFrame = Hello | Ack | Ping | Send | Read | Subscribe
ServerFrame = Welcome | Msg | Error | Drain | Pong | Sent | Unsent | Subscribed | ReadDone

_encoder = msgspec.json.Encoder()
_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)
_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
Buffer = str | bytes | bytearray | memoryview


_system_decoder: msgspec.json.Decoder[SystemMsg] = msgspec.json.Decoder(SystemMsg)


def encode(frame: ClientFrame | ServerFrame | SystemMsg) -> bytes:
    return _encoder.encode(frame)


def decode_client(data: Buffer) -> ClientFrame:
    """Decode a client frame; raises msgspec.DecodeError / ValidationError only."""
    try:
        return _client_decoder.decode(data)
    except (RecursionError, UnicodeError) as exc:
        raise msgspec.DecodeError(f"undecodable frame: {type(exc).__name__}") from None


def decode_server(data: Buffer) -> ServerFrame:
    return _server_decoder.decode(data)


def decode_server_any(data: Buffer) -> ServerFrame | SystemMsg:
    """:func:`decode_server`, and ``system`` messages (whose null cursor a stored
    ``msg`` may not have); raises what decode_server raises."""
    try:
        return _server_decoder.decode(data)
    except msgspec.ValidationError:
        try:
            return _system_decoder.decode(data)
        except msgspec.ValidationError:
            pass
        raise
