"""Channels and broadcasts with consent (PROTOCOL, "Channels and broadcasts").

A tenant publishes channels; a device joins one only by its own action (its
token, or a link frame) and leaves the same way.  A tenant reaches many devices
only by broadcasting to a channel's members: there is no "all devices".  Each
channel has a class: ``service`` (what the device signed up for) or ``marketing``,
which a device may refuse as a whole and which reaches a device at most
``cap`` times a (UTC) day.

A broadcast is kept as a record first (its 201), then fanned out member by
member in PIN order, one store write per page of members; the record's
``after`` says how far it got, so a relay that dies mid fan-out leaves the rest
to the next (cluster: any) relay, and every member gets the broadcast once.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Raw, Struct

ChannelClass = Literal["service", "marketing"]
CLASSES: tuple[ChannelClass, ...] = ("service", "marketing")
ChannelName = Annotated[str, Meta(min_length=1, max_length=100)]

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CHANNEL_RE = re.compile(r"^C[0-9A-HJKMNP-TV-Z]{12}$")
ChannelId = Annotated[str, Meta(pattern=r"^C[0-9A-HJKMNP-TV-Z]{12}$")]

#: Channels one device may be a member of.
MAX_MEMBERSHIPS = 200
#: Channels one tenant may hold (tombstones not counted).
MAX_CHANNELS = 1000
#: Members fanned out per store write (one commit / one atomic batch each).
FANOUT_PAGE = 500
#: Marketing broadcasts a device gets a day, unless the relay is told otherwise.
DEFAULT_MARKETING_CAP = 1
DAY_MS = 86_400_000


def new_channel_id(rand: Callable[[int], bytes]) -> str:
    """``C`` and 12 Crockford base32 digits of ``rand`` (60 bits)."""
    value = int.from_bytes(rand(8), "big") >> 4
    return "C" + "".join(_B32[(value >> shift) & 31] for shift in range(55, -1, -5))


def is_channel_id(value: str) -> bool:
    return _CHANNEL_RE.fullmatch(value) is not None


def day_of(now_ms: int) -> int:
    """The UTC day number a marketing cap counts in."""
    return now_ms // DAY_MS


class Channel(Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    name: str
    klass: ChannelClass = msgspec.field(name="class")
    created_ms: int
    #: Set when the channel was deleted: its members are forgotten, its id not reused.
    deleted_ms: int | None = None

    @property
    def live(self) -> bool:
        return self.deleted_ms is None


class Broadcast(Struct, frozen=True, kw_only=True):
    """One broadcast to a channel's members, and how far its fan-out got.

    Every member's message has the broadcast's ``id`` as its message id.  ``after``:
    the members up to this PIN are done (stored, or skipped); ``done_ms`` set: all are.
    """

    id: str
    channel: str
    tenant: str
    #: The API key that sent it (the audit log's "which key"); None: the relay's admin.
    key_id: str | None
    created_ms: int
    expires_ms: int
    #: The message each member receives (``data`` of its ``msg``), JSON.
    data: bytes
    topic: str | None = None
    urgency: str = "normal"
    after: str = ""
    #: Members reached by the fan-out so far (stored + skipped).
    members: int = 0
    stored: int = 0
    #: Members that refused the class or were over the day's marketing cap.
    skipped: int = 0
    done_ms: int | None = None
    #: When the fan-out last wrote its progress: a relay takes over an unfinished
    #: broadcast whose progress stood still for a while (its relay died).
    updated_ms: int = 0
    #: The members of the page being stored, fixed before its write: a relay that
    #: resumes the fan-out stores exactly this page again (an idempotent replay),
    #: whatever joined or left, or whatever page size it has.
    pending: tuple[str, ...] = ()


class BroadcastCounts(Struct, frozen=True):
    """What happened to a broadcast's messages after they were stored, as relays
    counted them (PROTOCOL: a relay that dies may lose its last second of counts)."""

    delivered: int = 0
    acked: int = 0


AuditAction = Literal["broadcast", "channel.create", "channel.delete"]


class AuditEntry(Struct, frozen=True, kw_only=True):
    """One line of a tenant's audit log: who did what, with which key, when."""

    at_ms: int
    tenant: str
    #: The key used; None: the relay's admin key.
    key_id: str | None
    action: AuditAction
    channel: str
    #: The broadcast's id, for a broadcast (its record has how many it reached).
    broadcast: str | None = None


class BroadcastData(Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``data`` of a member's ``msg`` (kind ``broadcast``): the tenant's value,
    and what the device needs to leave the channel (the unsubscribe action)."""

    channel: str
    name: str
    klass: ChannelClass = msgspec.field(name="class")
    data: Raw
    #: The request that leaves the channel, with the device's own token:
    #: ``DELETE /v1/devices/{pin}/channels/{channel}``.
    unsubscribe: str


def member_data(channel: Channel, pin: str, data: bytes) -> bytes:
    """The ``data`` a member's message carries (:class:`BroadcastData`)."""
    return msgspec.json.encode(
        BroadcastData(
            channel=channel.id,
            name=channel.name,
            klass=channel.klass,
            data=Raw(data),
            unsubscribe=f"/v1/devices/{pin}/channels/{channel.id}",
        )
    )
