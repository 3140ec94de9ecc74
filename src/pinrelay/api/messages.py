"""Pushing messages: one device, or a batch in one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    Call,
    authenticate,
    call_of,
    checked_pin,
    decode,
    fingerprint,
    json_response,
    read_body,
    strict,
)
from pinrelay.api.schemas import BatchItemResult, BatchResult, PushResult
from pinrelay.auth import KeyPrincipal
from pinrelay.core.errors import (
    ErrorCode,
    LimitExceeded,
    PinrelayError,
    RateLimited,
    RemoteProtocolError,
)
from pinrelay.core.model import (
    Accepted,
    Batch,
    PushFields,
    Scope,
    check_push,
)
from pinrelay.core.timefmt import rfc3339
from pinrelay.ingest import Draft
from pinrelay.store.base import DROPPED_OFFLINE, IdempotencyKey, Rejected

if TYPE_CHECKING:
    from pinrelay.relay import Relay

MAX_IDEMPOTENCY_KEY = 255
_encoder = msgspec.json.Encoder()
_PUSH_PREFIX = "/v1/devices/"
_PUSH_SUFFIX = "/messages"


def push_path_pin(path: str) -> str | None:
    """The ``{pin}`` of a ``/v1/devices/{pin}/messages`` path, else None.

    The one parser of the push URL: Starlette's route, the ASGI fast path and the
    HTTP protocol's own push path (api/httpproto.py) all use it.  Whether the PIN
    is well formed is the handler's question (404 problem), not the router's.
    """
    if not (path.startswith(_PUSH_PREFIX) and path.endswith(_PUSH_SUFFIX)):
        return None
    pin = path[len(_PUSH_PREFIX) : -len(_PUSH_SUFFIX)]
    return pin if pin and "/" not in pin else None


def push_body_limit(relay: Relay) -> int:
    """A single push's body: its data, and room for the other fields."""
    return relay.config.limits.max_data_bytes + 64 * 1024


def _idempotency(call: Call, key_id: str, body: bytes) -> IdempotencyKey | None:
    value = call.headers.get("idempotency-key")
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY:
        raise RemoteProtocolError(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", ErrorCode.INVALID
        )
    # Scoped by API key and route: two tenants' keys never collide.
    return IdempotencyKey(
        f"{key_id} {call.path} {value}", fingerprint(body), int(call.relay.clock() * 1000)
    )


#: How long a quota refusal (429) is held before it is answered.  HTTP/1.1 clients
#: send one request at a time per connection, so a tenant that sends again as soon as
#: it is refused gets ~10 refusals a second per connection instead of thousands: a
#: flood far past its rate costs the relay little, and other tenants nothing they can
#: measure (DECISIONS 66).  A client that honours Retry-After (1 s at least) never
#: notices it.
REFUSAL_HOLD_S = 0.1


async def take_quotas(call: Call, principal: KeyPrincipal, n: int, nbytes: int) -> None:
    """Count ``n`` messages of ``nbytes`` of data against the tenant's rate and
    stored_bytes quotas, or raise 429 with nothing stored (core/quotas.py,
    core/ledger.py), after :data:`REFUSAL_HOLD_S`.  No store read: the quotas came
    with the principal."""
    quotas = principal.quotas
    if principal.tenant is None:
        return
    relay = call.relay
    quota = "stored_bytes"
    try:
        relay.stored_bytes.check(principal.tenant, quotas, nbytes)
        if quotas.rate is None:
            return
        quota = "rate"
        # On a cluster each live relay holds its share of the rate (PROTOCOL "Quotas").
        share = len(relay.router.link_urls) if relay.clustered else 1
        relay.rates.take(principal.tenant, quotas, n, relay.clock(), share)
    except PinrelayError as exc:
        relay.metrics.quota_refusals.labels(quota).inc(n)
        if isinstance(exc, RateLimited):  # not a batch larger than the burst (413)
            await asyncio.sleep(REFUSAL_HOLD_S)
        raise


def _draft(pin: str, fields: PushFields) -> Draft:
    return Draft(
        to=pin, data=bytes(fields.data), ttl=fields.ttl, topic=fields.topic, urgency=fields.urgency
    )


def _item_result(pin: str, result: Accepted | Rejected) -> BatchItemResult:
    if isinstance(result, Accepted):
        return BatchItemResult(
            to=pin,
            status=201,
            id=result.id,
            cursor=result.cursor,
            expires_at=rfc3339(result.expires_at_ms),
        )
    if result.reason == DROPPED_OFFLINE:
        return BatchItemResult(to=pin, status=201, id=result.id, dropped=True)
    return BatchItemResult(to=pin, status=404, error=f"no device with PIN {pin}")


