"""Channels, broadcasts, consent and the audit log (PROTOCOL "Channels and broadcasts").

A tenant's key (scope ``broadcast``) publishes channels and broadcasts to their
members; a device joins and leaves with its own token, and may refuse a whole
class.  A channel or broadcast of another tenant answers as one that does not
exist.  Every broadcast and every channel made or deleted is written to the
audit log before the answer, which the tenant's admin and the relay's admin read.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    call_of,
    decode,
    json_response,
    query_int,
    read_body,
    relay_of,
    require_device,
    require_key,
)
from pinrelay.api.messages import take_quotas
from pinrelay.api.schemas import (
    AuditLine,
    AuditLog,
    BroadcastCreate,
    BroadcastView,
    ChannelCreate,
    ChannelList,
    ChannelView,
    DeviceChannel,
    DeviceChannels,
)
from pinrelay.auth import KeyPrincipal
from pinrelay.core.channels import (
    CLASSES,
    MAX_CHANNELS,
    AuditAction,
    AuditEntry,
    Broadcast,
    Channel,
    ChannelClass,
    is_channel_id,
    new_channel_id,
)
from pinrelay.core.errors import ErrorCode, PinrelayError, RemoteProtocolError
from pinrelay.core.ids import new_message_id
from pinrelay.core.model import Scope, check_push
from pinrelay.core.tenants import TENANT_ID_RE
from pinrelay.core.timefmt import rfc3339
from pinrelay.ingest import expiry_ms

if TYPE_CHECKING:
    from pinrelay.relay import Relay


def _view(c: Channel) -> ChannelView:
    return ChannelView(
        id=c.id, name=c.name, klass=c.klass, tenant=c.tenant, created_at=rfc3339(c.created_ms)
    )


def _no_channel(channel_id: str) -> PinrelayError:
    return PinrelayError(f"no channel with id {channel_id}", ErrorCode.NOT_FOUND)


async def _channel(relay: Relay, tenant: str | None, channel_id: str, admin: bool) -> Channel:
    """The live channel of the path if ``tenant`` owns it (``admin``: the relay's
    admin, any tenant's); NOT_FOUND as for none otherwise."""
    found = await relay.store.get_channel(channel_id) if is_channel_id(channel_id) else None
    if found is None or not found.live or not (admin or found.tenant == tenant):
        raise _no_channel(channel_id)
    return found


def _tenant_of(principal: KeyPrincipal) -> str:
    if principal.tenant is None:
        raise PinrelayError(
            "channels belong to a tenant: use a key of that tenant", ErrorCode.FORBIDDEN
        )
    return principal.tenant


async def _audit(
    relay: Relay,
    principal: KeyPrincipal,
    tenant: str,
    action: AuditAction,
    channel: str,
    broadcast: str | None = None,
) -> None:
    entry = AuditEntry(
        at_ms=int(relay.clock() * 1000),
        tenant=tenant,
        key_id=principal.key_id,
        action=action,
        channel=channel,
        broadcast=broadcast,
    )
    await relay.store.append_audit(entry)


async def create_channel(request: Request) -> Response:
    principal = await require_key(request, Scope.BROADCAST)
    tenant = _tenant_of(principal)
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=4096), ChannelCreate)
    channel = Channel(
        id=new_channel_id(os.urandom),
        tenant=tenant,
        name=spec.name,
        klass=spec.klass,
        created_ms=int(relay.clock() * 1000),
    )
    await relay.store.create_channel(channel, MAX_CHANNELS)
    await _audit(relay, principal, tenant, "channel.create", channel.id)
    return json_response(
        _view(channel), status=201, headers={"Location": f"/v1/channels/{channel.id}"}
    )


async def list_channels(request: Request) -> Response:
    principal = await require_key(request, Scope.BROADCAST)
    channels = await relay_of(request).store.list_channels(principal.tenant)
    return json_response(ChannelList(channels=[_view(c) for c in channels]))


async def show_channel(request: Request) -> Response:
    principal = await require_key(request, Scope.BROADCAST)
    channel_id = str(request.path_params["channel"])
    found = await _channel(relay_of(request), principal.tenant, channel_id, principal.relay_admin)
    return json_response(_view(found))


async def delete_channel(request: Request) -> Response:
    principal = await require_key(request, Scope.BROADCAST)
    relay = relay_of(request)
    channel_id = str(request.path_params["channel"])
    found = await _channel(relay, principal.tenant, channel_id, principal.relay_admin)
    if not await relay.store.delete_channel(found.id, int(relay.clock() * 1000)):
        raise _no_channel(channel_id)
    await _audit(relay, principal, found.tenant, "channel.delete", found.id)
    return Response(status_code=204)


async def broadcast(request: Request) -> Response:
    principal = await require_key(request, Scope.BROADCAST)
    tenant = _tenant_of(principal)
    relay = relay_of(request)
    channel_id = str(request.path_params["channel"])
    channel = await _channel(relay, tenant, channel_id, False)
    fields = decode(await read_body(request, limit=64 * 1024), BroadcastCreate)
    check_push(fields, relay.config.limits)
    await take_quotas(call_of(request), principal, 1, len(fields.data))
    now = relay.clock()
    now_ms = int(now * 1000)
    record = Broadcast(
        id=new_message_id(now, os.urandom),
        channel=channel.id,
        tenant=tenant,
        key_id=principal.key_id,
        created_ms=now_ms,
        expires_ms=expiry_ms(now_ms, fields.ttl, 0),
        data=bytes(fields.data),
        topic=fields.topic,
        urgency=fields.urgency,
        updated_ms=now_ms,
    )
    # The audit line first: a broadcast never goes out unrecorded.
    await _audit(relay, principal, tenant, "broadcast", channel.id, record.id)
    await relay.store.put_broadcast(record)
    relay.broadcaster.submit(record)
    return json_response(
        await _broadcast_view(relay, record),
        status=201,
        headers={"Location": f"/v1/broadcasts/{record.id}"},
    )


