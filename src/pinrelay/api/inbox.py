"""Long-poll fallback for devices that cannot hold a WebSocket (PROTOCOL, "Inbox")."""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay import delivery
from pinrelay.api.common import (
    decode,
    json_response,
    query_int,
    read_body,
    relay_of,
    whole_number,
)
from pinrelay.api.common import require_device as authenticate_device
from pinrelay.api.schemas import AckBodyWire, Inbox

MAX_WAIT_S = 60
MAX_LIMIT = 1000


async def inbox(request: Request) -> Response:
    device = (await authenticate_device(request)).device
    relay = relay_of(request)
    after = query_int(request, "after", 0, 0, 2**53 - 1)
    wait = query_int(request, "wait", 0, 0, MAX_WAIT_S)
    limit = query_int(request, "limit", 100, 1, MAX_LIMIT)
    messages = await delivery.fetch(relay.store, device.pin, after, limit, relay.clock())
    if not messages and wait > 0 and not relay.stopping:
        arrived = asyncio.Event()
        relay.router.add_waiter(device.pin, arrived.set)
        relay.long_polls.add(arrived)
        try:
            await relay.router.waiter_ready(device.pin)
            # Re-read after registering: a push between the read and here is not missed.
            messages = await delivery.fetch(relay.store, device.pin, after, limit, relay.clock())
            deadline = time.monotonic() + wait
            # In a cluster a wake-up can be lost (a relay dies between its append and
            # the wake); the recheck bounds how late such a message is.
            step = relay.router.waiter_recheck_s or wait
            while not messages and (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), timeout=min(left, step))
                if relay.stopping:  # answered now (nothing yet), not when the wait ends
                    break
                arrived.clear()  # before the read: a wake-up during it is kept
                messages = await delivery.fetch(
                    relay.store, device.pin, after, limit, relay.clock()
                )
        finally:
            relay.router.remove_waiter(device.pin, arrived.set)
            relay.long_polls.discard(arrived)
    relay.metrics.delivered.inc(len(messages))
    cursor = messages[-1].cursor if messages else after
    news = relay.link.system
    system = news.current(device.tenant) if news is not None else []
    return json_response(
        Inbox(system=system, messages=[delivery.msg_frame(m) for m in messages], cursor=cursor)
    )


async def ack(request: Request) -> Response:
    device = (await authenticate_device(request)).device
    relay = relay_of(request)
    body = decode(await read_body(request, limit=1024), AckBodyWire)
    cursor = whole_number(body.cursor, "cursor")
    await delivery.acknowledge(
        relay.store,
        device.pin,
        cursor,
        (device.last_cursor, device.acked_cursor),
        relay.clock(),
        relay.acked,
    )
    return Response(status_code=204)


routes = [
    Route("/v1/devices/{pin}/inbox", inbox, methods=["GET"]),
    Route("/v1/devices/{pin}/ack", ack, methods=["POST"]),
]
