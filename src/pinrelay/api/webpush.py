"""Web Push over HTTP (PROTOCOL "Web Push"): a device's subscriptions, with its
token, and the push service itself (RFC 8030), which any Web Push sender calls
without a pinrelay key.  Both call :class:`pinrelay.webpush.WebPush`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    Call,
    call_of,
    decode,
    json_response,
    query_int,
    read_body,
    relay_of,
    require_device,
    source_of,
    source_of_host,
    too_large,
)
from pinrelay.core import webpush as wire
from pinrelay.core.errors import LimitExceeded
from pinrelay.core.timefmt import rfc3339

SMALL_BODY = 4096


#: The link relation of a receipt subscription (RFC 8030 §6.2).
RECEIPT_REL = "urn:ietf:params:push:receipt"
#: How long a receipt long-poll waits by default, and at most.
RECEIPT_WAIT_S = 30
MAX_RECEIPT_WAIT_S = 60


class SubscriptionList(msgspec.Struct, kw_only=True):
    subscriptions: list[wire.SubscriptionView]


class PushReceiptView(msgspec.Struct, kw_only=True):
    """A push receipt (RFC 8030 §6.3 sends it as a push promise of the message's
    resource with 410; over HTTP/1.1 it is this body)."""

    message: str
    state: str
    delivered_at: str


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
_PUSH_PREFIX = "/push/"


def push_path_sub(path: str) -> str | None:
    """The ``{sub}`` of a ``/push/{sub}`` path, else None: the one parser of it
    besides Starlette's route (api/app.py's fast path uses it).  Whether the id is
    well formed is the handler's question (404), not the router's."""
    if not path.startswith(_PUSH_PREFIX):
        return None
    sub = path[len(_PUSH_PREFIX) :]
    return sub if sub and "/" not in sub else None


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


async def push_call(
    call: Call, sub: str, read: Callable[[], Awaitable[bytes]]
) -> tuple[int, dict[str, str]]:
    """``POST /push/{sub}``: the answer's status and headers (no body); errors are
    raised.  Checks from the cheapest (headers) to the dearest (the store, a
    signature); 201 only once the message is stored durably.  Starlette's route and
    the HTTP protocol's own push path (api/httpproto.py) both call this."""
    relay = call.relay
    h = call.headers
    headers = wire.parse_push_headers(
        h.get("ttl"), h.get("urgency"), h.get("topic"), relay.config.limits.max_ttl_s
    )
    wire.check_encoding(h.get("content-encoding"))
    vapid = wire.parse_vapid(h.get("authorization"), h.get("crypto-key"))
    body = await read()
    wire.check_body(body)
    receipt = _respond_async(h.get("prefer"))
    pushed = await relay.webpush.push(
        sub, headers, vapid, body, source_of_host(call.client_host), receipt
    )
    answer = {"Location": pushed.location, "TTL": str(pushed.ttl)}
    if not receipt or pushed.dropped:
        return 201, answer
    # RFC 8030 §5.1, §6.2: accepted, and where its delivery will be reported.
    answer["Link"] = f'<{pushed.receipt}>; rel="{RECEIPT_REL}"'
    return 202, answer


async def push(request: Request) -> Response:
    status, headers = await push_call(
        call_of(request), str(request.path_params["sub"]), lambda: _push_body(request)
    )
    return Response(status_code=status, headers=headers)


def _respond_async(prefer: str | None) -> bool:
    """``Prefer: respond-async`` (RFC 7240), among other preferences."""
    if not prefer:
        return False
    return any(p.split(";")[0].strip().lower() == "respond-async" for p in prefer.split(","))


async def receipt(request: Request) -> Response:
    """A message's receipt subscription: long-polled (``?wait=`` seconds, 30 by
    default) until the device acknowledged it (200), else 204 (ask again)."""
    relay = relay_of(request)
    wait = query_int(request, "wait", RECEIPT_WAIT_S, 0, MAX_RECEIPT_WAIT_S)
    sub, resource = str(request.path_params["sub"]), str(request.path_params["message"])
    answer = await relay.webpush.receipt(sub, resource, wait)
    if answer.delivered_ms is None:
        return Response(status_code=204, headers={"Retry-After": "0"})
    location = f"{relay.webpush.endpoint(sub)}/messages/{resource}"
    return json_response(
        PushReceiptView(
            message=location, state="delivered", delivered_at=rfc3339(answer.delivered_ms)
        )
    )


async def probe(request: Request) -> Response:
    """UnifiedPush application servers probe an endpoint with GET."""
    await relay_of(request).webpush.live(str(request.path_params["sub"]), source_of(request))
    return json_response({"unifiedpush": {"version": 1}})


async def delete_message(request: Request) -> Response:
    """``DELETE`` of a message resource (the 201's Location) before delivery."""
    await relay_of(request).webpush.delete_message(
        str(request.path_params["sub"]), str(request.path_params["message"]), source_of(request)
    )
    return Response(status_code=204)


routes = [
    Route("/push/{sub}", push, methods=["POST"]),
    Route("/push/{sub}", probe, methods=["GET"]),
    Route("/push/{sub}/messages/{message}", delete_message, methods=["DELETE"]),
    Route("/push/{sub}/receipts/{message}", receipt, methods=["GET"]),
    Route("/v1/devices/{pin}/subscriptions", subscribe, methods=["POST"]),
    Route("/v1/devices/{pin}/subscriptions", list_subscriptions, methods=["GET"]),
    Route("/v1/devices/{pin}/subscriptions/{sub}", unsubscribe, methods=["DELETE"]),
]
