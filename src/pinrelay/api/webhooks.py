"""Outgoing webhooks' subscriptions (PROTOCOL "Webhooks", DECISIONS 56).

An admin key subscribes a URL to incident events: the relay's own key hears every
incident; a tenant's admin key makes a subscription of its tenant, which hears
only the incidents affecting that tenant (core/webhooks.py rule 1).  A tenant's
admin sees and deletes its tenant's subscriptions only; another's answers as one
that does not exist.  The secret is never shown again.  Bad input changes nothing.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import decode, json_response, read_body, relay_of, require_key
from pinrelay.api.schemas import WebhookCreate, WebhookList, WebhookView
from pinrelay.auth import KeyPrincipal
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Scope
from pinrelay.core.timefmt import rfc3339
from pinrelay.core.webhooks import (
    MAX_WEBHOOKS,
    Webhook,
    is_webhook_id,
    make_webhook,
    new_webhook_id,
)

#: Largest body: a 2,048-character URL, a 256-character secret, and the rest.
MAX_WEBHOOK_BODY = 16 * 1024


def view(hook: Webhook) -> WebhookView:
    return WebhookView(
        id=hook.id,
        tenant=hook.tenant,
        url=hook.url,
        events=list(hook.events),
        kind=hook.kind,
        to=hook.to,
        created_at=rfc3339(hook.created_ms),
    )


def _mine(principal: KeyPrincipal, hook: Webhook) -> bool:
    return principal.relay_admin or hook.tenant == principal.tenant


async def _visible(request: Request, principal: KeyPrincipal) -> Webhook:
    webhook_id = str(request.path_params["webhook"])
    relay = relay_of(request)
    found = await relay.store.get_webhook(webhook_id) if is_webhook_id(webhook_id) else None
    if found is None or not _mine(principal, found):
        raise PinrelayError(f"no webhook with id {webhook_id}", ErrorCode.NOT_FOUND)
    return found


async def create(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=MAX_WEBHOOK_BODY), WebhookCreate)
    hook = make_webhook(
        new_webhook_id(os.urandom),
        principal.tenant,
        spec.url,
        spec.secret,
        tuple(spec.events),
        spec.kind,
        spec.to,
        int(relay.clock() * 1000),
    )
    await relay.store.put_webhook(hook, MAX_WEBHOOKS)
    return json_response(view(hook), status=201, headers={"Location": f"/v1/webhooks/{hook.id}"})


async def listing(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    hooks = await relay_of(request).store.list_webhooks()
    return json_response(WebhookList(webhooks=[view(h) for h in hooks if _mine(principal, h)]))


async def show(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    return json_response(view(await _visible(request, principal)))


async def delete(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    hook = await _visible(request, principal)
    await relay_of(request).store.delete_webhook(hook.id)
    return Response(status_code=204)


routes = [
    Route("/v1/webhooks", create, methods=["POST"]),
    Route("/v1/webhooks", listing, methods=["GET"]),
    Route("/v1/webhooks/{webhook}", show, methods=["GET"]),
    Route("/v1/webhooks/{webhook}", delete, methods=["DELETE"]),
]
