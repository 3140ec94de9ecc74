"""Portability (PROTOCOL "Portability"): a device takes its data and its PIN elsewhere.

``GET /v1/devices/{pin}/export`` gives the device, with its token, everything the
relay holds about it.  A move to another tenant takes two parties: the device asks
(``POST /v1/devices/{pin}/move``, its token) and the receiving tenant accepts
(``POST /v1/tenants/{tenant}/moves/{pin}/accept``, its admin or devices key, or the
relay's admin key).  The request is kept on the device (Store.request_move) for
MOVE_KEEP_MS; acceptance moves it in one atomic write, keeping its contacts, groups,
backlog, cursor and token, and dropping its grants.  The old tenant's keys lose it at
once: every key-side route checks the device's tenant as it is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay import delivery
from pinrelay.api.chat import group_view
from pinrelay.api.common import (
    checked_pin,
    decode,
    json_response,
    live_tenant,
    query_int,
    read_body,
    relay_of,
    require_device,
    require_key,
    visible_tenant,
)
from pinrelay.api.schemas import (
    ContactView,
    Export,
    ExportedDevice,
    MoveDone,
    MoveRequest,
    MoveView,
)
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Device, Scope, StoredMessage
from pinrelay.core.timefmt import rfc3339
from pinrelay.store.base import MOVE_KEEP_MS, Move

if TYPE_CHECKING:
    from pinrelay.relay import Relay

#: Most messages one export page holds (``?limit=``), and about the most bytes of
#: message data: a page stops before the message that would pass it (one at least).
MAX_EXPORT_MESSAGES = 1000
MAX_EXPORT_BYTES = 4 * 1024 * 1024


async def _live_tenant(relay: Relay, device: Device) -> str | None:
    """The device's tenant if it is live; None: tenant-less (its tenant was deleted)."""
    if device.tenant is None:
        return None
    tenant = await relay.store.get_tenant(device.tenant)
    return device.tenant if tenant is not None and tenant.live else None


def _move_view(pin: str, move: Move) -> MoveView:
    return MoveView(pin=pin, tenant=move.tenant, expires_at=rfc3339(move.expires_ms))


async def _pending(relay: Relay, pin: str) -> Move | None:
    move = await relay.store.pending_move(pin)
    now_ms = int(relay.clock() * 1000)
    return move if move is not None and move.expires_ms > now_ms else None


async def export(request: Request) -> Response:
    device = (await require_device(request)).device
    relay = relay_of(request)
    store, pin = relay.store, device.pin
    after = query_int(request, "after", 0, 0, 2**53 - 1)
    limit = query_int(request, "limit", MAX_EXPORT_MESSAGES, 1, MAX_EXPORT_MESSAGES)
    now = relay.clock()
    # One more than asked: whether the page is the last.
    stored = await delivery.fetch(store, pin, after, limit + 1, now)
    page: list[StoredMessage] = []
    size = 0
    for m in stored[:limit]:
        size += len(m.data)
        if page and size > MAX_EXPORT_BYTES:
            break
        page.append(m)
    move = await _pending(relay, pin)
    body = Export(
        format="pinrelay-export/1",
        exported_at=rfc3339(int(now * 1000)),
        device=ExportedDevice(
            pin=pin,
            tenant=await _live_tenant(relay, device),
            label=device.label,
            created_at=rfc3339(device.created_ms),
            last_seen=rfc3339(device.last_seen_ms) if device.last_seen_ms else None,
            last_cursor=max(device.last_cursor, await store.last_cursor(pin)),
            acked_cursor=device.acked_cursor,
        ),
        contacts=[
            ContactView(pin=c.pin, state=c.state, since=rfc3339(c.since_ms))
            for c in await store.contacts(pin)
        ],
        groups=[group_view(g) for g in await store.groups_of(pin)],
        subscriptions=[relay.webpush.view(s) for s in await store.subscriptions_of(pin)],
        grants=await store.grants_of(pin),
        move=None if move is None else _move_view(pin, move),
        channels=await store.channels_of(pin),
        refused=await store.refusals_of(pin),
        messages=[delivery.msg_frame(m) for m in page],
        truncated=len(page) < len(stored),
        cursor=page[-1].cursor if page else after,
    )
    # Everything about a person's device: no cache along the way keeps a copy.
    return json_response(body, headers={"Cache-Control": "no-store"})


# --- moving to another tenant ----------------------------------------------------------
async def request_move(request: Request) -> Response:
    device = (await require_device(request)).device
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=1024), MoveRequest)
    await live_tenant(relay, spec.tenant)
    if spec.tenant == await _live_tenant(relay, device):
        raise PinrelayError(f"this device belongs to {spec.tenant} already", ErrorCode.CONFLICT)
    move = Move(spec.tenant, int(relay.clock() * 1000) + MOVE_KEEP_MS)
    if not await relay.store.request_move(device.pin, move):
        raise PinrelayError("unknown PIN or wrong token", ErrorCode.UNAUTHORIZED)  # deleted
    return json_response(_move_view(device.pin, move), status=202)


def _no_move(pin: str) -> PinrelayError:
    return PinrelayError(f"device {pin} has no pending move", ErrorCode.NOT_FOUND)


async def show_move(request: Request) -> Response:
    device = (await require_device(request)).device
    move = await _pending(relay_of(request), device.pin)
    if move is None:
        raise _no_move(device.pin)
    return json_response(_move_view(device.pin, move))


async def withdraw_move(request: Request) -> Response:
    device = (await require_device(request)).device
    relay = relay_of(request)
    if await _pending(relay, device.pin) is None:
        raise _no_move(device.pin)
    await relay.store.request_move(device.pin, None)
    return Response(status_code=204)


async def accept_move(request: Request) -> Response:
    principal = await require_key(request, Scope.DEVICES)
    relay = relay_of(request)
    tenant_id = str(request.path_params["tenant"])
    # Another tenant's id answers as one that does not exist (PROTOCOL "Tenants").
    tenant = await visible_tenant(relay, principal, tenant_id)
    pin = checked_pin(str(request.path_params["pin"]))
    now_ms = int(relay.clock() * 1000)
    # The devices quota holds for a device moving in as for one made (429 naming it).
    if not await relay.store.accept_move(pin, tenant_id, now_ms, tenant.quotas.devices):
        # No device, no request, a request for another tenant, or an expired one:
        # one answer, so a tenant learns only of the moves offered to it.
        raise PinrelayError(f"no pending move of {pin} to {tenant_id}", ErrorCode.NOT_FOUND)
    return json_response(MoveDone(pin=pin, tenant=tenant_id))


routes = [
    Route("/v1/devices/{pin}/export", export, methods=["GET"]),
    Route("/v1/devices/{pin}/move", request_move, methods=["POST"]),
    Route("/v1/devices/{pin}/move", show_move, methods=["GET"]),
    Route("/v1/devices/{pin}/move", withdraw_move, methods=["DELETE"]),
    Route("/v1/tenants/{tenant}/moves/{pin}/accept", accept_move, methods=["POST"]),
]
