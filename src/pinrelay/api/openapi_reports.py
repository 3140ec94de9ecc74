"""The incident report paths of the OpenAPI document (api/openapi.py; api/reports.py).

An admin key reads them: the relay's for any incident, a tenant's for those
affecting its tenant (404 for the others, as for an incident that does not exist).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api import schemas
from pinrelay.api.openapi_chat import path_param
from pinrelay.api.openapi_tenants import AUTH_ERRORS
from pinrelay.core.incidents import ID_PATTERN

COMPONENTS: list[type[Struct]] = [schemas.IncidentReport]

_INCIDENT = path_param("incident", ID_PATTERN)


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths, built with openapi's ``_op`` (passed in to keep imports one way)."""

    def report_op(summary: str, ok: tuple[int, str, str | None]) -> dict[str, Any]:
        return op(summary, ok, (*AUTH_ERRORS, 404), tag="incidents", params=[_INCIDENT])

    def chart_op(media_type: str) -> dict[str, Any]:
        made = report_op(
            "The report's chart: backlog and delivery lag of each relay over time, the"
            " incident shaded",
            (200, "The chart", None),
        )
        made["responses"]["200"]["content"] = {
            media_type: {"schema": {"type": "string", "format": "binary"}}
        }
        return made

    return {
        "/v1/incidents/{incident}/report": {
            "get": report_op(
                "What an incident cost, from the figures the relays recorded: detection"
                " delay, duration, devices and tenants affected, messages delayed and"
                " expired, notifications sent",
                (200, "The report", "IncidentReport"),
            )
        },
        "/v1/incidents/{incident}/report.png": {"get": chart_op("image/png")},
        "/v1/incidents/{incident}/report.svg": {"get": chart_op("image/svg+xml")},
    }
