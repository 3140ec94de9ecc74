"""The HTML of ``/status`` (PROTOCOL "Incidents and status"), and :class:`Snapshot`,
what every status view is made of (api/status.py takes it from the board).

The page needs no script (the relay's policy allows none), reloads itself every
minute unless asked not to (``?refresh=off``, linked first on the page), and fits a
phone's width.  Each component has a row of 90 day marks, an
inline SVG whose name (``aria-label``) sums it up, each mark with its ``title``
(the day, its state, its uptime), and the days that were not operational listed
as text too.  A relay that cannot read its store says so first.  Every text an
operator wrote is escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from pinrelay.core.incidents import Component, ComponentState, Incident
from pinrelay.core.timefmt import rfc3339
from pinrelay.core.uptime import ComponentUptime, Day


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the status pages show, taken from the board at one instant."""

    #: The public incidents listed: open, or resolved in the last 14 days, newest first.
    incidents: list[Incident]
    #: Each component (COMPONENTS order) and its state, from the open public ones.
    states: list[tuple[Component, ComponentState]]
    #: Each component's last 90 days (COMPONENTS order), from the public incidents.
    uptime: list[ComponentUptime]
    now_ms: int
    #: When the board last read the store (None: not yet).
    as_of_ms: int | None = None
    #: Since when the store cannot be read (None: it can).
    stale_since_ms: int | None = None

    @property
    def stale(self) -> bool:
        return self.stale_since_ms is not None


def day_of(ms: int) -> str:
    """``YYYY-MM-DD`` (UTC)."""
    return rfc3339(ms)[:10]


