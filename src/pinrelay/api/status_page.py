"""The HTML of ``/status`` (PROTOCOL "Incidents and status"), and :class:`Snapshot`,
what every status view is made of (api/status.py takes it from the board).

The page is whole without a script and fits a phone's width.  It refreshes itself
every minute (``--status-refresh``): with scripts, its one small inline script
(allowed by its hash in the relay's policy) fetches the page and swaps its content
in, and a button, the page's first control, pauses and resumes that (``?refresh=off``
in the URL: the page starts paused); without scripts, a meta refresh inside
``<noscript>`` reloads it, and a link to ``?refresh=off`` stops that.  Each
component has a row of 90 day marks, an inline SVG whose name (``aria-label``)
sums it up, each mark with its ``title`` (the day, its state, its uptime), and the
days that were not operational listed as text too.  A relay that cannot read its
store says so first.  Every text an operator wrote is escaped.
"""

from __future__ import annotations

import base64
import hashlib
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
#pause{font:inherit;padding:.3rem .8rem;margin:.2rem 0}
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
        f'<details id="days-{c}"><summary>Days with incidents ({len(bad)})</summary><ul>'
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


#: The page's one script (its hash is in the relay's Content-Security-Policy, so no
#: other script runs): every ``data-every`` seconds it fetches the page and swaps its
#: ``#content`` in (open ``details``, the focused link and an unchanged stale notice
#: stay as they were); the button pauses and resumes that, the URL keeps the choice
#: (``?refresh=off``). Without scripts, ``<noscript>`` holds a meta refresh and a link.
SCRIPT = """(() => {
  const button = document.getElementById("pause"), state = document.getElementById("refresh-state");
  const every = 1000 * Number(button.dataset.every);
  let timer = 0, run = 0;
  const paused = () => button.getAttribute("aria-pressed") === "true";
  const show = () => { state.textContent = paused() ? state.dataset.off : state.dataset.on; };
  const swap = (page) => {
    const old = document.getElementById("content"), fresh = page.getElementById("content");
    if (!old || !fresh) throw new Error("no #content");
    const open = new Set([...old.querySelectorAll("details[open]")].map((d) => d.id));
    for (const d of fresh.querySelectorAll("details")) d.open = open.has(d.id);
    const was = old.querySelector(".stale"), is = fresh.querySelector(".stale");
    if (was && is && was.textContent === is.textContent) is.replaceWith(was);
    const at = [...old.querySelectorAll("a, summary")].indexOf(document.activeElement);
    old.replaceWith(fresh);
    if (at >= 0) fresh.querySelectorAll("a, summary")[at]?.focus();
  };
  const plan = () => {
    clearTimeout(timer);
    if (!paused()) timer = setTimeout(refresh, every);
  };
  const refresh = async () => {
    const mine = ++run;
    try {
      const answer = await fetch(location.pathname, {cache: "no-store"});
      if (!answer.ok) throw new Error(String(answer.status));
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      if (mine !== run || paused()) return;
      swap(page);
      show();
    } catch (e) {
      if (mine === run) state.textContent = state.dataset.failed;
    }
    if (mine === run) plan();
  };
  button.addEventListener("click", () => {
    const pause = !paused();
    run++;
    button.setAttribute("aria-pressed", String(pause));
    history.replaceState(null, "", (pause ? "?refresh=off" : location.pathname) + location.hash);
    show();
    if (pause) clearTimeout(timer);
    else refresh();
  });
  button.hidden = false;
  plan();
})();"""
#: For the Content-Security-Policy's ``script-src``.
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()


def _period(every_s: int) -> str:
    if every_s == 60:
        return "every minute"
    if every_s % 60 == 0:
        return f"every {every_s // 60} minutes"
    return f"every {every_s} seconds"


def _refresh(refresh: bool, every_s: int) -> tuple[str, str]:
    """What the head holds for a browser without scripts (a meta refresh), and the
    switch: a button for the script, a link without it (WCAG 2.2.1 and 2.2.2: a
    person can pause a page that refreshes itself before it does; DECISIONS 60)."""
    period = _period(every_s)
    on, off = f"This page refreshes itself {period}.", "Automatic refresh is paused."
    link = (
        '<a href="/status?refresh=off">Stop refreshing</a>'
        if refresh
        else f'<a href="/status">Refresh {period}</a>'
    )
    switch = (
        f'<p class="key"><span id="refresh-state" data-on="{on}" data-off="{off}"'
        f' data-failed="The last refresh failed; the page tries again {period}.">'
        f"{on if refresh else off}</span> "
        f'<button type="button" id="pause" aria-pressed="{"false" if refresh else "true"}"'
        f' data-every="{every_s}" hidden>Pause automatic refresh</button>'
        f"<noscript> {link}</noscript></p>"
    )
    meta = f'<noscript><meta http-equiv="refresh" content="{every_s}"></noscript>'
    return (meta if refresh else ""), switch


def render_html(snap: Snapshot, *, refresh: bool = True, every_s: int = 60) -> str:
    """The page; ``refresh``: it refreshes itself every ``every_s`` seconds
    (``/status``), else it starts paused (``/status?refresh=off``)."""
    meta, switch = _refresh(refresh, every_s)
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
        '<link rel="icon" href="/app/icon.svg" type="image/svg+xml">'
        f"<title>pinrelay status</title><style>{_STYLE}{_SWATCHES}</style></head><body>"
        f'<main><h1>pinrelay status</h1>{switch}<div id="content">'
        f"{_notice(snap)}<p>As of {_time(as_of)}</p>"
        f'<h2>Components</h2><ul class="c">{comps}</ul>'
        f'<p class="key">Uptime over the last 90 days (UTC): time in outage counts as'
        f" down, degraded time as up.<br>Each mark is a day:{key}</p>"
        f"<h2>Current incidents</h2>{body}<h2>Recent incidents</h2>{recent}"
        '<p><a href="/status.json">JSON</a> · <a href="/status.atom">Atom feed</a></p>'
        f"</div></main><script>{SCRIPT}</script></body></html>\n"
    )
