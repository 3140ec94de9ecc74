"""What every route needs: the relay, authentication and body decoding."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from pinrelay.auth import DevicePrincipal, KeyPrincipal, bearer
from pinrelay.core import strictjson
from pinrelay.core.errors import ErrorCode, LimitExceeded, PinrelayError, RemoteProtocolError
from pinrelay.core.ids import is_pin
from pinrelay.core.model import Device, Scope
from pinrelay.core.tenants import TENANT_ID_RE, Tenant

if TYPE_CHECKING:
    from pinrelay.relay import Relay

T = TypeVar("T")
_encoder = msgspec.json.Encoder()

#: Largest request body: a full batch of full-size messages fits.
MAX_BODY = 8 * 1024 * 1024


def relay_of(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


class Call:
    """What a handler reads of one HTTP request.

    Built from Starlette's Request, or straight from the HTTP parser for the push
    route (api/httpproto.py); ``headers`` are looked up by lower-case name.
    """

    __slots__ = ("client_host", "headers", "path", "relay")

    def __init__(
        self, relay: Relay, path: str, headers: Mapping[str, str], client_host: str | None
    ) -> None:
        self.relay = relay
        self.path = path
        self.headers = headers
        self.client_host = client_host


def call_of(request: Request) -> Call:
    client = request.client
    return Call(relay_of(request), request.url.path, request.headers, client and client.host)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _encoder.encode(value), status_code=status, media_type="application/json", headers=headers
    )


def _source(client_host: str | None) -> str:
    # Namespaced by edge: failures on the link do not lock a source out of the API.
    return "api " + (client_host or "?")


def source_of_host(client_host: str | None) -> str:
    """Where a request comes from (:func:`source_of`), from its peer's address."""
    return _source(client_host)


def source_of(request: Request) -> str:
    """Where a request comes from, as the Authenticator's limits count it."""
    client = request.client
    return _source(client and client.host)


async def require_key(request: Request, *scopes: Scope) -> KeyPrincipal:
    return await authenticate(call_of(request), *scopes)


async def authenticate(call: Call, *scopes: Scope) -> KeyPrincipal:
    """The caller's API key, which must allow one of ``scopes`` (admin always does)."""
    presented = bearer(call.headers.get("authorization"))
    return await call.relay.auth.api_key(presented, _source(call.client_host), *scopes)


def no_device(pin: str) -> PinrelayError:
    """The one answer for a PIN with no device and a device the caller may not see."""
    return PinrelayError(f"no device with PIN {pin}", ErrorCode.NOT_FOUND)


async def own_device(relay: Relay, principal: KeyPrincipal, pin: str) -> Device:
    """``pin``'s device if ``principal``'s tenant owns it (grants are for pushes only);
    otherwise NOT_FOUND, as for a PIN with no device (PROTOCOL "Tenants")."""
    device = await relay.store.get_device(pin)
    if device is None or not principal.reaches(device):
        raise no_device(pin)
    return device


def no_tenant(tenant_id: str) -> PinrelayError:
    """The one answer for a tenant id with no live tenant and one the caller may not see."""
    return PinrelayError(f"no tenant with id {tenant_id}", ErrorCode.NOT_FOUND)


async def live_tenant(relay: Relay, tenant_id: str) -> Tenant:
    """The tenant ``tenant_id`` if it is live; NOT_FOUND for none or a tombstone."""
    found = await relay.store.get_tenant(tenant_id)
    if found is None or not found.live:
        raise no_tenant(tenant_id)
    return found


async def visible_tenant(relay: Relay, principal: KeyPrincipal, tenant_id: str) -> Tenant:
    """:func:`live_tenant` if the caller may see it: its own, or any for the relay's
    admin key.  Another tenant's id answers as one that does not exist, unread
    (PROTOCOL "Tenants")."""
    if not TENANT_ID_RE.match(tenant_id) or principal.tenant not in (None, tenant_id):
        raise no_tenant(tenant_id)
    return await live_tenant(relay, tenant_id)


def path_pin(request: Request) -> str:
    return checked_pin(str(request.path_params["pin"]))


