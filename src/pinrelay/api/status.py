"""The public status page: ``/status``, ``/status.json``, ``/status.atom``
(PROTOCOL "Incidents and status").

No key: every relay serves the state of the components (core/incidents.py
COMPONENTS), their uptime over the last 90 UTC days (core/uptime.py) and the public
incidents (those that name no tenant) open now or resolved in the last 14 days,
newest first.  The HTML page (api/status_page.py) needs no script, refreshes
itself every minute (``--status-refresh``; ``?refresh=off``: paused) and fits a
phone's width; every text an operator wrote is escaped (HTML and XML), and
characters XML 1.0 cannot carry are replaced.

What the pages show is the relay's incident board (incident_board.py): it reads
the store every second, so a crowd reloading them costs the store nothing more, and
learns this relay's own changes at once.  While the store cannot be read the board
keeps what it knew and is ``stale``: the pages serve that, and say so
(``"stale": true`` and ``as_of``, the last read, in JSON; a notice in HTML; the
feed's ``updated`` stays that of its newest entry).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import relay_of
from pinrelay.api.incidents import status_view
from pinrelay.api.schemas import Status, StatusComponent, StatusDay
from pinrelay.api.status_page import SCRIPT_HASH, Snapshot, day_of, render_html
from pinrelay.core.incidents import Incident, component_states
from pinrelay.core.timefmt import rfc3339
from pinrelay.core.uptime import uptimes
from pinrelay.incident_board import IncidentBoard

#: Most incidents shown.
MAX_SHOWN = 50
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: The page's own script only (by its hash), which may fetch the page again; its icon
#: is the messenger's (/app/icon.svg).
_POLICY = (
    f"default-src 'none'; script-src '{SCRIPT_HASH}'; connect-src 'self'; img-src 'self';"
    " style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def snapshot(board: IncidentBoard, now_ms: int) -> Snapshot:
    """The board's public incidents, states and uptime as of ``now_ms``."""
    history = [i for i in board.history() if i.public]
    recent = [i for i in board.incidents() if i.public]
    return Snapshot(
        incidents=recent[:MAX_SHOWN],
        states=component_states(recent),
        uptime=uptimes(history, now_ms),
        now_ms=now_ms,
        as_of_ms=_ms(board.read_at),
        stale_since_ms=_ms(board.stale_since),
    )


def _snapshot(request: Request) -> Snapshot:
    relay = relay_of(request)
    return snapshot(relay.incidents, int(relay.clock() * 1000))


def _cached(request: Request, view: str, make: Callable[[Snapshot], bytes | str]) -> bytes:
    """``view`` made from a snapshot at most once per second and board state: a
    crowd reloading the pages costs a relay one rendering a second of each (the 90
    day marks take a few ms), and a change shows at once."""
    relay = relay_of(request)
    board = relay.incidents
    key = (
        int(relay.clock()),
        board.read_at,
        board.stale_since,
        tuple((i.id, i.rev) for i in board.history()),
    )
    cache: dict[str, tuple[object, bytes]] | None = getattr(request.app.state, "status_views", None)
    if cache is None:
        cache = request.app.state.status_views = {}
    found = cache.get(view)
    if found is not None and found[0] == key:
        return found[1]
    made = make(_snapshot(request))
    body = made.encode() if isinstance(made, str) else made
    cache[view] = (key, body)
    return body


def status_of(snap: Snapshot) -> Status:
    """The ``/status.json`` body."""
    return Status(
        components=[
            StatusComponent(
                name=c,
                state=s,
                uptime_90d=u.uptime,
                days=[
                    StatusDay(date=day_of(d.start_ms), state=d.state, uptime=d.uptime)
                    for d in u.days
                ],
            )
            for (c, s), u in zip(snap.states, snap.uptime, strict=True)
        ],
        incidents=[status_view(i) for i in snap.incidents],
        stale=snap.stale,
        as_of=None if snap.as_of_ms is None else rfc3339(snap.as_of_ms),
    )


_json = msgspec.json.Encoder()


async def status_json(request: Request) -> Response:
    body = _cached(request, "json", lambda snap: _json.encode(status_of(snap)))
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


async def status_html(request: Request) -> Response:
    refresh = request.query_params.get("refresh") != "off"
    every_s = relay_of(request).config.status_refresh_s
    page = _cached(
        request, f"html-{refresh}", lambda snap: render_html(snap, refresh=refresh, every_s=every_s)
    )
    return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)


def _x(text: str) -> str:
    """``text`` with what XML 1.0 cannot hold replaced (ElementTree escapes the rest)."""
    return _NOT_XML.sub("\ufffd", text)


_ATOM = "http://www.w3.org/2005/Atom"
ET.register_namespace("", _ATOM)


def render_atom(incidents: list[Incident], now_ms: int) -> bytes:
    """An Atom feed (RFC 4287): an entry per update of each incident, newest first;
    the feed's ``updated`` is its newest entry's (``now_ms`` with none)."""

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
    # With no entry, the feed was last updated when the board last read the store:
    # a stale relay does not claim news it cannot have.
    body = _cached(
        request, "atom", lambda snap: render_atom(snap.incidents, snap.as_of_ms or snap.now_ms)
    )
    return Response(body, media_type="application/atom+xml; charset=utf-8", headers=HEADERS)


routes = [
    Route("/status", status_html, methods=["GET"]),
    Route("/status.json", status_json, methods=["GET"]),
    Route("/status.atom", status_atom, methods=["GET"]),
]
