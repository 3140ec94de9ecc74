"""Pushing messages: one device, or a batch in one transaction."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence

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
)
from pinrelay.api.schemas import BatchItemResult, BatchResult, PushResult
from pinrelay.core.errors import ErrorCode, PinrelayError, RemoteProtocolError
from pinrelay.core.ids import RandomPool, new_message_id
from pinrelay.core.model import (
    Accepted,
    Batch,
    BatchItem,
    NewMessage,
    PushFields,
    Scope,
    StoredMessage,
    check_push,
)
from pinrelay.core.timefmt import rfc3339
from pinrelay.relay import Relay
from pinrelay.store.base import DROPPED_OFFLINE, UNKNOWN_DEVICE, IdempotencyKey, Rejected

MAX_IDEMPOTENCY_KEY = 255
#: Message ids need uniqueness, not secrecy, but come from the OS's CSPRNG anyway.
_ids_random = RandomPool(os.urandom)
_encoder = msgspec.json.Encoder()


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


def _new_message(relay: Relay, pin: str, fields: PushFields, now: float) -> NewMessage:
    ttl = fields.ttl or relay.config.limits.ttl0_grace_s
    now_ms = int(now * 1000)
    return NewMessage(
        pin=pin,
        id=new_message_id(now, _ids_random),
        data=bytes(fields.data),
        topic=fields.topic,
        urgency=fields.urgency,
        sent_at_ms=now_ms,
        expires_at_ms=now_ms + int(ttl * 1000),
    )


async def _store(
    relay: Relay, items: Sequence[tuple[str, PushFields]], idem: IdempotencyKey | None
) -> list[Accepted | Rejected]:
    """Store the items; a ttl=0 message for an offline device is dropped, not stored.

    ttl=0 means "deliver only if the device is online now" (PROTOCOL, "ttl").  The
    drop is passed to the store as a Rejected so an idempotent replay repeats it.
    """
    now = relay.clock()
    batch: list[NewMessage | Rejected] = []
    drafts: dict[str, NewMessage] = {}
    for pin, fields in items:
        draft = _new_message(relay, pin, fields, now)
        if fields.ttl == 0 and not relay.router.is_online(pin):
            if await relay.store.get_device(pin) is None:
                batch.append(Rejected(pin, UNKNOWN_DEVICE, draft.id))
            else:
                batch.append(Rejected(pin, DROPPED_OFFLINE, draft.id))
        else:
            batch.append(draft)
            drafts[draft.id] = draft
    results, replay = await relay.store.append(batch, idem)
    if not replay:
        # Wake each device once, with what it got, in cursor order (DESIGN "router").
        # None: the store answered with a message this request did not build (an
        # idempotent takeover): no hand-off, the link reads the store.
        fresh: dict[str, list[StoredMessage] | None] = {}
        for result in results:
            if isinstance(result, Accepted):
                built = drafts.get(result.id)
                got = fresh.setdefault(result.pin, [])
                if built is None:
                    fresh[result.pin] = None
                elif got is not None:
                    got.append(built.with_cursor(result.cursor))
            elif result.reason == DROPPED_OFFLINE:
                relay.metrics.dropped.inc()
        for pin, messages in fresh.items():
            relay.router.wake(pin, messages)
        relay.metrics.accepted_push.inc(sum(isinstance(r, Accepted) for r in results))
    return results


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
    key_id = (await authenticate(call, Scope.PUSH)).key_id
    relay = call.relay
    pin = checked_pin(pin)
    body = await read()
    fields = decode(body, PushFields)
    check_push(fields, relay.config.limits)
    # No read of the device first: the append refuses an unknown PIN by itself, so a
    # push costs the loop no extra query.
    [result] = await _store(relay, [(pin, fields)], _idempotency(call, key_id, body))
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


async def push_batch(request: Request) -> Response:
    call = call_of(request)
    key_id = (await authenticate(call, Scope.PUSH)).key_id
    relay = call.relay
    limits = relay.config.limits
    body = await read_body(request)
    batch = decode(body, Batch)
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
    items: list[tuple[str, BatchItem]] = [(m.to, m) for m in batch.messages]
    results = await _store(relay, items, _idempotency(call, key_id, body))
    out = [_item_result(pin, r) for (pin, _), r in zip(items, results, strict=True)]
    return json_response(BatchResult(results=out))


routes = [
    Route("/v1/devices/{pin}/messages", push_one, methods=["POST"]),
    Route("/v1/messages", push_batch, methods=["POST"]),
]
