"""Application API keys (admin only): create, list, revoke."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import decode, json_response, read_body, relay_of, require_key
from pinrelay.api.schemas import KeyCreate, KeyCreated, KeyList, KeyView
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import hash_secret, new_secret
from pinrelay.core.model import ApiKey, Scope
from pinrelay.core.timefmt import rfc3339


async def create_key(request: Request) -> Response:
    await require_key(request, Scope.ADMIN)
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=4096), KeyCreate)
    key_id = "k_" + new_secret(os.urandom, 9)
    secret = f"prk_{new_secret(os.urandom, 32)}"
    now_ms = int(relay.clock() * 1000)
    await relay.store.create_key(
        ApiKey(key_id, spec.name, Scope(spec.scope), hash_secret(secret), now_ms, False)
    )
    return json_response(
        KeyCreated(
            id=key_id, name=spec.name, scope=spec.scope, key=secret, created_at=rfc3339(now_ms)
        ),
        status=201,
    )


async def list_keys(request: Request) -> Response:
    await require_key(request, Scope.ADMIN)
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
                )
                for k in keys
            ]
        )
    )


async def revoke_key(request: Request) -> Response:
    await require_key(request, Scope.ADMIN)
    key_id = str(request.path_params["key_id"])
    if not await relay_of(request).store.revoke_key(key_id):
        raise PinrelayError(f"no active key with id {key_id}", ErrorCode.NOT_FOUND)
    return Response(status_code=204)


routes = [
    Route("/v1/keys", create_key, methods=["POST"]),
    Route("/v1/keys", list_keys, methods=["GET"]),
    Route("/v1/keys/{key_id}", revoke_key, methods=["DELETE"]),
]
