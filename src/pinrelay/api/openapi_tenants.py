"""The tenant and grant paths of the OpenAPI document (api/openapi.py).

Tenants are managed with the relay's admin key; a tenant's admin key sees its own
tenant.  Grants are made with the device's token (PROTOCOL "Tenants").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api import schemas
from pinrelay.api.openapi_chat import BODY_ERRORS, DEVICE_ERRORS, path_param
from pinrelay.api.portability import MAX_EXPORT_BYTES, MAX_EXPORT_MESSAGES

COMPONENTS: list[type[Struct]] = [
    schemas.TenantCreate,
    schemas.TenantChange,
    schemas.TenantView,
    schemas.TenantList,
    schemas.TenantKeyCreate,
    schemas.GrantCreate,
    schemas.GrantList,
    schemas.MoveRequest,
    schemas.MoveView,
    schemas.MoveDone,
    schemas.Export,
]

AUTH_ERRORS = (401, 403, 429, 503)
_TENANT_PATTERN = "^(default|[a-z2-7]{12})$"
_PIN = path_param("pin", "^[0-9A-F]{8}$")
_TENANT = path_param("tenant", _TENANT_PATTERN)


def query(name: str, low: int, high: int, default: int, about: str) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": low, "maximum": high, "default": default}
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": about}


_EXPORT_QUERY = [
    query("after", 0, 2**53 - 1, 0, "Export messages after this cursor (the last page's)"),
    query(
        "limit",
        1,
        MAX_EXPORT_MESSAGES,
        MAX_EXPORT_MESSAGES,
        f"Most messages in this page (about {MAX_EXPORT_BYTES >> 20} MiB at most)",
    ),
]


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths, built with openapi's ``_op`` (passed in to keep imports one way)."""

    def tenant_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*AUTH_ERRORS, *(e for e in errors if e not in AUTH_ERRORS))
        return op(summary, ok, codes, tag="tenants", **kw)

    def device_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*DEVICE_ERRORS, *(e for e in errors if e not in DEVICE_ERRORS))
        return op(summary, ok, codes, tag="tenants", **kw)

    return {
        "/v1/tenants": {
            "post": tenant_op(
                "Create a tenant (the relay's admin key)",
                (201, "Created", "TenantView"),
                BODY_ERRORS,
                body="TenantCreate",
            ),
            "get": tenant_op(
                "List tenants (a tenant's admin key: its own)",
                (200, "Tenants, deleted ones included", "TenantList"),
                (),
            ),
        },
        "/v1/tenants/{tenant}": {
            "get": tenant_op(
                "Show a tenant", (200, "The tenant", "TenantView"), (404,), params=[_TENANT]
            ),
            "patch": tenant_op(
                "Rename, suspend, resume or set the quotas of a tenant (the relay's admin key)",
                (200, "The tenant after", "TenantView"),
                (*BODY_ERRORS, 404),
                body="TenantChange",
                params=[_TENANT],
            ),
            "delete": tenant_op(
                "Delete a tenant: its keys stop working, its devices keep their data and"
                " become tenant-less (the relay's admin key)",
                (204, "Deleted", None),
                (404, 409),
                params=[_TENANT],
            ),
        },
        "/v1/tenants/{tenant}/keys": {
            "post": tenant_op(
                "Make a key of the tenant (the relay's admin key; shown once)",
                (201, "Created", "KeyCreated"),
                (*BODY_ERRORS, 404),
                body="TenantKeyCreate",
                params=[_TENANT],
            )
        },
        "/v1/devices/{pin}/grants": {
            "post": device_op(
                "Let another tenant push to this device (the device's token)",
                (201, "The tenants the device grants", "GrantList"),
                (*BODY_ERRORS,),
                body="GrantCreate",
                params=[_PIN],
            ),
            "get": device_op(
                "The tenants this device lets push to it",
                (200, "Grants", "GrantList"),
                (),
                params=[_PIN],
            ),
        },
        "/v1/devices/{pin}/grants/{tenant}": {
            "delete": device_op(
                "Take a grant back: that tenant's pushes get 404 again",
                (204, "Revoked", None),
                (),
                params=[_PIN, _TENANT],
            )
        },
        "/v1/devices/{pin}/export": {
            "get": device_op(
                "Everything the relay holds about this device (the device's token; PROTOCOL"
                ' "Portability"), its undelivered messages a page at a time',
                (200, "The export", "Export"),
                (400, 422),
                params=[_PIN, *_EXPORT_QUERY],
            )
        },
        "/v1/devices/{pin}/move": {
            "post": device_op(
                "Ask to move this device to another tenant, which must accept (replaces"
                " an earlier request; it lapses after 7 days)",
                (202, "The pending move", "MoveView"),
                (*BODY_ERRORS, 409),
                body="MoveRequest",
                params=[_PIN],
            ),
            "get": device_op(
                "This device's pending move",
                (200, "The pending move", "MoveView"),
                (),
                params=[_PIN],
            ),
            "delete": device_op(
                "Withdraw this device's pending move", (204, "Withdrawn", None), (), params=[_PIN]
            ),
        },
        "/v1/tenants/{tenant}/moves/{pin}/accept": {
            "post": tenant_op(
                "Accept a device's move to this tenant (its admin or devices key, or the"
                " relay's admin key): the device keeps its contacts, groups, messages,"
                " cursor and token; its old tenant's keys lose it",
                (200, "Moved", "MoveDone"),
                (404,),
                params=[_TENANT, _PIN],
            )
        },
    }
