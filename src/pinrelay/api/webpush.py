"""Web Push over HTTP (PROTOCOL "Web Push"): a device's subscriptions, with its
token, and the push service itself (RFC 8030), which any Web Push sender calls
without a pinrelay key.  Both call :class:`pinrelay.webpush.WebPush`.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    decode,
    json_response,
    read_body,
    relay_of,
    require_device,
    source_of,
    too_large,
)
from pinrelay.core import webpush as wire
from pinrelay.core.errors import LimitExceeded

SMALL_BODY = 4096


class SubscriptionList(msgspec.Struct, kw_only=True):
    subscriptions: list[wire.SubscriptionView]


# --- a device's subscriptions ------------------------------------------------------
async def subscribe(request: Request) -> Response:
    device = (await require_device(request)).device
    fields = decode(await read_body(request, limit=SMALL_BODY), wire.SubscribeFields)
    webpush = relay_of(request).webpush
    sub = await webpush.subscribe(device.pin, fields)
    return json_response(webpush.view(sub), status=201)


async def list_subscriptions(request: Request) -> Response:
    device = (await require_device(request)).device
    webpush = relay_of(request).webpush
    subs = await webpush.store.subscriptions_of(device.pin)
    return json_response(SubscriptionList(subscriptions=[webpush.view(s) for s in subs]))


async def unsubscribe(request: Request) -> Response:
    device = (await require_device(request)).device
    await relay_of(request).webpush.unsubscribe(device.pin, str(request.path_params["sub"]))
    return Response(status_code=204)


# --- the push service (RFC 8030) ---------------------------------------------------
async def _push_body(request: Request) -> bytes:
    """The encrypted body, any media type, at most MAX_BODY bytes (413 before reading
    more when Content-Length says so)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > wire.MAX_BODY:
        raise LimitExceeded(f"the body is {length} bytes; the limit is {wire.MAX_BODY}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > wire.MAX_BODY:
            raise too_large(wire.MAX_BODY)
        chunks.append(chunk)
    return b"".join(chunks)


async def push(request: Request) -> Response:
    """``POST /push/{id}``: checks from the cheapest (headers) to the dearest (the
    store, a signature); 201 only once the message is stored durably."""
    relay = relay_of(request)
    h = request.headers
    headers = wire.parse_push_headers(
        h.get("ttl"), h.get("urgency"), h.get("topic"), relay.config.limits.max_ttl_s
    )
    wire.check_encoding(h.get("content-encoding"))
    vapid = wire.parse_vapid(h.get("authorization"), h.get("crypto-key"))
    body = await _push_body(request)
    wire.check_body(body)
    pushed = await relay.webpush.push(
        str(request.path_params["sub"]), headers, vapid, body, source_of(request)
    )
    return Response(status_code=201, headers={"Location": pushed.location, "TTL": str(pushed.ttl)})


async def probe(request: Request) -> Response:
    """UnifiedPush application servers probe an endpoint with GET."""
    await relay_of(request).webpush.live(str(request.path_params["sub"]))
    return json_response({"unifiedpush": {"version": 1}})


async def delete_message(request: Request) -> Response:
    """``DELETE`` of a message resource (the 201's Location) before delivery."""
    await relay_of(request).webpush.delete_message(
        str(request.path_params["sub"]), str(request.path_params["message"])
    )
    return Response(status_code=204)


routes = [
    Route("/push/{sub}", push, methods=["POST"]),
    Route("/push/{sub}", probe, methods=["GET"]),
    Route("/push/{sub}/messages/{message}", delete_message, methods=["DELETE"]),
    Route("/v1/devices/{pin}/subscriptions", subscribe, methods=["POST"]),
    Route("/v1/devices/{pin}/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/v1/devices/{pin}/subscriptions/{sub}", unsubscribe, methods=["DELETE"]),
]
