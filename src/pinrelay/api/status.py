"""The public status page: ``/status``, ``/status.json``, ``/status.atom``
(PROTOCOL "Incidents and status").

No key: every relay serves the state of the components (core/incidents.py
COMPONENTS) and the public incidents (those that name no tenant) open now or
resolved in the last 14 days, newest first.  The HTML page needs no script,
reloads itself every minute and fits a phone's width; every text an operator
wrote is escaped (HTML and XML), and characters XML 1.0 cannot carry are replaced.

Each relay reads the store at most once per :data:`FRESH_S` for these pages (they
are public, so a crowd reloading them costs the store one read a second); if the
store fails, the last answer it gave is served again.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import json_response, relay_of
from pinrelay.api.incidents import RECENT_MS, status_view
from pinrelay.api.schemas import Status, StatusComponent
from pinrelay.core.errors import PinrelayError
from pinrelay.core.incidents import Component, ComponentState, Incident, component_states
from pinrelay.core.timefmt import rfc3339

#: Seconds one relay keeps its last read of the incidents for these pages.
FRESH_S = 1.0
#: Most incidents shown.
MAX_SHOWN = 50
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(slots=True)
class _Seen:
    at: float
    incidents: list[Incident]


async def public_incidents(request: Request) -> list[Incident]:
    """The public incidents to show, read at most once per FRESH_S per relay."""
    relay = relay_of(request)
    now = relay.clock()
    seen: _Seen | None = getattr(request.app.state, "status_seen", None)
    if seen is not None and 0 <= now - seen.at < FRESH_S:
        return seen.incidents
    since = max(0, int(now * 1000) - RECENT_MS)
    try:
        found = await relay.store.list_incidents(since, 1000)
    except PinrelayError:
        if seen is None:
            raise
        return seen.incidents  # what it knew (a later step marks it as such)
    shown = [i for i in found if i.public][:MAX_SHOWN]
    request.app.state.status_seen = _Seen(now, shown)
    return shown


def _components(incidents: list[Incident]) -> list[tuple[Component, ComponentState]]:
    return component_states(incidents)


async def status_json(request: Request) -> Response:
    incidents = await public_incidents(request)
    return json_response(
        Status(
            components=[StatusComponent(name=c, state=s) for c, s in _components(incidents)],
            incidents=[status_view(i) for i in incidents],
        ),
        headers={"Cache-Control": "no-cache"},
    )


_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0 auto;padding:1rem;max-width:40rem;
color:#111;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}
ul.c{list-style:none;padding:0}ul.c li{display:flex;justify-content:space-between;
padding:.5rem 0;border-bottom:1px solid #ccc}
.operational{color:#0a5d1a}.degraded{color:#8a4b00}.outage{color:#a30000}
article{border:1px solid #bbb;border-radius:.3rem;padding:.5rem 1rem;margin:1rem 0}
ol{padding-left:1.2rem}time{color:#444;font-size:.9rem}p{overflow-wrap:anywhere;
white-space:pre-wrap;margin:.2rem 0 .6rem}
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _article(i: Incident) -> str:
    state = "Resolved" if i.state == "resolved" else "Open"
    items = "".join(
        f'<li><time datetime="{rfc3339(u.at_ms)}">{rfc3339(u.at_ms)}</time><p>{_e(u.text)}</p></li>'
        for u in reversed(i.updates)
    )
    where = f" in {_e(i.region)}" if i.region else ""
    return (
        f'<article id="{_e(i.id)}"><h3>{state}: {_e(i.component)}, {_e(i.severity)}{where}</h3>'
        f"<p>Started {rfc3339(i.started_ms)}"
        + (f", resolved {rfc3339(i.resolved_ms)}" if i.resolved_ms is not None else "")
        + f"</p><ol reversed>{items}</ol></article>"
    )


def render_html(incidents: list[Incident], now_ms: int) -> str:
    comps = "".join(
        f'<li><span>{_e(c)}</span><strong class="{s}">{s}</strong></li>'
        for c, s in _components(incidents)
    )
    current = [i for i in incidents if i.state == "open"]
    past = [i for i in incidents if i.state != "open"]
    body = "".join(_article(i) for i in current) or "<p>No open incident.</p>"
    recent = "".join(_article(i) for i in past) or "<p>None in the last 14 days.</p>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="refresh" content="60">'
        '<link rel="alternate" type="application/atom+xml" href="/status.atom">'
        f"<title>pinrelay status</title><style>{_STYLE}</style></head><body>"
        f"<main><h1>pinrelay status</h1><p>As of {rfc3339(now_ms)}</p>"
        f'<h2>Components</h2><ul class="c">{comps}</ul>'
        f"<h2>Current incidents</h2>{body}<h2>Recent incidents</h2>{recent}"
        '<p><a href="/status.json">JSON</a> · <a href="/status.atom">Atom feed</a></p>'
        "</main></body></html>\n"
    )


async def status_html(request: Request) -> Response:
    incidents = await public_incidents(request)
    page = render_html(incidents, int(relay_of(request).clock() * 1000))
    return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)


def _x(text: str) -> str:
    """``text`` with what XML 1.0 cannot hold replaced (ElementTree escapes the rest)."""
    return _NOT_XML.sub("\ufffd", text)


_ATOM = "http://www.w3.org/2005/Atom"
ET.register_namespace("", _ATOM)


def render_atom(incidents: list[Incident], now_ms: int) -> bytes:
    """An Atom feed (RFC 4287): an entry per update of each incident, newest first."""

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, f"{{{_ATOM}}}{tag}", attrs)
        if text is not None:
            el.text = _x(text)
        return el

    entries: list[tuple[int, str, Incident, int]] = []
    for i in incidents:
        for n, u in enumerate(i.updates):
            entries.append((u.at_ms, f"{i.id}.{n}", i, n))
    entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
    feed = ET.Element(f"{{{_ATOM}}}feed")
    sub(feed, "title", "pinrelay status")
    sub(feed, "id", "urn:pinrelay:status")
    sub(feed, "updated", rfc3339(entries[0][0] if entries else now_ms))
    sub(feed, "link", href="/status", rel="alternate", type="text/html")
    author = sub(feed, "author")
    sub(author, "name", "pinrelay operators")
    for at_ms, _, i, n in entries:
        u = i.updates[n]
        last = i.state == "resolved" and n == len(i.updates) - 1
        what = "resolved" if last else ("opened" if n == 0 else "update")
        entry = sub(feed, "entry")
        sub(entry, "title", f"{i.component} {i.severity} ({what}): {u.text[:80]}")
        sub(entry, "id", f"urn:pinrelay:incident:{i.id}:{n}")
        sub(entry, "updated", rfc3339(at_ms))
        sub(entry, "link", href=f"/status#{i.id}", rel="alternate", type="text/html")
        sub(entry, "content", u.text, type="text")
    out: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return out


async def status_atom(request: Request) -> Response:
    incidents = await public_incidents(request)
    body = render_atom(incidents, int(relay_of(request).clock() * 1000))
    return Response(body, media_type="application/atom+xml; charset=utf-8", headers=_HEADERS)


routes = [
    Route("/status", status_html, methods=["GET"]),
    Route("/status.json", status_json, methods=["GET"]),
    Route("/status.atom", status_atom, methods=["GET"]),
]