async def _broadcast_view(relay: Relay, b: Broadcast) -> BroadcastView:
    counts = await relay.store.broadcast_counts(b.id)
    return BroadcastView(
        id=b.id,
        channel=b.channel,
        created_at=rfc3339(b.created_ms),
        expires_at=rfc3339(b.expires_ms),
        members=b.members,
        stored=b.stored,
        skipped=b.skipped,
        delivered=counts.delivered,
        acked=counts.acked,
        done_at=None if b.done_ms is None else rfc3339(b.done_ms),
    )


async def show_broadcast(request: Request) -> Response:
    principal = await require_key(request, Scope.BROADCAST)
    relay = relay_of(request)
    broadcast_id = str(request.path_params["broadcast"])
    found = await relay.store.get_broadcast(broadcast_id) if len(broadcast_id) == 26 else None
    if found is None or not (principal.relay_admin or found.tenant == principal.tenant):
        raise PinrelayError(f"no broadcast with id {broadcast_id}", ErrorCode.NOT_FOUND)
    return json_response(await _broadcast_view(relay, found))


# --- the device's side (its token) ---------------------------------------------------
async def _device_channels(relay: Relay, pin: str, tenant: str | None) -> DeviceChannels:
    joined = set(await relay.store.channels_of(pin))
    offered = await relay.store.list_channels(tenant) if tenant is not None else []
    return DeviceChannels(
        channels=[
            DeviceChannel(id=c.id, name=c.name, klass=c.klass, joined=c.id in joined)
            for c in offered
        ],
        refused=await relay.store.refusals_of(pin),
    )


async def device_channels(request: Request) -> Response:
    device = await require_device(request)
    relay = relay_of(request)
    return json_response(await _device_channels(relay, device.pin, device.tenant))


async def join(request: Request) -> Response:
    device = await require_device(request)
    relay = relay_of(request)
    channel_id = str(request.path_params["channel"])
    # A tenant-less device (its tenant deleted) has no channels to join.
    channel = await _channel(relay, device.tenant or "", channel_id, False)
    await relay.store.join_channel(device.pin, channel.id, True)
    return json_response(await _device_channels(relay, device.pin, device.tenant))


async def leave(request: Request) -> Response:
    device = await require_device(request)
    relay = relay_of(request)
    channel_id = str(request.path_params["channel"])
    if channel_id not in await relay.store.channels_of(device.pin):
        raise PinrelayError(f"this device is not a member of {channel_id}", ErrorCode.NOT_FOUND)
    await relay.store.join_channel(device.pin, channel_id, False)
    return Response(status_code=204)


def _class_of(request: Request) -> ChannelClass:
    asked = str(request.path_params["class"])
    for klass in CLASSES:
        if klass == asked:
            return klass
    raise PinrelayError(f"no channel class {asked!r}: service or marketing", ErrorCode.NOT_FOUND)


async def refuse(request: Request) -> Response:
    device = await require_device(request)
    await relay_of(request).store.set_refusal(device.pin, _class_of(request), True)
    return Response(status_code=204)


async def unrefuse(request: Request) -> Response:
    device = await require_device(request)
    await relay_of(request).store.set_refusal(device.pin, _class_of(request), False)
    return Response(status_code=204)


# --- the audit log --------------------------------------------------------------------
async def audit(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    relay = relay_of(request)
    tenant = principal.tenant
    asked = request.query_params.get("tenant")
    if asked is not None:
        if not TENANT_ID_RE.match(asked):
            raise RemoteProtocolError("'tenant' is not a tenant id", ErrorCode.INVALID)
        if principal.tenant not in (None, asked):
            raise PinrelayError(f"no tenant with id {asked}", ErrorCode.NOT_FOUND)
        tenant = asked
    limit = query_int(request, "limit", 100, 1, 1000)
    before = query_int(request, "before", 0, 0, 2**53 - 1) or None
    entries = await relay.store.audit(tenant, before, limit)
    lines: list[AuditLine] = []
    for e in entries:
        b = await relay.store.get_broadcast(e.broadcast) if e.broadcast else None
        lines.append(
            AuditLine(
                at=rfc3339(e.at_ms),
                tenant=e.tenant,
                key=e.key_id or "admin",
                action=e.action,
                channel=e.channel,
                broadcast=e.broadcast,
                stored=None if b is None else b.stored,
                done=None if b is None else b.done_ms is not None,
            )
        )
    return json_response(AuditLog(entries=lines))


routes = [
    Route("/v1/channels", create_channel, methods=["POST"]),
    Route("/v1/channels", list_channels, methods=["GET"]),
    Route("/v1/channels/{channel}", show_channel, methods=["GET"]),
    Route("/v1/channels/{channel}", delete_channel, methods=["DELETE"]),
    Route("/v1/channels/{channel}/messages", broadcast, methods=["POST"]),
    Route("/v1/broadcasts/{broadcast}", show_broadcast, methods=["GET"]),
    Route("/v1/devices/{pin}/channels", device_channels, methods=["GET"]),
    Route("/v1/devices/{pin}/channels/{channel}", join, methods=["POST"]),
    Route("/v1/devices/{pin}/channels/{channel}", leave, methods=["DELETE"]),
    Route("/v1/devices/{pin}/refusals/{class}", refuse, methods=["PUT"]),
    Route("/v1/devices/{pin}/refusals/{class}", unrefuse, methods=["DELETE"]),
    Route("/v1/audit", audit, methods=["GET"]),
]
