"""Operators' incidents (PROTOCOL "Incidents and status").

The relay's admin key opens, updates and resolves incidents; a tenant's admin key
reads those that affect its tenant (every tenant's, and its own), and any other
incident answers as one that does not exist.  Each change is a compare-and-set of
the incident's next revision (core/incidents.py rule 2): a change that loses to
another relay's reads again and is applied again, or answers 409 once the incident
is resolved.  The public views are in api/status.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import decode, json_response, query_int, read_body, relay_of, require_key
from pinrelay.api.schemas import (
    IncidentCreate,
    IncidentList,
    IncidentResolve,
    IncidentUpdateCreate,
    IncidentUpdateView,
    IncidentView,
    MonitorFinding,
    MonitorsView,
    StatusIncident,
)
from pinrelay.auth import KeyPrincipal
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import (
    Incident,
    add_update,
    is_incident_id,
    new_incident_id,
    open_incident,
    resolve,
)
from pinrelay.core.model import Scope
from pinrelay.core.timefmt import rfc3339

if TYPE_CHECKING:
    from pinrelay.relay import Relay

#: Largest body: 2,000 characters of up to 4 bytes, and 100 tenant ids.
MAX_INCIDENT_BODY = 16 * 1024
#: Times a change is read and applied again after losing its compare-and-set.
MAX_ATTEMPTS = 20
#: How far back listings go by default: open incidents, and those resolved in 14 days.
RECENT_MS = 14 * 86_400_000


def status_view(i: Incident) -> StatusIncident:
    """The incident as /status.json shows it."""
    return StatusIncident(
        id=i.id,
        state=i.state,
        component=i.component,
        severity=i.severity,
        started_at=rfc3339(i.started_ms),
        resolved_at=None if i.resolved_ms is None else rfc3339(i.resolved_ms),
        updates=[IncidentUpdateView(at=rfc3339(u.at_ms), text=u.text) for u in i.updates],
    )


def view(i: Incident) -> IncidentView:
    s = status_view(i)
    return IncidentView(
        id=s.id,
        state=s.state,
        component=s.component,
        severity=s.severity,
        started_at=s.started_at,
        resolved_at=s.resolved_at,
        updates=s.updates,
        region=i.region,
        source=i.source,
        tenants=list(i.tenants),
        opened_at=rfc3339(i.opened_ms if i.opened_ms is not None else i.started_ms),
        holder=i.holder,
    )


def _no_incident(incident_id: str) -> PinrelayError:
    return PinrelayError(f"no incident with id {incident_id}", ErrorCode.NOT_FOUND)


async def _admin(
    request: Request,
    write: bool,
    refused: str = "incidents are opened, updated and resolved with the relay's admin key",
) -> KeyPrincipal:
    """An admin key; for a change, the relay's own (a tenant's admin only reads)."""
    principal = await require_key(request, Scope.ADMIN)
    if write and not principal.relay_admin:
        raise PinrelayError(refused, ErrorCode.FORBIDDEN)
    return principal


def _kept_here(relay: Relay) -> list[Incident]:
    """Incidents a monitor of this relay opened or changed while the store was away,
    not yet written (monitors.py): shown as this relay knows them."""
    return [revisions[-1] for revisions in relay.monitors.unpublished.values() if revisions]


async def _visible(relay: Relay, principal: KeyPrincipal, incident_id: str) -> Incident:
    try:
        found = await relay.store.get_incident(incident_id) if is_incident_id(incident_id) else None
    except PinrelayError:  # the store away: what this relay knows (incident_board.py)
        found = relay.incidents.get(incident_id)
    kept = {i.id: i for i in _kept_here(relay)}.get(incident_id)
    if kept is not None and (found is None or kept.rev > found.rev):
        found = kept
    if found is None or not found.affects(principal.tenant):
        raise _no_incident(incident_id)
    return found


def _now_ms(relay: Relay) -> int:
    return int(relay.clock() * 1000)


async def _change(
    relay: Relay, incident_id: str, apply: Callable[[Incident], Incident]
) -> Incident:
    """Apply ``apply`` to the stored incident by compare-and-set, again on a lost race."""
    for _ in range(MAX_ATTEMPTS):
        found = await relay.store.get_incident(incident_id) if is_incident_id(incident_id) else None
        if found is None:
            raise _no_incident(incident_id)
        changed = apply(found)  # CONFLICT once resolved (core/incidents.py rule 1)
        if await relay.store.put_incident(changed):
            await relay.incidents.written(changed)
            return changed
    raise PinrelayError(f"incident {incident_id} is changing too fast: retry", ErrorCode.CONFLICT)


async def create(request: Request) -> Response:
    await _admin(request, write=True)
    relay = relay_of(request)
    spec = decode(await read_body(request, limit=MAX_INCIDENT_BODY), IncidentCreate)
    incident = open_incident(
        new_incident_id(os.urandom),
        spec.component,
        spec.severity,
        spec.text,
        _now_ms(relay),
        region=spec.region,
        tenants=spec.tenants,
    )
    if not await relay.store.put_incident(incident):  # 60 random bits: never in practice
        raise PinrelayError("incident id taken: retry", ErrorCode.CONFLICT)
    await relay.incidents.written(incident)
    return json_response(
        view(incident), status=201, headers={"Location": f"/v1/incidents/{incident.id}"}
    )


async def post_update(request: Request) -> Response:
    await _admin(request, write=True)
    relay = relay_of(request)
    incident_id = str(request.path_params["incident"])
    spec = decode(await read_body(request, limit=MAX_INCIDENT_BODY), IncidentUpdateCreate)
    changed = await _change(relay, incident_id, lambda i: add_update(i, spec.text, _now_ms(relay)))
    return json_response(view(changed), status=201)


async def post_resolve(request: Request) -> Response:
    await _admin(request, write=True)
    relay = relay_of(request)
    incident_id = str(request.path_params["incident"])
    body = await read_body(request, limit=MAX_INCIDENT_BODY, optional=True)
    spec = decode(body, IncidentResolve) if body else IncidentResolve()
    changed = await _change(relay, incident_id, lambda i: resolve(i, spec.text, _now_ms(relay)))
    return json_response(view(changed))


async def show(request: Request) -> Response:
    principal = await _admin(request, write=False)
    relay = relay_of(request)
    return json_response(
        view(await _visible(relay, principal, str(request.path_params["incident"])))
    )


async def listing(request: Request) -> Response:
    principal = await _admin(request, write=False)
    relay = relay_of(request)
    limit = query_int(request, "limit", 100, 1, 1000)
    default_since = max(0, _now_ms(relay) - RECENT_MS)
    since = query_int(request, "since", default_since, 0, 2**53 - 1)
    try:
        found = await relay.store.list_incidents(since, limit)
    except PinrelayError:  # the store away: what this relay knows (incident_board.py)
        found = relay.incidents.incidents()[:limit]
    stored = {i.id: i.rev for i in found}
    kept = [i for i in _kept_here(relay) if i.rev > stored.get(i.id, 0)]
    if kept:
        ids = {i.id for i in kept}
        found = sorted(
            [*kept, *(i for i in found if i.id not in ids)],
            key=lambda i: (i.started_ms, i.id),
            reverse=True,
        )[:limit]
    return json_response(
        IncidentList(incidents=[view(i) for i in found if i.affects(principal.tenant)])
    )


async def monitors(request: Request) -> Response:
    """What this relay's monitors see now (the relay's admin key)."""
    await _admin(request, write=True, refused="the monitors are read with the relay's admin key")
    relay = relay_of(request)
    m = relay.monitors
    red = []
    for f in m.findings:
        since = m.auto.red_since(f.component)
        red.append(
            MonitorFinding(
                component=f.component,
                severity=f.severity,
                text=f.text,
                red_since=rfc3339(since if since is not None else _now_ms(relay)),
            )
        )
    return json_response(
        MonitorsView(
            node=relay.config.node,
            region=relay.config.region,
            readings=m.last,
            red=red,
            unwritten=sorted(m.unpublished),
        )
    )


routes = [
    Route("/v1/monitors", monitors, methods=["GET"]),
    Route("/v1/incidents", create, methods=["POST"]),
    Route("/v1/incidents", listing, methods=["GET"]),
    Route("/v1/incidents/{incident}", show, methods=["GET"]),
    Route("/v1/incidents/{incident}/updates", post_update, methods=["POST"]),
    Route("/v1/incidents/{incident}/resolve", post_resolve, methods=["POST"]),
]