async def push_one_call(call: Call, pin: str, read: Callable[[], Awaitable[bytes]]) -> bytes:
    """``POST /v1/devices/{pin}/messages``: the 201 answer's body; errors are raised.

    ``read`` gives the request body, bounded by ``push_body_limit``.  Starlette's
    route and the HTTP protocol's own push path (api/httpproto.py) both call this.
    """
    principal = await authenticate(call, Scope.PUSH)
    relay = call.relay
    pin = checked_pin(pin)
    body = await read()
    fields = decode(body, PushFields)
    check_push(fields, relay.config.limits)
    await take_quotas(call, principal, 1, len(fields.data))
    # No read of the device first: the append refuses an unknown PIN by itself, so a
    # push costs the loop no extra query.
    [result] = await relay.ingest.accept(
        [_draft(pin, fields)], _idempotency(call, principal.key_id, body), principal.tenant
    )
    item = _item_result(pin, result)
    if item.status == 404:
        raise PinrelayError(f"no device with PIN {pin}", ErrorCode.NOT_FOUND)
    assert item.id is not None
    return _encoder.encode(
        PushResult(id=item.id, cursor=item.cursor, expires_at=item.expires_at, dropped=item.dropped)
    )


async def push_one(request: Request) -> Response:
    call = call_of(request)
    limit = push_body_limit(call.relay)
    body = await push_one_call(
        call, str(request.path_params["pin"]), lambda: read_body(request, limit=limit)
    )
    return Response(body, status_code=201, media_type="application/json")


class _Envelope(msgspec.Struct):
    messages: list[msgspec.Raw]


#: Items checked between two turns of the event loop.
_STRICT_SLICE = 64


async def _strict_batch(body: bytes, max_items: int, max_item: int) -> None:
    """The strict JSON check of a batch, item by item (DECISIONS 29).

    One check of a whole 8 MiB body can hold the loop for seconds (the stdlib
    scanner builds every value: 2.3 s for ``[[],[],…]``); items are bounded and
    checked in slices, with the loop free between them.  The envelope's one key must
    appear once, as written here: a repeated (or escaped) ``"messages"`` is refused.
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})", ErrorCode.BAD_REQUEST
        ) from None
    try:
        envelope = msgspec.json.decode(body, type=_Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return  # malformed or off the schema: the typed decode says what is wrong
    items = envelope.messages
    if len(items) > max_items:
        return  # 422 from the typed decode, nothing checked item by item
    inside = 0
    for n, raw in enumerate(items):
        item = bytes(raw)
        if len(item) > max_item:
            raise LimitExceeded(f"messages[{n}] is {len(item)} bytes; the limit is {max_item}")
        strict(item, f"messages[{n}]: ")
        inside += item.count(b'"messages"')
        if n % _STRICT_SLICE == _STRICT_SLICE - 1:
            await asyncio.sleep(0)
    if body.count(b'"messages"') - inside != 1:
        raise RemoteProtocolError(
            "the key 'messages' must appear once, unescaped", ErrorCode.BAD_REQUEST
        )


async def push_batch(request: Request) -> Response:
    call = call_of(request)
    principal = await authenticate(call, Scope.PUSH)
    relay = call.relay
    limits = relay.config.limits
    body = await read_body(request)
    await _strict_batch(body, limits.max_batch, push_body_limit(relay))
    batch = decode(body, Batch, checked=True)
    if len(batch.messages) > limits.max_batch:
        raise RemoteProtocolError(
            f"{len(batch.messages)} messages in one batch; the limit is {limits.max_batch}",
            ErrorCode.INVALID,
        )
    for n, item in enumerate(batch.messages):
        try:
            check_push(item, limits)
        except PinrelayError as exc:
            raise type(exc)(f"messages[{n}]: {exc.detail}", exc.code) from None
    await take_quotas(
        call, principal, len(batch.messages), sum(len(m.data) for m in batch.messages)
    )
    drafts = [_draft(m.to, m) for m in batch.messages]
    results = await relay.ingest.accept(
        drafts, _idempotency(call, principal.key_id, body), principal.tenant
    )
    out = [_item_result(d.to, r) for d, r in zip(drafts, results, strict=True)]
    return json_response(BatchResult(results=out))


routes = [
    Route("/v1/devices/{pin}/messages", push_one, methods=["POST"]),
    Route("/v1/messages", push_batch, methods=["POST"]),
]
