"""API keys (an admin key): create, list, revoke.

A tenant's admin key manages its own tenant's keys only: another tenant's key
answers as a key that does not exist.  The relay's admin key manages every
tenant's (``tenant`` in the body; ``POST /v1/tenants/{id}/keys`` too).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    decode,
    json_response,
    live_tenant,
    read_body,
    relay_of,
    require_key,
)
from pinrelay.api.schemas import KeyCreate, KeyCreated, KeyList, KeyView
from pinrelay.auth import KeyPrincipal
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import hash_secret, new_secret
from pinrelay.core.model import ApiKey, Scope
from pinrelay.core.tenants import DEFAULT_TENANT
from pinrelay.core.timefmt import rfc3339

if TYPE_CHECKING:
    from pinrelay.relay import Relay


async def make_key(relay: Relay, name: str, scope: str, tenant: str) -> KeyCreated:
    """A new key of ``tenant`` (which must be live), stored; its secret shown once."""
    await live_tenant(relay, tenant)
    key_id = "k_" + new_secret(os.urandom, 9)
    secret = f"prk_{new_secret(os.urandom, 32)}"
    now_ms = int(relay.clock() * 1000)
    await relay.store.create_key(
        ApiKey(key_id, name, Scope(scope), hash_secret(secret), now_ms, False, tenant)
    )
    return KeyCreated(
        id=key_id,
        name=name,
        scope=scope,
        key=secret,
        created_at=rfc3339(now_ms),
        tenant=tenant,
    )


def _sees(principal: KeyPrincipal, key: ApiKey) -> bool:
    return principal.relay_admin or key.tenant == principal.tenant


async def create_key(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=4096), KeyCreate)
    if principal.tenant is None:
        tenant = spec.tenant or DEFAULT_TENANT
    elif spec.tenant not in (None, principal.tenant):
        raise PinrelayError(
            "a tenant's key makes keys for its own tenant only", ErrorCode.FORBIDDEN
        )
    else:
        tenant = principal.tenant
    return json_response(await make_key(relay, spec.name, spec.scope, tenant), status=201)


async def list_keys(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    keys = await relay_of(request).store.list_keys()
    return json_response(
        KeyList(
            keys=[
                KeyView(
                    id=k.id,
                    name=k.name,
                    scope=k.scope.value,
                    created_at=rfc3339(k.created_ms),
                    revoked=k.revoked,
                    tenant=k.tenant,
                )
                for k in keys
                if _sees(principal, k)
            ]
        )
    )


async def revoke_key(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    store = relay_of(request).store
    key_id = str(request.path_params["key_id"])
    if not principal.relay_admin:
        # Another tenant's key is one this caller cannot name: as if there were none.
        own = {k.id for k in await store.list_keys() if _sees(principal, k)}
        if key_id not in own:
            raise PinrelayError(f"no active key with id {key_id}", ErrorCode.NOT_FOUND)
    if not await store.revoke_key(key_id):
        raise PinrelayError(f"no active key with id {key_id}", ErrorCode.NOT_FOUND)
    return Response(status_code=204)


routes = [
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys/{key_id}", revoke_key, methods=["DELETE"]),
]
