"""Web Push as the relay reads it (RFC 8030 requests, RFC 8188 bodies, RFC 8292
tokens): pure checks and encodings, no I/O and no clock of their own.

The signature check itself needs a crypto library and lives in pinrelay/vapid.py;
everything here decides from bytes, strings and a ``now`` it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from pinrelay.core.chat import Delivered
from pinrelay.core.errors import ErrorCode, LimitExceeded, PinrelayError, RemoteProtocolError
from pinrelay.core.ids import Rand

#: Most bytes of an encrypted body (RFC 8030 §7.2 lets a service refuse above 4096).
MAX_BODY = 4096
#: RFC 8188 §2.1: salt (16) + record size (4) + key id length (1).
_HEADER = 21
#: RFC 8291 §4: the key id is the sender's P-256 point; a record is at least a
#: 16-byte tag and the one-byte delimiter.
_MIN_RECORD = 17
#: A VAPID token may claim to live at most this long (RFC 8292 §2).
MAX_TOKEN_LIFE_S = 24 * 3600
#: Base64url without padding, as Web Push writes every key and token part.
B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SUBSCRIPTION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
URGENCIES = ("very-low", "low", "normal", "high")
Urgency = Literal["very-low", "low", "normal", "high"]
_TTL_RE = re.compile(r"^[0-9]{1,10}$")


def b64url_decode(value: str) -> bytes:
    """Base64url with or without padding; ValueError if it is not."""
    if not B64URL_RE.fullmatch(value.rstrip("=")):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_subscription_id(rand: Rand) -> str:
    """22 random base64url characters (132 bits), never starting with ``-``: an id
    is typed as a command-line argument, where a leading dash reads as an option."""
    while True:
        sub_id = b64url(rand(17))[:22]
        if not sub_id.startswith("-"):
            return sub_id


def topic_key(subscription: str, topic: str) -> str:
    """The store's replacement key for a Web Push ``Topic``: scoped to its
    subscription (two subscriptions of one device never replace each other's
    messages), and a valid message topic (``w`` + 31 base64url characters)."""
    digest = hashlib.sha256(f"{subscription}\0{topic}".encode()).digest()
    return "w" + b64url(digest)[:31]


@dataclass(frozen=True, slots=True)
class WebPushLimits:
    #: Pushes a minute to one subscription, and from one sender (VAPID key or address).
    per_subscription: int = 600
    per_sender: int = 6000
    #: Requests a minute from one address to endpoints that do not exist (404, 410).
    unknown_per_minute: int = 60


@dataclass(frozen=True, slots=True)
class PushHeaders:
    """What a ``POST /push/{id}`` asked for, checked."""

    ttl: int
    urgency: Urgency
    topic: str | None


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(detail, ErrorCode.BAD_REQUEST)


def parse_push_headers(
    ttl: str | None, urgency: str | None, topic: str | None, max_ttl_s: int
) -> PushHeaders:
    """RFC 8030 §5.2 to §5.4: ``TTL`` required (a whole number of seconds, reduced to
    ``max_ttl_s``), ``Urgency`` one of four, ``Topic`` up to 32 base64url characters."""
    if ttl is None:
        raise _bad("the TTL header is required (RFC 8030 §5.2): seconds to keep the message")
    ttl = ttl.strip()
    if not _TTL_RE.fullmatch(ttl):
        raise _bad(f"TTL must be a whole number of seconds, not {ttl[:40]!r}")
    kept = min(int(ttl), max_ttl_s)
    level: Urgency = "normal"
    if urgency is not None:
        value = urgency.strip().lower()
        if value not in URGENCIES:
            raise _bad(f"Urgency must be one of {', '.join(URGENCIES)}, not {urgency[:40]!r}")
        level = value  # type: ignore[assignment]
    if topic is not None:
        topic = topic.strip()
        if not TOPIC_RE.fullmatch(topic):
            raise _bad("Topic must be 1 to 32 characters of A-Z a-z 0-9 _ - (base64url)")
    return PushHeaders(kept, level, topic)


def check_encoding(content_encoding: str | None) -> None:
    """Only RFC 8291's ``aes128gcm``: 415 otherwise, with why."""
    value = (content_encoding or "").strip().lower()
    if value == "aes128gcm":
        return
    if value == "aesgcm":
        detail = (
            "Content-Encoding aesgcm (the drafts' scheme) is not supported: "
            "encrypt with aes128gcm (RFC 8291)"
        )
    elif not value:
        detail = "Content-Encoding: aes128gcm is required (an RFC 8291 encrypted body)"
    else:
        detail = f"Content-Encoding must be aes128gcm, not {value[:40]!r}"
    raise PinrelayError(detail, ErrorCode.UNSUPPORTED_MEDIA)