#: A day mark's colour by state (3:1 or more against white, WCAG 1.4.11).
FILL: dict[ComponentState, str] = {
    "operational": "#2e7d32",
    "degraded": "#b35c00",
    "outage": "#b00020",
}
_MARK, _GAP, _HEIGHT = 6, 2, 28
_SWATCHES = "".join(f".sw-{state}{{background:{fill}}}" for state, fill in FILL.items())

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0 auto;padding:1rem;max-width:40rem;
color:#111;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem}h3{font-size:1rem;margin:0}
ul.c{list-style:none;padding:0;margin:0}ul.c>li{padding:.6rem 0;border-bottom:1px solid #ccc}
.row{display:flex;flex-wrap:wrap;justify-content:space-between;gap:0 .5rem}
.operational{color:#0a5d1a}.degraded{color:#8a4b00}.outage{color:#a30000}
svg.days{display:block;width:100%;height:1.75rem;margin:.3rem 0 .1rem}
.axis{display:flex;justify-content:space-between;gap:.5rem;font-size:.85rem;color:#444}
details{font-size:.9rem}details ul{margin:.2rem 0;padding-left:1.2rem}
.key{font-size:.9rem;color:#333}.sw{display:inline-block;width:.7rem;height:.7rem;
margin:0 .25rem 0 .6rem;vertical-align:-.05rem}
.stale{border:2px solid #a30000;background:#fff4f4;padding:.5rem .8rem;border-radius:.3rem}
article{border:1px solid #bbb;border-radius:.3rem;padding:.5rem 1rem;margin:1rem 0}
ol{padding-left:1.2rem}time{color:#444;font-size:.9rem}p{overflow-wrap:anywhere;
white-space:pre-wrap;margin:.2rem 0 .6rem}
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _time(ms: int) -> str:
    t = rfc3339(ms)
    return f'<time datetime="{t}">{t}</time>'


def _day_text(d: Day) -> str:
    return f"{day_of(d.start_ms)}: {d.state}, {d.uptime:g} % up"


def _count(n: int, one: str) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {one.replace('day', 'days')}"


def _uptime(c: Component, state: ComponentState, u: ComponentUptime) -> str:
    by = {s: sum(1 for d in u.days if d.state == s) for s in FILL}
    label = (
        f"{c}, the last {len(u.days)} days: {u.uptime:g} % uptime; "
        f"{_count(by['outage'], 'day with an outage')}, "
        f"{_count(by['degraded'], 'day degraded')}, "
        f"{_count(by['operational'], 'day operational')}"
    )
    width = len(u.days) * (_MARK + _GAP) - _GAP
    marks = "".join(
        f'<rect x="{n * (_MARK + _GAP)}" width="{_MARK}" height="{_HEIGHT}" '
        f'fill="{FILL[d.state]}"><title>{_day_text(d)}</title></rect>'
        for n, d in enumerate(u.days)
    )
    bad = [d for d in reversed(u.days) if d.state != "operational"]
    listed = (
        f"<details><summary>Days with incidents ({len(bad)})</summary><ul>"
        + "".join(f"<li>{_day_text(d)}</li>" for d in bad)
        + "</ul></details>"
        if bad
        else ""
    )
    return (
        f'<li><div class="row"><h3>{c}</h3><strong class="{state}">{state}</strong></div>'
        f'<svg class="days" role="img" aria-label="{_e(label)}" viewBox="0 0 {width} {_HEIGHT}"'
        f' preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">{marks}</svg>'
        f'<div class="axis"><span>{len(u.days)} days ago</span>'
        f"<span>{u.uptime:g} % uptime</span><span>today</span></div>{listed}</li>"
    )


def _article(i: Incident) -> str:
    state = "Resolved" if i.state == "resolved" else "Open"
    items = "".join(f"<li>{_time(u.at_ms)}<p>{_e(u.text)}</p></li>" for u in reversed(i.updates))
    where = f" in {_e(i.region)}" if i.region else ""
    report = (
        f'<p><a href="/v1/incidents/{_e(i.id)}/report">Incident report</a>'
        " (for operators: it needs the relay's admin key)</p>"
        if i.state == "resolved"
        else ""
    )
    return (
        f'<article id="{_e(i.id)}"><h3>{state}: {_e(i.component)}, {_e(i.severity)}{where}</h3>'
        f"<p>Started {_time(i.started_ms)}"
        + (f", resolved {_time(i.resolved_ms)}" if i.resolved_ms is not None else "")
        + f"</p><ol reversed>{items}</ol>{report}</article>"
    )


def _notice(snap: Snapshot) -> str:
    if snap.stale_since_ms is None:
        return ""
    last = "" if snap.as_of_ms is None else f" (its last read: {_time(snap.as_of_ms)})"
    return (
        f'<p class="stale" role="alert"><strong>This relay cannot reach its store since '
        f"{_time(snap.stale_since_ms)}; what follows may be out of date</strong>{last}.</p>"
    )


def _refresh(refresh: bool) -> tuple[str, str]:
    """The meta refresh, and the link that turns it off or on (WCAG 2.2.1: a person
    can stop a page that reloads by itself before it does; docs/DECISIONS.md 60)."""
    if not refresh:
        return "", (
            '<p class="key">This page does not reload itself: '
            '<a href="/status">reload it every minute</a>.</p>'
        )
    return '<meta http-equiv="refresh" content="60">', (
        '<p class="key">This page reloads itself every minute: '
        '<a href="/status?refresh=off">stop reloading</a>.</p>'
    )


def render_html(snap: Snapshot, *, refresh: bool = True) -> str:
    """The page; ``refresh``: it reloads itself every minute (``/status``), else
    not (``/status?refresh=off``)."""
    meta, switch = _refresh(refresh)
    comps = "".join(_uptime(c, s, u) for (c, s), u in zip(snap.states, snap.uptime, strict=True))
    key = "".join(f'<span class="sw sw-{state}"></span>{state}' for state in FILL)
    current = [i for i in snap.incidents if i.state == "open"]
    past = [i for i in snap.incidents if i.state != "open"]
    body = "".join(_article(i) for i in current) or "<p>No open incident.</p>"
    recent = "".join(_article(i) for i in past) or "<p>None in the last 14 days.</p>"
    as_of = snap.as_of_ms if snap.as_of_ms is not None else snap.now_ms
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}"
        '<link rel="alternate" type="application/atom+xml" href="/status.atom">'
        f"<title>pinrelay status</title><style>{_STYLE}{_SWATCHES}</style></head><body>"
        f"<main><h1>pinrelay status</h1>{switch}{_notice(snap)}<p>As of {_time(as_of)}</p>"
        f'<h2>Components</h2><ul class="c">{comps}</ul>'
        f'<p class="key">Uptime over the last 90 days (UTC): time in outage counts as'
        f" down, degraded time as up.<br>Each mark is a day:{key}</p>"
        f"<h2>Current incidents</h2>{body}<h2>Recent incidents</h2>{recent}"
        '<p><a href="/status.json">JSON</a> · <a href="/status.atom">Atom feed</a></p>'
        "</main></body></html>\n"
    )
