"""The Matrix Push Gateway API as the relay reads it (spec.matrix.org,
push-gateway-api, ``POST /_matrix/push/v1/notify``): pure parsing and encoding.

A homeserver posts one notification naming one or more devices; a device's
``pushkey`` is a pinrelay Web Push endpoint (or its bare subscription id).  Each
device gets a ``matrix`` message whose data is the notification narrowed to that
device (PROTOCOL "Matrix push gateway").  The notification is plaintext JSON, as the
homeserver sent it: the relay does not pretend to encrypt it (DECISIONS, "Matrix
gateway: a plaintext kind").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from pinrelay.core.errors import ErrorCode, LimitExceeded, RemoteProtocolError
from pinrelay.core.webpush import SUBSCRIPTION_ID_RE, Urgency

#: Largest ``notify`` body: a notification with its event content and a few devices.
MAX_REQUEST = 16 * 1024
#: Most devices one notification may name (Synapse sends one per pusher).
MAX_DEVICES = 20
#: Largest stored message data, as every push (core/model.py Limits.max_data_bytes).
MAX_DATA = 4096
#: How long a notification waits for an offline device: a day, as UnifiedPush's
#: gateways (common-proxies) ask of the push server.
TTL_S = 86400
#: The answer to ``GET /_matrix/push/v1/notify``: UnifiedPush gateway discovery.
DISCOVERY = {"unifiedpush": {"gateway": "matrix"}}


class MatrixDevice(msgspec.Struct, kw_only=True):
    """One entry of ``notification.devices``."""

    app_id: str
    #: A pinrelay Web Push endpoint, or its subscription id.
    pushkey: str
    pushkey_ts: int | None = None
    data: dict[str, msgspec.Raw] | None = None
    tweaks: dict[str, msgspec.Raw] | None = None


class MatrixNotification(msgspec.Struct, kw_only=True):
    """The notification fields the relay reads; every other field (room_id, sender,
    content, counts...) is passed on to the device as sent."""

    devices: Annotated[list[MatrixDevice], msgspec.Meta(min_length=1, max_length=MAX_DEVICES)]
    event_id: str | None = None
    prio: Literal["high", "low"] = "high"


class MatrixNotify(msgspec.Struct):
    """``POST /_matrix/push/v1/notify``'s body."""

    notification: MatrixNotification


class _Envelope(msgspec.Struct):
    notification: dict[str, msgspec.Raw]


@dataclass(frozen=True, slots=True)
class Target:
    """A device of the notification: its pushkey as sent, and the subscription id it
    names (None: not a pinrelay endpoint, so rejected)."""

    pushkey: str
    subscription: str | None
    #: The device's entry, re-encoded, for its own copy of the notification.
    entry: bytes


@dataclass(frozen=True, slots=True)
class Notify:
    """A checked ``notify`` request."""

    targets: list[Target]
    #: The notification without ``devices``, each field as sent.
    fields: dict[str, msgspec.Raw]
    event_id: str | None
    urgency: Urgency


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail, ErrorCode.BAD_REQUEST)


_enc = msgspec.json.Encoder()


def parse_notify(body: bytes) -> Notify:
    """The request body (already checked to be strict JSON): 400 with why if it is
    not a notification with 1 to MAX_DEVICES devices, each with app_id and pushkey."""
    try:
        checked = msgspec.json.decode(body, type=MatrixNotify).notification
        # The same body again, each field as sent, to pass on what the relay does not read.
        envelope = msgspec.json.decode(body, type=_Envelope)
        devices = msgspec.json.decode(envelope.notification["devices"], type=list[msgspec.Raw])
    except msgspec.ValidationError as exc:
        raise _bad(f"not a Matrix notification: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _bad(f"malformed JSON: {exc}") from None
    fields = {k: v for k, v in envelope.notification.items() if k != "devices"}
    targets = [
        Target(d.pushkey, subscription_of_pushkey(d.pushkey), bytes(raw))
        for d, raw in zip(checked.devices, devices, strict=True)
    ]
    # Matrix's "low" is a message that made no sound, still a message: normal.
    urgency: Urgency = "high" if checked.prio == "high" else "normal"
    return Notify(targets, fields, checked.event_id, urgency)


def subscription_of_pushkey(pushkey: str) -> str | None:
    """The subscription id a pushkey names: ``<origin>/push/<id>`` (the endpoint a
    relay of this store handed out, whatever its origin) or the bare id."""
    if SUBSCRIPTION_ID_RE.fullmatch(pushkey):
        return pushkey
    try:
        url = urlsplit(pushkey)
    except ValueError:
        return None
    if url.scheme not in ("http", "https") or url.query or url.fragment:
        return None
    head, _, sub = url.path.rpartition("/")
    return sub if head == "/push" and SUBSCRIPTION_ID_RE.fullmatch(sub) else None


def matrix_data(subscription: str, notify: Notify, target: Target) -> bytes:
    """``msg.data`` of a ``matrix`` message: the notification with ``devices`` narrowed
    to this one.  Over MAX_DATA, ``content`` is left out (the spec lets a pusher omit
    it; the device fetches the event by ``event_id``); still over: 413."""
    fields = dict(notify.fields)
    fields["devices"] = msgspec.Raw(b"[" + target.entry + b"]")
    data = _enc.encode({"subscription": subscription, "notification": fields})
    if len(data) > MAX_DATA and "content" in fields:
        del fields["content"]
        data = _enc.encode({"subscription": subscription, "notification": fields})
    if len(data) > MAX_DATA:
        raise LimitExceeded(
            f"the notification for one device is {len(data)} bytes without its content; "
            f"the limit is {MAX_DATA}"
        )
    return data


def idempotency_key(event_id: str, subscriptions: list[str]) -> str:
    """One notification of an event to these subscriptions: a homeserver's retry of
    it stores nothing twice (the spec asks gateways to suppress duplicates)."""
    digest = hashlib.sha256("\0".join([event_id, *sorted(subscriptions)]).encode()).hexdigest()
    return f"matrix {digest}"
