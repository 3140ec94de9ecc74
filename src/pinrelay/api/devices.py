"""Devices: create, show, delete, rotate the token."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import decode, json_response, path_pin, read_body, relay_of, require_key
from pinrelay.api.schemas import DeviceCreate, DeviceCreated, DeviceView, TokenRotated
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import hash_secret, new_pin, new_secret
from pinrelay.core.model import Device, Scope
from pinrelay.core.timefmt import rfc3339

DEVICE_SCOPES = (Scope.DEVICES,)


def _not_found(pin: str) -> PinrelayError:
    return PinrelayError(f"no device with PIN {pin}", ErrorCode.NOT_FOUND)


async def create_device(request: Request) -> Response:
    await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    body = await read_body(request, limit=4096, optional=True)
    spec = decode(body, DeviceCreate) if body else DeviceCreate()
    token = new_secret(os.urandom)
    now_ms = int(relay.clock() * 1000)
    device: Device | None = None
    for _ in range(8):  # 32-bit PINs: a collision is rare, and retried
        device = await relay.store.create_device(
            new_pin(os.urandom), hash_secret(token), spec.label, now_ms
        )
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
    await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    pin = path_pin(request)
    device = await relay.store.get_device(pin)
    if device is None:
        raise _not_found(pin)
    return json_response(
        DeviceView(
            pin=device.pin,
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
    await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    pin = path_pin(request)
    if not await relay.store.delete_device(pin):
        raise _not_found(pin)
    relay.router.kick(pin, ErrorCode.NOT_FOUND, "this device was deleted")
    return Response(status_code=204)


async def rotate_token(request: Request) -> Response:
    await require_key(request, *DEVICE_SCOPES)
    relay = relay_of(request)
    pin = path_pin(request)
    token = new_secret(os.urandom)
    if not await relay.store.set_token(pin, hash_secret(token)):
        raise _not_found(pin)
    # PROTOCOL "Token rotation": links opened with the old token close at once.
    relay.router.kick(pin, ErrorCode.UNAUTHORIZED, "the device's token was rotated")
    return json_response(TokenRotated(pin=pin, token=token))


routes = [
    Route("/v1/devices", create_device, methods=["POST"]),
    Route("/v1/devices/{pin}", show_device, methods=["GET"]),
    Route("/v1/devices/{pin}", delete_device, methods=["DELETE"]),
    Route("/v1/devices/{pin}/token", rotate_token, methods=["POST"]),
]
