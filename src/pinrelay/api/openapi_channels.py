"""The channel, broadcast, consent and audit paths of the OpenAPI document (api/openapi.py).

Channels and broadcasts take a tenant's key of scope ``broadcast``; joining,
leaving and refusing take the device's token; the audit log an ``admin`` key
(PROTOCOL "Channels and broadcasts").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api import schemas
from pinrelay.api.openapi_chat import BODY_ERRORS, DEVICE_ERRORS, path_param
from pinrelay.api.openapi_tenants import AUTH_ERRORS, query

COMPONENTS: list[type[Struct]] = [
    schemas.ChannelCreate,
    schemas.BroadcastCreate,
    schemas.ChannelView,
    schemas.ChannelList,
    schemas.BroadcastView,
    schemas.DeviceChannels,
    schemas.AuditLog,
]

_PIN = path_param("pin", "^[0-9A-F]{8}$")
_CHANNEL = path_param("channel", "^C[0-9A-HJKMNP-TV-Z]{12}$")
_BROADCAST = path_param("broadcast", "^[0-9A-HJKMNP-TV-Z]{26}$")
_CLASS = path_param("class", "^(service|marketing)$")
_AUDIT_QUERY = [
    query("limit", 1, 1000, 100, "Most lines in this page"),
    query("before", 0, 2**53 - 1, 0, "Lines older than this (ms since the epoch; 0: newest)"),
    {
        "name": "tenant",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^(default|[a-z2-7]{12})$"},
        "description": "The relay's admin key: only this tenant's lines",
    },
]


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths, built with openapi's ``_op`` (passed in to keep imports one way)."""

    def key_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*AUTH_ERRORS, *(e for e in errors if e not in AUTH_ERRORS))
        return op(summary, ok, codes, tag="channels", **kw)

    def device_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*DEVICE_ERRORS, *(e for e in errors if e not in DEVICE_ERRORS))
        return op(summary, ok, codes, tag="channels", **kw)

    return {
        "/v1/channels": {
            "post": key_op(
                "Publish a channel (a tenant's broadcast key)",
                (201, "Created", "ChannelView"),
                (*BODY_ERRORS, 409),
                body="ChannelCreate",
            ),
            "get": key_op("The tenant's channels", (200, "Channels", "ChannelList"), ()),
        },
        "/v1/channels/{channel}": {
            "get": key_op(
                "Show a channel", (200, "The channel", "ChannelView"), (404,), params=[_CHANNEL]
            ),
            "delete": key_op(
                "Delete a channel: its members are forgotten",
                (204, "Deleted", None),
                (404,),
                params=[_CHANNEL],
            ),
        },
        "/v1/channels/{channel}/messages": {
            "post": key_op(
                "Broadcast to the channel's members: stored for each, once, in the"
                " background (durable fan-out; follow Location for its counts)",
                (201, "Accepted: the broadcast as it starts", "BroadcastView"),
                (*BODY_ERRORS, 404),
                body="BroadcastCreate",
                params=[_CHANNEL],
            )
        },
        "/v1/broadcasts/{broadcast}": {
            "get": key_op(
                "A broadcast's fan-out and counts",
                (200, "The broadcast", "BroadcastView"),
                (404,),
                params=[_BROADCAST],
            )
        },
        "/v1/devices/{pin}/channels": {
            "get": device_op(
                "The channels of this device's tenant, which it joined, the classes it refuses",
                (200, "Channels", "DeviceChannels"),
                (),
                params=[_PIN],
            )
        },
        "/v1/devices/{pin}/channels/{channel}": {
            "post": device_op(
                "Join a channel (the device's token: only the device joins)",
                (200, "Channels after", "DeviceChannels"),
                (409,),
                params=[_PIN, _CHANNEL],
            ),
            "delete": device_op(
                "Leave a channel (the unsubscribe action of its messages)",
                (204, "Left", None),
                (),
                params=[_PIN, _CHANNEL],
            ),
        },
        "/v1/devices/{pin}/refusals/{class}": {
            "put": device_op(
                "Refuse every broadcast of a class",
                (204, "Refused", None),
                (),
                params=[_PIN, _CLASS],
            ),
            "delete": device_op(
                "Take a refusal back", (204, "Taken back", None), (), params=[_PIN, _CLASS]
            ),
        },
        "/v1/audit": {
            "get": key_op(
                "The audit log, newest first (a tenant's admin key: its own lines; the"
                " relay's admin key: every tenant's)",
                (200, "Lines", "AuditLog"),
                (404, 422),
                params=_AUDIT_QUERY,
            )
        },
    }