def checked_pin(pin: str) -> str:
    if not is_pin(pin):
        raise RemoteProtocolError(
            "a PIN is 8 upper-case hexadecimal digits, e.g. 2A0B6EE0", ErrorCode.NOT_FOUND
        )
    return pin


async def require_device(request: Request) -> DevicePrincipal:
    """The device of ``/v1/devices/{pin}/…``, authenticated by its token (the inbox)."""
    pin = path_pin(request)
    client = request.client
    token = bearer(request.headers.get("authorization"))
    return await relay_of(request).auth.device(pin, token, _source(client and client.host))


async def read_body(
    request: Request, limit: int = MAX_BODY, optional: bool = False, why: str = ""
) -> bytes:
    """The request body, bounded; ``optional``: an absent body is b"" (no content type
    needed); ``why``: what sets the limit, said in a 413 (the caller's own words)."""
    headers = request.headers
    absent = headers.get("content-length", "0") == "0"
    no_type = not headers.get("content-type")
    if optional and no_type and absent and "transfer-encoding" not in headers:
        return b""
    check_body_headers(headers, limit, why)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit, why)
        chunks.append(chunk)
    return b"".join(chunks)


def check_body_headers(headers: Mapping[str, str], limit: int, why: str = "") -> None:
    """A JSON body no longer than ``limit`` as far as the headers tell, before it is read."""
    media, _, params = headers.get("content-type", "").partition(";")
    media = media.strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise PinrelayError("send the body as application/json", ErrorCode.UNSUPPORTED_MEDIA)
    if params:
        _check_charset(params)
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise LimitExceeded(f"body is {length} bytes; the limit is {limit}{_why(why)}")


def _check_charset(params: str) -> None:
    """JSON is UTF-8 (RFC 8259 §8.1): any other declared charset is refused, not
    silently read as UTF-8."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                raise PinrelayError(
                    f"charset {charset!r}: send JSON as UTF-8", ErrorCode.UNSUPPORTED_MEDIA
                )


def too_large(limit: int, why: str = "") -> LimitExceeded:
    return LimitExceeded(f"body exceeds the limit of {limit} bytes{_why(why)}")


def _why(why: str) -> str:
    return f" ({why})" if why else ""


def strict(body: bytes, where: str = "") -> None:
    """400 if ``body`` is not UTF-8 or repeats a key (core/strictjson.py)."""
    try:
        strictjson.check(body)
    except strictjson.StrictJsonError as exc:
        raise RemoteProtocolError(where + str(exc), ErrorCode.BAD_REQUEST) from None


def _integral(value: Any) -> Any:
    """``value`` with every whole float (5.0) made an int, at any depth."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def decode(body: bytes, type_: type[T], *, checked: bool = False, integral: bool = False) -> T:
    """A JSON body as ``type_``: 400 if malformed, not UTF-8 or with a repeated key
    (core/strictjson.py; ``checked``: the caller did that already), 422 if it does not
    fit the schema.  ``integral``: 5.0 is an integer, as JSON Schema says (small
    bodies only: it decodes twice)."""
    if not checked:
        strict(body)
    try:
        if integral:
            return msgspec.convert(_integral(msgspec.json.decode(body)), type_)
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(str(exc), ErrorCode.INVALID) from None
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise RemoteProtocolError(f"malformed JSON: {exc}", ErrorCode.BAD_REQUEST) from None


def fingerprint(body: bytes) -> str:
    """Identifies a request body, so an Idempotency-Key reused for another is caught."""
    return hashlib.sha256(body).hexdigest()


def whole_number(value: float, name: str) -> int:
    """An integral number as int (5.0 is an integer to JSON Schema); 5.5 is refused."""
    if not float(value).is_integer():
        raise RemoteProtocolError(f"'{name}' must be a whole number", ErrorCode.INVALID)
    return int(value)


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if raw.lstrip("-").isdigit() else whole_number(float(raw), name)
    except (ValueError, OverflowError):
        raise RemoteProtocolError(f"'{name}' must be an integer", ErrorCode.INVALID) from None
    if not lo <= value <= hi:
        raise RemoteProtocolError(f"'{name}' must be between {lo} and {hi}", ErrorCode.INVALID)
    return value