def check_body(body: bytes) -> None:
    """1 to 4096 bytes with a well-formed RFC 8188 header; the relay never decrypts."""
    if len(body) > MAX_BODY:
        raise LimitExceeded(f"the body is {len(body)} bytes; the limit is {MAX_BODY}")
    if not body:
        raise _bad("the body is empty: a Web Push message is an encrypted body")
    if len(body) < _HEADER:
        raise _bad("the body is too short for an aes128gcm header (RFC 8188 §2.1)")
    record_size = int.from_bytes(body[16:20], "big")
    id_len = body[20]
    if record_size < 18:
        raise _bad(f"the aes128gcm record size {record_size} is below 18 (RFC 8188 §2.1)")
    if len(body) < _HEADER + id_len + _MIN_RECORD:
        raise _bad("the body ends inside its aes128gcm header or first record")


class WebPushData(msgspec.Struct, kw_only=True):
    """``msg.data`` of a ``webpush`` message (PROTOCOL "What the device receives")."""

    body: str
    encoding: str = "aes128gcm"
    subscription: str
    topic: str | None = None
    #: The sender asked for a delivery receipt (``Prefer: respond-async``).
    receipt: bool = False


class _Tracked(msgspec.Struct):
    subscription: str
    receipt: bool = False


_data_enc = msgspec.json.Encoder()
_tracked_dec = msgspec.json.Decoder(_Tracked)


def webpush_data(body: bytes, subscription: str, topic: str | None, receipt: bool) -> bytes:
    return _data_enc.encode(
        WebPushData(body=b64url(body), subscription=subscription, topic=topic, receipt=receipt)
    )


def subscription_of(data: bytes) -> str | None:
    """The subscription a stored ``webpush`` message's data names (None: unreadable)."""
    try:
        return _tracked_dec.decode(data).subscription
    except msgspec.DecodeError:
        return None


def receipt_wanted(message_id: str, data: bytes, cursor: int) -> Delivered | None:
    """The receipt bookkeeping of a stored ``webpush`` message, if its sender asked."""
    try:
        tracked = _tracked_dec.decode(data)
    except msgspec.DecodeError:
        return None
    if not tracked.receipt:
        return None
    return Delivered(message_id, "", None, cursor, tracked.subscription)


def receipt_key(subscription: str, message_id: str) -> str:
    """Where a message's push receipt is kept: both ids, fixed widths, one token."""
    return subscription + message_id


# --- VAPID (RFC 8292) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VapidToken:
    """A VAPID credential as sent: the JWT and the public key it names (base64url,
    padding dropped: one key is one string, to the rate limits and the token cache)."""

    jwt: str
    key: str


def _params(value: str) -> dict[str, str]:
    """``name=value`` pairs separated by commas or semicolons (str methods, not a
    regular expression: this runs on every signed push)."""
    out: dict[str, str] = {}
    for part in value.replace(";", ",").split(","):
        name, sep, v = part.partition("=")
        if sep:
            out[name.strip().lower()] = v.strip().strip('"')
    return out


