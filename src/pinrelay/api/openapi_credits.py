"""The service-level, credit, make-good and code paths of the OpenAPI document
(api/openapi.py; PROTOCOL "Service credits" and "Making good").

All take an ``admin`` key: the relay's own to set service levels and make good; a
tenant's to read its service level and credits and to redeem its codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api import schemas_credits as schemas
from pinrelay.api.openapi_chat import BODY_ERRORS, path_param
from pinrelay.api.openapi_tenants import AUTH_ERRORS
from pinrelay.core.credits import MONTH_PATTERN, ServiceLevel
from pinrelay.core.incidents import ID_PATTERN
from pinrelay.core.makegood import CODE_PATTERN

COMPONENTS: list[type[Struct]] = [
    ServiceLevel,
    schemas.CreditList,
    schemas.MakeGoodCreate,
    schemas.MakeGoodView,
    schemas.CodeView,
]

_TENANT = path_param("tenant", "^(default|[a-z2-7]{12})$")
_MONTH = {
    "name": "month",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": MONTH_PATTERN},
    "description": "The UTC month, YYYY-MM (default: this one, so far)",
}


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths, built with openapi's ``_op`` (passed in to keep imports one way)."""

    def key_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*AUTH_ERRORS, *(e for e in errors if e not in AUTH_ERRORS))
        return op(summary, ok, codes, tag="credits", **kw)

    make_good = key_op(
        "Make good: each of the tenant's devices (but those refusing marketing) gets a"
        " message with a code of its own, once (the relay's admin key); 201 when made,"
        " 200 with how far it got when asked again",
        (201, "Made", "MakeGoodView"),
        (*BODY_ERRORS, 404, 409),
        body="MakeGoodCreate",
        params=[path_param("incident", ID_PATTERN)],
    )
    make_good["responses"]["200"] = {
        "description": "Made before: how far it got",
        "content": make_good["responses"]["201"]["content"],
    }
    return {
        "/v1/tenants/{tenant}/service-level": {
            "put": key_op(
                "Set a tenant's service level (the relay's admin key)",
                (200, "The service level", "ServiceLevel"),
                (*BODY_ERRORS, 404),
                body="ServiceLevel",
                params=[_TENANT],
            ),
            "get": key_op(
                "A tenant's service level",
                (200, "The service level", "ServiceLevel"),
                (404,),
                params=[_TENANT],
            ),
            "delete": key_op(
                "Remove a tenant's service level (the relay's admin key)",
                (204, "Removed", None),
                (404,),
                params=[_TENANT],
            ),
        },
        "/v1/credits": {
            "get": key_op(
                "Each tenant's measured availability and the credit owed for a month (a"
                " tenant's admin key: its own)",
                (200, "Credits", "CreditList"),
                (422,),
                params=[_MONTH],
            )
        },
        "/v1/incidents/{incident}/make-good": {"post": make_good},
        "/v1/codes/{code}/redeem": {
            "post": key_op(
                "Redeem a make-good code (its tenant's admin key); 409 once redeemed",
                (200, "Redeemed", "CodeView"),
                (404, 409),
                params=[path_param("code", CODE_PATTERN)],
            )
        },
    }
