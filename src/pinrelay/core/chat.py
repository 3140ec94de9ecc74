"""Chat messages and receipts as data (PROTOCOL, "Chat"): checks and encodings.

A chat message is a ``msg`` of kind ``chat`` whose ``data`` is
``{"text": …, "group": <id or null>}``; a receipt is a ``msg`` of kind ``receipt``
whose ``data`` is ``{"id": <chat message id>, "state": "delivered" | "read" |
"failed"}``; a contact notice is kind ``contact`` with ``{"event": …}``.  Pure: the
edges decode the frames, chat.py does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import is_pin

#: Largest chat text, in bytes of UTF-8.
MAX_TEXT = 32 * 1024
MAX_CLIENT_ID = 64
#: A chat's ttl when a send names none: a week.
DEFAULT_TTL_S = 7 * 24 * 3600
#: Control characters a text may not hold (C0 but tab, line feed and carriage
#: return; DEL; C1): they have no place in a message, and JSON escapes each in six bytes,
#: which would let a 32 KiB text grow past the link's frame limit.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

Code = Literal["not_contact", "blocked", "unknown_group", "too_large", "rate_limited", "invalid"]
ReceiptState = Literal["delivered", "read", "failed"]


#: The error (so the HTTP status) of each refusal (POST /v1/devices/{pin}/chat).
_ERRORS: dict[Code, ErrorCode] = {
    "not_contact": ErrorCode.FORBIDDEN,
    "blocked": ErrorCode.FORBIDDEN,
    "unknown_group": ErrorCode.NOT_FOUND,
    "too_large": ErrorCode.TOO_LARGE,
    "rate_limited": ErrorCode.RATE_LIMITED,
    "invalid": ErrorCode.INVALID,
}


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Configurable bounds of the chat (RelayConfig.chat; ``pinrelay serve`` flags)."""

    #: Invitations a device may send per hour (a burst, then evenly).
    invites_per_hour: int = 20
    #: Chat messages a device may send per minute (a burst, then evenly).
    sends_per_minute: int = 600
    #: Bytes a device's chat messages may add to the store per minute (a burst, then
    #: evenly), counted per stored copy (:func:`stored_bytes`): a group message is
    #: one send but a copy per member, so sends alone bound nothing (600 sends of
    #: 32 KiB to 999 members would be 19 GB a minute).
    bytes_per_minute: int = 8 * 1024 * 1024
    #: How long a contact notice or a receipt waits for its device.
    notice_ttl_s: int = 30 * 24 * 3600


#: What a stored copy costs besides its data, for the byte budget: its row or stream
#: message, the receipts and unread entry it brings, rounded.
COPY_OVERHEAD = 256


def stored_bytes(data: bytes, copies: int) -> int:
    """What storing ``data`` (a chat message's or a notice's JSON, as stored) for
    ``copies`` recipients counts against :attr:`ChatLimits.bytes_per_minute`."""
    return copies * (len(data) + COPY_OVERHEAD)


#: Titles of the problems whose ``type`` is a chat code that is no error code (PROTOCOL
#: "Chat": over HTTP the ``type`` ends in the code an ``unsent`` would carry).
_TITLES: dict[Code, str] = {
    "not_contact": "Not a contact that accepted you",
    "blocked": "Not a contact that accepted you",
    "unknown_group": "No such group, or not a member of it",
}


class Refused(PinrelayError):
    """A send answered with ``unsent`` on the link, a problem over HTTP; nothing is
    stored.  ``reason`` is the ``unsent`` frame's ``code``."""

    def __init__(self, reason: Code, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, _ERRORS[reason])
        self.reason: Code = reason
        self.retry_after = retry_after

    @property
    def problem(self) -> tuple[str, str]:
        """The problem+json ``type`` code and title: the ``unsent`` code, and its own
        title where that code is no error code."""
        return self.reason, _TITLES.get(self.reason, self.code.title)


def check_send(to: str, text: str, client_id: str, ttl: float | None, max_ttl_s: int) -> float:
    """Raise :class:`Refused` for a malformed send; the ttl to store it with."""
    if not 1 <= len(client_id) <= MAX_CLIENT_ID:
        raise Refused("invalid", f"client_id must be 1 to {MAX_CLIENT_ID} characters")
    if not text:
        raise Refused("invalid", "text is empty")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT:
        raise Refused("too_large", f"text is {size} bytes of UTF-8; the limit is {MAX_TEXT}")
    if _CONTROL.search(text):
        raise Refused(
            "invalid", "text holds a control character other than tab, line feed or carriage return"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused("invalid", "text holds a lone surrogate: not UTF-8") from None
    if not (is_pin(to) or is_group_id(to)):
        raise Refused("invalid", "to is neither a PIN nor a group id")
    if ttl is None:
        return float(min(DEFAULT_TTL_S, max_ttl_s))
    if not 1 <= ttl <= max_ttl_s:
        raise Refused("invalid", f"ttl must be 1 to {max_ttl_s} seconds")
    return ttl


_GROUP_RE = re.compile(r"^G[0-9A-HJKMNP-TV-Z]{12}$")


_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_group_id(rand: Callable[[int], bytes]) -> str:
    """``G`` and 12 Crockford base32 digits of ``rand`` (60 bits)."""
    value = int.from_bytes(rand(8), "big") >> 4
    return "G" + "".join(_B32[(value >> shift) & 31] for shift in range(55, -1, -5))


def is_group_id(value: str) -> bool:
    """A group id: ``G`` and 12 Crockford base32 digits (60 random bits)."""
    return _GROUP_RE.fullmatch(value) is not None


class ChatData(msgspec.Struct, kw_only=True):
    text: str
    group: str | None = None


class ChatRef(msgspec.Struct, kw_only=True):
    """What receipts need of a chat message's data (the text is skipped, not kept)."""

    group: str | None = None


class ReceiptData(msgspec.Struct, kw_only=True):
    id: str
    state: ReceiptState


class ContactData(msgspec.Struct, kw_only=True, omit_defaults=True):
    event: str
    group: str | None = None
    name: str | None = None


_encoder = msgspec.json.Encoder()
_ref_decoder = msgspec.json.Decoder(ChatRef)


def chat_data(text: str, group: str | None = None) -> bytes:
    return _encoder.encode(ChatData(text=text, group=group))


def receipt_data(message_id: str, state: ReceiptState) -> bytes:
    return _encoder.encode(ReceiptData(id=message_id, state=state))


def contact_data(event: str, group: str | None = None, name: str | None = None) -> bytes:
    return _encoder.encode(ContactData(event=event, group=group, name=name))


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message a device acknowledged whose sender wants to know: a chat message
    (whom to send its receipt), or a Web Push message sent with ``Prefer:
    respond-async`` (``subscription`` set, ``sender`` empty; pinrelay/webpush.py)."""

    id: str
    sender: str
    group: str | None
    cursor: int
    subscription: str | None = None
    #: A broadcast's message (``id``: the broadcast's): counted, nothing sent back.
    broadcast: bool = False
    #: Acknowledged by a hello's cursor or the inbox, not on the link it was sent
    #: on: an earlier ack of it may have stored its receipt (Chat.delivered).
    again: bool = False


def delivered(message_id: str, sender: str | None, data: bytes, cursor: int) -> Delivered | None:
    """The receipt bookkeeping of a stored chat message (None: it has no sender)."""
    if sender is None:
        return None
    try:
        group = _ref_decoder.decode(data).group
    except msgspec.DecodeError:
        group = None
    return Delivered(message_id, sender, group, cursor)
