"""The webhook paths of the OpenAPI document (api/openapi.py; PROTOCOL "Webhooks").

Subscriptions take an ``admin`` key: the relay's own (it hears every incident) or a
tenant's (its tenant's incidents only).  The deliveries themselves are outgoing
requests, described in PROTOCOL only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api import schemas
from pinrelay.api.openapi_chat import BODY_ERRORS, path_param
from pinrelay.api.openapi_tenants import AUTH_ERRORS
from pinrelay.core.webhooks import ID_PATTERN

COMPONENTS: list[type[Struct]] = [
    schemas.WebhookCreate,
    schemas.WebhookView,
    schemas.WebhookList,
]

_WEBHOOK = path_param("webhook", ID_PATTERN)


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths, built with openapi's ``_op`` (passed in to keep imports one way)."""

    def key_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*AUTH_ERRORS, *(e for e in errors if e not in AUTH_ERRORS))
        return op(summary, ok, codes, tag="webhooks", **kw)

    return {
        "/v1/webhooks": {
            "post": key_op(
                "Subscribe a URL to incident events (the relay's admin key: every"
                " incident; a tenant's: its tenant's); 409: the tenant holds 20 already",
                (201, "Subscribed", "WebhookView"),
                (*BODY_ERRORS, 409),
                body="WebhookCreate",
            ),
            "get": key_op(
                "The subscriptions the key's tenant holds (the relay's admin key: all)",
                (200, "Subscriptions", "WebhookList"),
                (),
            ),
        },
        "/v1/webhooks/{webhook}": {
            "get": key_op(
                "Show a subscription (never its secret)",
                (200, "The subscription", "WebhookView"),
                (404,),
                params=[_WEBHOOK],
            ),
            "delete": key_op(
                "Delete a subscription and its undelivered notifications",
                (204, "Deleted", None),
                (404,),
                params=[_WEBHOOK],
            ),
        },
    }
