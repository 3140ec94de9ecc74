"""Incident reports (PROTOCOL "Incidents and status"; core/report.py).

``GET /v1/incidents/{id}/report`` computes the report from the incident, the
figures every relay recorded around it (figures.py; Store.readings) and the
notifications sent; ``report.png`` and ``report.svg`` draw its chart
(report_chart.py, in a thread).  An admin key reads them: the relay's for any
incident, a tenant's for those affecting its tenant (any other answers as one that
does not exist, as api/incidents.py does).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import json_response, relay_of
from pinrelay.api.incidents import _admin, _visible
from pinrelay.api.schemas import IncidentReport, ReportDelays, ReportNotification, ReportRegion
from pinrelay.core.incidents import Incident
from pinrelay.core.readings import Readings
from pinrelay.core.report import Notification, Report, report, timeline_notices, window
from pinrelay.core.timefmt import rfc3339

if TYPE_CHECKING:
    from pinrelay.relay import Relay
    from pinrelay.report_chart import Format


def notifications_sent(relay: Relay, incident: Incident) -> list[Notification]:
    """What was sent about ``incident`` to devices and outside channels, when the
    relay keeps it (the notifiers add theirs here); empty: the report falls back on
    the incident's timeline (core/report.py rule 7).  System messages: what the
    relay answering told its own links (link/system.py ``told``); webhooks: what it
    delivered (webhooks.py ``delivered``)."""
    news = relay.link.system
    told = news.told(incident.id) if news is not None else []
    devices = [
        Notification(at_ms=t.at_ms, event=t.event, channel="devices", count=t.links, text=t.text)
        for t in told
    ]
    hooks = [
        Notification(at_ms=at, event=event, channel="webhook", count=1, text=f"to {wid}")
        for at, event, wid in relay.webhooks.delivered(incident.id)
    ]
    if not devices and not hooks:
        return []
    sent = sorted([*devices, *hooks], key=lambda n: n.at_ms)
    return [*timeline_notices(incident), *sent]


async def _report(request: Request) -> tuple[Report, list[Readings]]:
    principal = await _admin(request, write=False)
    relay = relay_of(request)
    incident = await _visible(relay, principal, str(request.path_params["incident"]))
    now_ms = int(relay.clock() * 1000)
    since, until = window(incident, now_ms)
    readings = await relay.store.readings(since, until)
    made = report(incident, readings, now_ms, sent=notifications_sent(relay, incident))
    return made, readings


def view(r: Report) -> IncidentReport:
    return IncidentReport(
        incident=r.incident,
        state=r.state,
        component=r.component,
        severity=r.severity,
        region=r.region,
        started_at=rfc3339(r.started_ms),
        opened_at=rfc3339(r.opened_ms),
        detection_delay_ms=r.detection_delay_ms,
        ended_at=None if r.ended_ms is None else rfc3339(r.ended_ms),
        duration_ms=r.duration_ms,
        regions=[
            ReportRegion(region=g.region, relays=g.relays, impaired_ms=g.impaired_ms)
            for g in r.regions
        ],
        devices_affected=r.devices_affected,
        tenants_affected="all" if r.tenants_affected == "all" else list(r.tenants_affected),
        delivered=r.delivered,
        delayed=r.delayed,
        delayed_over_ms=r.delayed_over_ms,
        delays=ReportDelays(
            bounds_ms=list(r.delay_bounds_ms),
            counts=list(r.delay_counts),
            p50_ms=r.delay_p50_ms,
            p90_ms=r.delay_p90_ms,
            p99_ms=r.delay_p99_ms,
        ),
        expired=r.expired,
        notifications=[
            ReportNotification(
                at=rfc3339(n.at_ms), event=n.event, channel=n.channel, count=n.count, text=n.text
            )
            for n in r.notifications
        ],
        readings=r.readings,
        relays=list(r.relays),
        chart=f"/v1/incidents/{r.incident}/report.png",
    )


async def show(request: Request) -> Response:
    made, _ = await _report(request)
    return json_response(view(made))


async def _chart(request: Request, fmt: Format) -> Response:
    from pinrelay.report_chart import MEDIA_TYPES, draw

    made, readings = await _report(request)
    body = await asyncio.to_thread(draw, made, readings, fmt)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers={"Cache-Control": "no-store"})


async def png(request: Request) -> Response:
    return await _chart(request, "png")


async def svg(request: Request) -> Response:
    return await _chart(request, "svg")


routes = [
    Route("/v1/incidents/{incident}/report", show, methods=["GET"]),
    Route("/v1/incidents/{incident}/report.png", png, methods=["GET"]),
    Route("/v1/incidents/{incident}/report.svg", svg, methods=["GET"]),
]