def parse_vapid(authorization: str | None, crypto_key: str | None) -> VapidToken | None:
    """The token of ``Authorization: vapid t=…, k=…`` (RFC 8292 §3), or of the
    drafts' ``WebPush <jwt>`` with ``Crypto-Key: p256ecdsa=<key>``; None if there is
    no Authorization; 401 if it is neither form."""
    if authorization is None:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "vapid":
        params = _params(rest)
        if "t" not in params or "k" not in params:
            raise _unauthorized("a vapid Authorization needs t=<JWT> and k=<public key>")
        return VapidToken(params["t"], params["k"].rstrip("="))
    if scheme == "webpush":
        key = _params(crypto_key or "").get("p256ecdsa")
        if not key:
            raise _unauthorized("a WebPush Authorization needs Crypto-Key: p256ecdsa=<key>")
        return VapidToken(rest.strip(), key.rstrip("="))
    raise _unauthorized("Authorization must be a VAPID token: vapid t=<JWT>, k=<public key>")


def _unauthorized(detail: str) -> PinrelayError:
    return PinrelayError(detail, ErrorCode.UNAUTHORIZED)


class _JwtHeader(msgspec.Struct):
    alg: str
    typ: str | None = None


class Claims(msgspec.Struct):
    aud: str
    exp: int
    sub: str | None = None


@dataclass(frozen=True, slots=True)
class Jwt:
    """A compact JWS split and decoded, its signature not checked yet."""

    signing_input: bytes
    signature: bytes
    claims: Claims


def split_jwt(token: str) -> Jwt:
    """Decode an ES256 JWT's parts; 401 with why if it is malformed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _unauthorized("the VAPID token is not a JWT (three base64url parts)")
    try:
        header = msgspec.json.decode(b64url_decode(parts[0]), type=_JwtHeader)
        claims = msgspec.json.decode(b64url_decode(parts[1]), type=Claims)
        signature = b64url_decode(parts[2])
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _unauthorized(f"the VAPID token is malformed: {exc}") from None
    if header.alg != "ES256":
        raise _unauthorized(f"the VAPID token must be signed with ES256, not {header.alg!r}")
    if len(signature) != 64:
        raise _unauthorized("the VAPID token's signature is not an ES256 signature")
    return Jwt(f"{parts[0]}.{parts[1]}".encode(), signature, claims)


def check_claims(claims: Claims, audience: str, now: float) -> None:
    """RFC 8292 §2: ``aud`` is the push resource's origin; ``exp`` in the future and
    no more than 24 hours ahead.  An origin's scheme and host are case-insensitive
    (RFC 6454 §4): node's web-push lowercases the host of ``--public-url
    https://Relay.Example``, pywebpush keeps it as written."""
    if claims.aud.rstrip("/").lower() != audience.lower():
        raise _unauthorized(f"the VAPID token is for {claims.aud[:100]!r}, not {audience}")
    if claims.exp <= now:
        raise _unauthorized("the VAPID token has expired")
    if claims.exp > now + MAX_TOKEN_LIFE_S:
        raise _unauthorized("the VAPID token expires more than 24 hours ahead")


# --- subscriptions as clients see them ---------------------------------------------


#: An uncompressed P-256 point (65 bytes, the first 0x04) and a 16-byte secret, in
#: base64url: the shapes only; whether the point is on the curve is checked later.
P256Point = Annotated[str, msgspec.Meta(pattern=r"^B[A-Za-z0-9_-]{86}=?$")]
AuthSecret = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{22}(==)?$")]


class SubscriptionKeys(
    msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    p256dh: P256Point | None = None
    auth: AuthSecret | None = None


class SubscribeFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/devices/{pin}/subscriptions`` and the ``subscribe`` frame's fields."""

    keys: SubscriptionKeys | None = None
    applicationServerKey: P256Point | None = None


class SubscriptionView(msgspec.Struct, kw_only=True):
    """A subscription as PushSubscription.toJSON() shapes it, with its id."""

    id: str
    endpoint: str
    expirationTime: int | None = None
    keys: SubscriptionKeys
    applicationServerKey: str | None = None
    created_at: str
