"""Outgoing webhooks: subscriptions, their outbox entries, signatures and back-off
(PROTOCOL "Incidents and status", "Webhooks"; DECISIONS 56).

A subscription (:class:`Webhook`) names a URL, a secret and the events it wants
(``incident``).  Rules:

1. A tenant's subscription hears only the incidents that affect its tenant
   (Incident.affects: those naming it, and public ones); the relay's own (no
   tenant) hears every incident.
2. Each (subscription, incident, revision) is one delivery with one id,
   :func:`delivery_id`: every relay that hears the revision computes the same id
   and the same outbox key, so enqueueing it twice leaves one entry, and a retry
   carries the id the receiver saw before (it drops duplicates by it).
3. A subscription's entries go out in :func:`order_key` order (the revision's
   time, then incident and revision), one at a time: entry n+1 is not sent before
   entry n was answered 2xx.
4. A failed attempt waits :func:`backoff` (exponential, capped, with jitter)
   before the next.
5. The body is signed: ``Pinrelay-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of
   "<t>.<body>" with the secret>`` (:func:`signature`); a receiver checks it with
   :func:`verify`.

Pure: no I/O, no clock (times and randomness are passed in).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from msgspec import Struct

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import Incident

Kind = Literal["json", "sms", "chat"]
KINDS: tuple[Kind, ...] = ("json", "sms", "chat")
EventKind = Literal["incident"]
Event = Literal["opened", "updated", "resolved"]

#: Most subscriptions one tenant (or the relay's admin) holds.
MAX_WEBHOOKS = 20
MIN_SECRET = 16
MAX_SECRET = 256
MAX_URL = 2048
#: Longest SMS ``to`` (E.164 is 15 digits; a gateway's own names may be longer).
MAX_TO = 64
#: Longest text of an SMS or chat post, in characters.
MAX_POST_TEXT = 480
#: Header names.
SIGNATURE_HEADER = "Pinrelay-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = r"^W[0-9A-HJKMNP-TV-Z]{12}$"
_ID_RE = re.compile(ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def new_webhook_id(rand: Callable[[int], bytes]) -> str:
    """``W`` and 12 Crockford base32 digits of ``rand`` (60 bits)."""
    value = int.from_bytes(rand(8), "big") >> 4
    return "W" + "".join(_B32[(value >> shift) & 31] for shift in range(55, -1, -5))


def is_webhook_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


class Webhook(Struct, frozen=True, kw_only=True):
    id: str
    #: Its tenant; None: the relay's admin made it (it hears every incident, rule 1).
    tenant: str | None
    url: str
    secret: str
    events: tuple[EventKind, ...] = ("incident",)
    kind: Kind = "json"
    #: The SMS recipient (kind ``sms``).
    to: str | None = None
    created_ms: int = 0

    def hears(self, incident: Incident) -> bool:
        """Rule 1."""
        return "incident" in self.events and incident.affects(self.tenant)


class OutboxEntry(Struct, frozen=True, kw_only=True):
    """One delivery waiting for (or past) its 2xx, in a subscription's outbox."""

    webhook: str
    #: Its place in the outbox (rule 3, :func:`order_key`).
    key: str
    #: The delivery id (rule 2).
    id: str
    event: Event
    incident: Incident
    #: When it was answered 2xx (ms); None: pending.
    done_ms: int | None = None


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host (loopback allowed)."""
    if len(url) > MAX_URL or _CONTROL.search(url) or " " in url:
        raise PinrelayError(f"a webhook's url is at most {MAX_URL} characters", ErrorCode.INVALID)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError:
        raise PinrelayError("a webhook's url is not a URL", ErrorCode.INVALID) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PinrelayError("a webhook's url is an http or https URL", ErrorCode.INVALID)
    if parts.username is not None or parts.password is not None:
        raise PinrelayError("a webhook's url may not carry credentials", ErrorCode.INVALID)
    if port == 0:
        raise PinrelayError("a webhook's url has port 0", ErrorCode.INVALID)
    return url


def check_secret(secret: str) -> str:
    if not MIN_SECRET <= len(secret) <= MAX_SECRET or _CONTROL.search(secret):
        raise PinrelayError(
            f"a webhook's secret is {MIN_SECRET} to {MAX_SECRET} characters, no controls",
            ErrorCode.INVALID,
        )
    return secret


def sms_to(url: str, to: str | None) -> str | None:
    """The SMS recipient: ``to`` if given, else the url's ``to`` query parameter."""
    if to is not None:
        return to
    found = parse_qs(urlsplit(url).query).get("to")
    return found[0] if found else None


