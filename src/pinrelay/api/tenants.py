"""Tenants (the relay's admin key) and the grants a device gives other tenants.

The relay's admin key creates, changes, suspends and deletes tenants and makes
their keys.  A tenant's own admin key sees its tenant and nothing else: any other
id answers as one that does not exist (PROTOCOL "Tenants").  A device grants
another tenant the right to push to it with its own token, and takes it back.
"""

from __future__ import annotations

import base64
import os

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    decode,
    json_response,
    live_tenant,
    no_tenant,
    read_body,
    relay_of,
    require_device,
    require_key,
    visible_tenant,
)
from pinrelay.api.keys import make_key
from pinrelay.api.schemas import (
    GrantCreate,
    GrantList,
    TenantChange,
    TenantCreate,
    TenantKeyCreate,
    TenantList,
    TenantView,
)
from pinrelay.auth import KeyPrincipal
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Scope
from pinrelay.core.tenants import DEFAULT_TENANT, Tenant
from pinrelay.core.timefmt import rfc3339


def _view(t: Tenant) -> TenantView:
    return TenantView(
        id=t.id,
        name=t.name,
        created_at=rfc3339(t.created_ms),
        suspended=t.suspended,
        quotas=t.quotas,
        deleted_at=None if t.deleted_ms is None else rfc3339(t.deleted_ms),
    )


def _relay_admin(principal: KeyPrincipal) -> None:
    # Whatever the id: a tenant's key learns nothing of other tenants here.
    if not principal.relay_admin:
        raise PinrelayError("only the relay's admin key manages tenants", ErrorCode.FORBIDDEN)


def new_tenant_id() -> str:
    """12 lowercase base32 characters: 60 random bits, safe in a NATS subject."""
    return base64.b32encode(os.urandom(8)).decode().lower()[:12]


async def create_tenant(request: Request) -> Response:
    _relay_admin(await require_key(request, Scope.ADMIN))
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=4096), TenantCreate, integral=True)
    tenant = Tenant(
        id=new_tenant_id(),
        name=spec.name,
        created_ms=int(relay.clock() * 1000),
        quotas=spec.quotas,
    )
    await relay.store.create_tenant(tenant)
    return json_response(
        _view(tenant), status=201, headers={"Location": f"/v1/tenants/{tenant.id}"}
    )


async def list_tenants(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    tenants = await relay_of(request).store.list_tenants()
    shown = [t for t in tenants if principal.relay_admin or t.id == principal.tenant]
    return json_response(TenantList(tenants=[_view(t) for t in shown]))


async def show_tenant(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    tenant_id = str(request.path_params["tenant"])
    return json_response(_view(await visible_tenant(relay_of(request), principal, tenant_id)))


async def change_tenant(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    _relay_admin(principal)
    relay = relay_of(request)
    tenant = await visible_tenant(relay, principal, str(request.path_params["tenant"]))
    change = decode(await read_body(request, limit=4096), TenantChange, integral=True)
    fields = {k: v for k, v in msgspec.structs.asdict(change).items() if v is not None}
    changed = msgspec.structs.replace(tenant, **fields)
    if not await relay.store.update_tenant(changed):
        raise no_tenant(tenant.id)
    return json_response(_view(changed))


async def delete_tenant(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    _relay_admin(principal)
    relay = relay_of(request)
    tenant = await visible_tenant(relay, principal, str(request.path_params["tenant"]))
    if tenant.id == DEFAULT_TENANT:
        raise PinrelayError("the default tenant cannot be deleted", ErrorCode.CONFLICT)
    gone = msgspec.structs.replace(tenant, deleted_ms=int(relay.clock() * 1000))
    if not await relay.store.update_tenant(gone):
        raise no_tenant(tenant.id)
    return Response(status_code=204)


async def create_tenant_key(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    _relay_admin(principal)
    relay = relay_of(request)
    tenant = await visible_tenant(relay, principal, str(request.path_params["tenant"]))
    spec = decode(await read_body(request, limit=4096), TenantKeyCreate)
    return json_response(await make_key(relay, spec.name, spec.scope, tenant.id), status=201)


# --- grants (the device's token) -------------------------------------------------------
async def grant(request: Request) -> Response:
    device = await require_device(request)
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=1024), GrantCreate)
    await live_tenant(relay, spec.tenant)
    if spec.tenant != device.tenant:
        await relay.store.set_grant(device.pin, spec.tenant, True)
    return json_response(GrantList(tenants=await relay.store.grants_of(device.pin)), status=201)


async def list_grants(request: Request) -> Response:
    device = await require_device(request)
    grants = await relay_of(request).store.grants_of(device.pin)
    return json_response(GrantList(tenants=grants))


async def revoke_grant(request: Request) -> Response:
    device = await require_device(request)
    relay = relay_of(request)
    tenant_id = str(request.path_params["tenant"])
    if tenant_id not in await relay.store.grants_of(device.pin):
        raise PinrelayError(f"this device granted nothing to {tenant_id}", ErrorCode.NOT_FOUND)
    await relay.store.set_grant(device.pin, tenant_id, False)
    return Response(status_code=204)


routes = [
    Route("/v1/tenants", create_tenant, methods=["POST"]),
    Route("/v1/tenants", list_tenants, methods=["GET"]),
    Route("/v1/tenants/{tenant}", show_tenant, methods=["GET"]),
    Route("/v1/tenants/{tenant}", change_tenant, methods=["PATCH"]),
    Route("/v1/tenants/{tenant}", delete_tenant, methods=["DELETE"]),
    Route("/v1/tenants/{tenant}/keys", create_tenant_key, methods=["POST"]),
    Route("/v1/devices/{pin}/grants", grant, methods=["POST"]),
    Route("/v1/devices/{pin}/grants", list_grants, methods=["GET"]),
    Route("/v1/devices/{pin}/grants/{tenant}", revoke_grant, methods=["DELETE"]),
]
