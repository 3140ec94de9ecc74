"""The incident and status paths of the OpenAPI document (api/openapi.py).

Incidents take an ``admin`` key: the relay's own to open, update and resolve; a
tenant's to read those affecting it.  ``/status.json`` takes none (PROTOCOL
"Incidents and status"); the HTML page and the Atom feed are not JSON and are
described in PROTOCOL only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api import schemas
from pinrelay.api.openapi_chat import BODY_ERRORS, path_param
from pinrelay.api.openapi_tenants import AUTH_ERRORS, query
from pinrelay.core.incidents import ID_PATTERN

COMPONENTS: list[type[Struct]] = [
    schemas.IncidentCreate,
    schemas.IncidentUpdateCreate,
    schemas.IncidentResolve,
    schemas.IncidentView,
    schemas.IncidentList,
    schemas.Status,
    schemas.MonitorsView,
]

_INCIDENT = path_param("incident", ID_PATTERN)
_LIST_QUERY = [
    query("limit", 1, 1000, 100, "Most incidents in the answer"),
    {
        "name": "since",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
        "description": "Open incidents and those resolved since this time (ms since the"
        " epoch; default: 14 days ago)",
    },
]


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths, built with openapi's ``_op`` (passed in to keep imports one way)."""

    def key_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*AUTH_ERRORS, *(e for e in errors if e not in AUTH_ERRORS))
        return op(summary, ok, codes, tag="incidents", **kw)

    return {
        "/v1/incidents": {
            "post": key_op(
                "Open an incident (the relay's admin key)",
                (201, "Opened", "IncidentView"),
                BODY_ERRORS,
                body="IncidentCreate",
            ),
            "get": key_op(
                "Open and recent incidents, newest first (a tenant's admin key: those"
                " affecting its tenant)",
                (200, "Incidents", "IncidentList"),
                (422,),
                params=_LIST_QUERY,
            ),
        },
        "/v1/incidents/{incident}": {
            "get": key_op(
                "Show an incident and its timeline",
                (200, "The incident", "IncidentView"),
                (404,),
                params=[_INCIDENT],
            )
        },
        "/v1/incidents/{incident}/updates": {
            "post": key_op(
                "Add an update to an open incident's timeline (409: it is resolved)",
                (201, "The incident after", "IncidentView"),
                (*BODY_ERRORS, 404, 409),
                body="IncidentUpdateCreate",
                params=[_INCIDENT],
            )
        },
        "/v1/incidents/{incident}/resolve": {
            "post": key_op(
                "Resolve an incident, with a last update if a text is given (409: it is"
                " resolved already)",
                (200, "The incident after", "IncidentView"),
                (*BODY_ERRORS, 404, 409),
                body="IncidentResolve",
                body_required=False,
                params=[_INCIDENT],
            )
        },
        "/v1/monitors": {
            "get": key_op(
                "What this relay's monitors see: its last readings and the components"
                " red now (the relay's admin key)",
                (200, "The monitors", "MonitorsView"),
                (),
            )
        },
        "/status.json": {
            "get": op(
                "Each component's state and uptime over 90 days, and the public"
                " incidents, open and of the last 14 days, newest first; ``stale`` while"
                " this relay cannot read its store (no key)",
                (200, "Status", "Status"),
                (),
                auth=False,
                tag="incidents",
            )
        },
    }
