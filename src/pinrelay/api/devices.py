"""Devices: create, show, delete, rotate the token."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    decode,
    json_response,
    live_tenant,
    no_device,
    own_device,
    path_pin,
    read_body,
    relay_of,
    require_key,
)
from pinrelay.api.schemas import DeviceCreate, DeviceCreated, DeviceView, TokenRotated
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import hash_secret, new_pin, new_secret
from pinrelay.core.model import Device, Scope
from pinrelay.core.tenants import DEFAULT_TENANT
from pinrelay.core.timefmt import rfc3339

DEVICE_SCOPES = (Scope.DEVICES,)


async def create_device(request: Request) -> Response:
    principal = await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    body = await read_body(request, limit=4096, optional=True)
    spec = decode(body, DeviceCreate) if body else DeviceCreate()
    if principal.tenant is None:
        tenant = spec.tenant or DEFAULT_TENANT
        max_devices = (await live_tenant(relay, tenant)).quotas.devices
    elif spec.tenant not in (None, principal.tenant):
        raise PinrelayError(
            "a tenant's key makes devices for its own tenant only", ErrorCode.FORBIDDEN
        )
    else:
        tenant = principal.tenant
        max_devices = principal.quotas.devices  # as read at authentication
    token = new_secret(os.urandom)
    now_ms = int(relay.clock() * 1000)
    device: Device | None = None
    for _ in range(8):  # 32-bit PINs: a collision is rare, and retried
        try:
            device = await relay.store.create_device(
                new_pin(os.urandom), hash_secret(token), spec.label, now_ms, tenant, max_devices
            )
        except PinrelayError as exc:
            if exc.code is ErrorCode.RATE_LIMITED:  # the devices quota (Store.create_device)
                relay.metrics.quota_refusals.labels("devices").inc()
            raise
        if device is not None:
            break
    if device is None:
        raise PinrelayError("could not allocate a free PIN", ErrorCode.CONFLICT)
    return json_response(
        DeviceCreated(
            pin=device.pin,
            token=token,
            label=device.label,
            created_at=rfc3339(device.created_ms),
            link_urls=relay.link_urls,
        ),
        status=201,
        headers={"Location": f"/v1/devices/{device.pin}"},
    )


async def show_device(request: Request) -> Response:
    principal = await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    pin = path_pin(request)
    device = await own_device(relay, principal, pin)
    tenant = device.tenant and await relay.store.get_tenant(device.tenant)
    return json_response(
        DeviceView(
            pin=device.pin,
            tenant=tenant.id if tenant and tenant.live else None,
            label=device.label,
            created_at=rfc3339(device.created_ms),
            last_seen=rfc3339(device.last_seen_ms) if device.last_seen_ms else None,
            online=relay.router.is_online(pin),
            backlog=await relay.store.backlog(pin, int(relay.clock() * 1000)),
            last_cursor=max(device.last_cursor, await relay.store.last_cursor(pin)),
            acked_cursor=device.acked_cursor,
        )
    )


async def delete_device(request: Request) -> Response:
    principal = await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    pin = path_pin(request)
    await own_device(relay, principal, pin)
    if not await relay.store.delete_device(pin):
        raise no_device(pin)
    relay.router.kick(pin, ErrorCode.NOT_FOUND, "this device was deleted")
    return Response(status_code=204)


async def rotate_token(request: Request) -> Response:
    principal = await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    pin = path_pin(request)
    await own_device(relay, principal, pin)
    token = new_secret(os.urandom)
    if not await relay.store.set_token(pin, hash_secret(token)):
        raise no_device(pin)
    # PROTOCOL "Token rotation": links opened with the old token close at once.
    relay.router.kick(pin, ErrorCode.UNAUTHORIZED, "the device's token was rotated")
    return json_response(TokenRotated(pin=pin, token=token))


routes = [
    Route("/v1/devices", create_device, methods=["POST"]),
    Route("/v1/devices/{pin}", show_device, methods=["GET"]),
    Route("/v1/devices/{pin}", delete_device, methods=["DELETE"]),
    Route("/v1/devices/{pin}/token", rotate_token, methods=["POST"]),
]
