"""Messages and devices as the store and the edges share them."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from pinrelay.core.errors import ErrorCode, LimitExceeded, RemoteProtocolError
from pinrelay.core.tenants import DEFAULT_TENANT

TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
Urgency = Literal["very-low", "low", "normal", "high"]
#: What a message is (PROTOCOL, "msg"): each edge makes its own kind.
Kind = Literal[
    "push",
    "chat",
    "receipt",
    "contact",
    "webpush",
    "matrix",
    "system",
    "mail",
    "broadcast",
    "makegood",
]
Topic = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
Pin = Annotated[str, Meta(pattern=r"^[0-9A-F]{8}$")]
#: Seconds; a number, so 60.0 is as good as 60 (JSON Schema's "integer" admits both).
Ttl = Annotated[float, Meta(ge=0)]


class Scope(enum.Enum):
    """What an API key may do.  ``admin`` implies the others."""

    PUSH = "push"
    DEVICES = "devices"
    BROADCAST = "broadcast"
    #: A tenant's admin: everything within its tenant (the relay's admin key, from
    #: the config, is the only one above tenants).
    ADMIN = "admin"


class PushFields(Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a push (``POST /v1/devices/{pin}/messages``)."""

    data: Raw
    ttl: Ttl
    topic: Topic | None = None
    urgency: Urgency = "normal"


class BatchItem(PushFields, kw_only=True, forbid_unknown_fields=True):
    to: Pin


class Batch(Struct, kw_only=True, forbid_unknown_fields=True):
    messages: Annotated[list[BatchItem], Meta(min_length=1)]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds every edge enforces (configurable, see config.py)."""

    max_data_bytes: int = 4096
    max_ttl_s: int = 30 * 24 * 3600
    max_batch: int = 1000
    #: ttl=0 ("only if online now") still needs a moment to cross the link.
    ttl0_grace_s: float = 5.0


def check_push(fields: PushFields, limits: Limits) -> None:
    """Bounds that depend on configuration (the schema checks the rest)."""
    if len(fields.data) > limits.max_data_bytes:
        raise LimitExceeded(
            f"data is {len(fields.data)} bytes encoded; the limit is {limits.max_data_bytes}"
        )
    if fields.ttl > limits.max_ttl_s:
        raise RemoteProtocolError(
            f"ttl {fields.ttl} exceeds the maximum of {limits.max_ttl_s} s", ErrorCode.INVALID
        )


class Message(Struct, frozen=True):
    """A message as every part of the relay shares it: one struct, so a new field is
    one edit here (and one in each engine's storage format).

    An edge's message (ingest) has no cursor yet (0); the store gives it one, the
    device's next (:meth:`with_cursor`), and reads return it with that cursor.
    """

    pin: str
    id: str
    data: bytes
    topic: str | None
    urgency: str
    sent_at_ms: int
    expires_at_ms: int
    kind: str = "push"
    sender: str | None = None
    #: The device's cursor of this message (0: not stored yet).
    cursor: int = 0
    #: A name the message keeps for good (a receipt's: its reader, message and
    #: state), so that a store that cannot tell otherwise stores it once: the
    #: cluster keeps one message per name for its duplicate window (2 min).  None:
    #: each append is a message of its own.  Not read back (SQLite does not keep it).
    dedup: str | None = None

    def with_cursor(self, cursor: int) -> Message:
        """The message as stored once the store gave it ``cursor``."""
        return msgspec.structs.replace(self, cursor=cursor)


#: A message an edge accepted, before the store gives it a cursor.
NewMessage = Message
#: A durable message with its per-device cursor.
StoredMessage = Message


class Accepted(Struct, frozen=True):
    """The store's answer for one appended message."""

    id: str
    pin: str
    cursor: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Device:
    pin: str
    token_hash: str
    label: str | None
    created_ms: int
    last_seen_ms: int | None
    #: Highest cursor stored so far (0: none yet).  The cluster engine gives a lower
    #: bound here, cheaply; :meth:`pinrelay.store.base.Store.last_cursor` is exact.
    last_cursor: int
    #: Highest cursor the device acknowledged.
    acked_cursor: int
    #: The tenant it belongs to (core/tenants.py); None: none (moved out, or made
    #: before its tenant was deleted and not moved since).
    tenant: str | None = DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    scope: Scope
    key_hash: str
    created_ms: int
    revoked: bool
    tenant: str = DEFAULT_TENANT


def raw_json(value: object) -> Raw:
    return Raw(msgspec.json.encode(value))