def make_webhook(
    webhook_id: str,
    tenant: str | None,
    url: str,
    secret: str,
    events: tuple[EventKind, ...],
    kind: Kind,
    to: str | None,
    now_ms: int,
) -> Webhook:
    """A checked subscription (INVALID on a bad url, secret or SMS recipient)."""
    if not events:
        raise PinrelayError("a webhook names at least one event", ErrorCode.INVALID)
    recipient = sms_to(url, to) if kind == "sms" else to
    if kind == "sms" and not recipient:
        raise PinrelayError(
            "an sms webhook needs a recipient: a 'to' field or the url's ?to=",
            ErrorCode.INVALID,
        )
    if recipient is not None and (len(recipient) > MAX_TO or _CONTROL.search(recipient)):
        raise PinrelayError(f"'to' is at most {MAX_TO} characters", ErrorCode.INVALID)
    return Webhook(
        id=webhook_id,
        tenant=tenant,
        url=check_url(url),
        secret=check_secret(secret),
        events=tuple(dict.fromkeys(events)),
        kind=kind,
        to=recipient,
        created_ms=now_ms,
    )


def revision_ms(incident: Incident) -> int:
    """When this revision of ``incident`` was made (its timeline never goes back)."""
    if incident.resolved_ms is not None:
        return incident.resolved_ms
    return incident.updates[-1].at_ms if incident.updates else incident.started_ms


def order_key(incident: Incident) -> str:
    """Rule 3: sorts as text in delivery order; fit for a NATS subject token."""
    return f"{revision_ms(incident):013d}-{incident.id}-{incident.rev:06d}"


def delivery_id(webhook_id: str, incident: Incident) -> str:
    """Rule 2: ``<incident>.<rev>.<subscription>``."""
    return f"{incident.id}.{incident.rev}.{webhook_id}"


def entry_for(webhook: Webhook, event: Event, incident: Incident) -> OutboxEntry:
    return OutboxEntry(
        webhook=webhook.id,
        key=order_key(incident),
        id=delivery_id(webhook.id, incident),
        event=event,
        incident=incident,
    )


def one_line(incident: Incident, event: Event) -> str:
    """``<component> <severity> <event>: <latest text>``, one line, bounded."""
    text = incident.updates[-1].text if incident.updates else ""
    line = " ".join(f"{incident.component} {incident.severity} {event}: {text}".split())
    return line if len(line) <= MAX_POST_TEXT else line[: MAX_POST_TEXT - 1] + "…"


def signature(secret: str, t: int, body: bytes) -> str:
    """Rule 5: the ``Pinrelay-Signature`` header's value."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, now_s: int, tolerance_s: int = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within
    ``tolerance_s`` of ``now_s`` (what a receiver does; constant-time compare)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now_s - t) > tolerance_s:
        return False
    expected = signature(secret, t, body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


def backoff(attempt: int, jitter: float, *, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Rule 4: seconds to wait after the ``attempt``-th failure (1, 2, …): ``base_s``
    doubled each time, capped at ``cap_s``, times 0.5 to 1 by ``jitter`` (0 to 1)."""
    ceiling = min(cap_s, base_s * float(2 ** min(max(attempt - 1, 0), 30)))
    return ceiling * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))
