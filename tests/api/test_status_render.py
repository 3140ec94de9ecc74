"""The status pages' renderers without a relay (api/status.py, api/status_page.py):
what an operator writes is escaped in the HTML page and the Atom feed, characters
XML 1.0 cannot hold are replaced; the page has 90 day marks per component with text
alternatives, links a resolved incident's report, says when the relay cannot
reach its store, and refreshes itself (a script allowed by its hash, a pause button;
without scripts a meta refresh inside ``<noscript>``); ``serve --status-refresh``
refuses a period out of 5-3600 s."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from hashlib import sha256
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pinrelay.api.status import HEADERS, render_atom, snapshot, status_of
from pinrelay.api.status_page import SCRIPT, SCRIPT_HASH, Snapshot, render_html
from pinrelay.core.incidents import Incident, add_update, component_states, open_incident, resolve
from pinrelay.core.uptime import DAY_MS, uptimes
from pinrelay.incident_board import IncidentBoard
from pinrelay.store.sqlite import SqliteStore
from tests.test_cli import one_line_error, run

NOW = 1_800_000_000_000
ATOM = "{http://www.w3.org/2005/Atom}"
TEXT = '<i>x</i> & "y" \ufffe\uffff'


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.data: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.data.append(data)


def snap(
    incidents: list[Incident], as_of_ms: int | None = None, stale_since_ms: int | None = None
) -> Snapshot:
    return Snapshot(
        incidents=incidents,
        states=component_states(incidents),
        uptime=uptimes(incidents, NOW + 2),
        now_ms=NOW + 2,
        as_of_ms=as_of_ms,
        stale_since_ms=stale_since_ms,
    )


def parse(page: str) -> _Text:
    parsed = _Text()
    parsed.feed(page)
    parsed.close()
    return parsed


def test_texts_are_escaped_and_fit_for_xml() -> None:
    i = add_update(open_incident("I000000000001", "store", "critical", TEXT, NOW), "b", NOW + 1)
    done = resolve(open_incident("I000000000002", "links", "minor", "a", NOW - 5), None, NOW)
    parsed = parse(render_html(snap([i, done])))
    assert TEXT in "".join(parsed.data) and "i" not in parsed.tags
    assert parsed.tags.count("script") == 1  # the page's own (below)
    feed = ET.fromstring(render_atom([i, done], NOW + 2))  # noqa: S314 (made here)
    entries = feed.findall(f"{ATOM}entry")
    ids = [e.findtext(f"{ATOM}id") for e in entries]
    assert ids == [
        "urn:pinrelay:incident:I000000000001:1",
        "urn:pinrelay:incident:I000000000001:0",
        "urn:pinrelay:incident:I000000000002:0",
    ]
    assert entries[1].findtext(f"{ATOM}content") == '<i>x</i> & "y" \ufffd\ufffd'
    empty = ET.fromstring(render_atom([], NOW))  # noqa: S314
    assert empty.findall(f"{ATOM}entry") == [] and empty.findtext(f"{ATOM}updated")


def test_day_marks_have_text_alternatives_and_a_resolved_incident_its_report() -> None:
    day = NOW // DAY_MS * DAY_MS - DAY_MS  # yesterday's midnight
    out = resolve(
        open_incident("I000000000003", "store", "critical", "Down", day), "Up", day + 3_600_000
    )
    slow = open_incident("I000000000004", "delivery", "minor", "Slow", NOW - 60_000)
    parsed = parse(render_html(snap([slow, out])))
    svgs = [a for t, a in parsed.attrs if t == "svg"]
    assert len(svgs) == 4 and all(a["role"] == "img" for a in svgs)
    assert svgs[0]["aria-label"] == (
        "store, the last 90 days: 99.95 % uptime; 1 day with an outage, 0 days degraded,"
        " 89 days operational"
    )
    assert svgs[3]["aria-label"] is not None and "1 day degraded" in svgs[3]["aria-label"]
    assert parsed.tags.count("rect") == 4 * 90
    text = "".join(parsed.data)
    assert "2027-01-14: outage, 95.83 % up" in text  # 23 of 24 hours
    assert "2027-01-15: degraded, 100 % up" in text
    links = [a["href"] for t, a in parsed.attrs if t == "a"]
    assert "/v1/incidents/I000000000003/report" in links
    assert "/v1/incidents/I000000000004/report" not in links  # open: no report yet
    assert "admin key" in text and "cannot reach its store" not in text


def test_a_stale_relay_says_so_and_since_when() -> None:
    page = render_html(snap([], as_of_ms=NOW - 30_000, stale_since_ms=NOW - 29_000))
    text = "".join(parse(page).data)
    assert "This relay cannot reach its store since 2027-01-15T07:59:31.000Z" in text
    assert "what follows may be out of date" in text and "2027-01-15T07:59:30.000Z" in text


async def test_the_json_comes_from_the_board_and_is_stale_when_it_is(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        clock = [NOW / 1000]
        board = IncidentBoard(store, lambda: clock[0])
        mine = open_incident("I000000000005", "links", "critical", "x", NOW - 600_000)
        theirs = open_incident("I000000000006", "store", "minor", "x", NOW, tenants=["T1"])
        for i in (mine, theirs):
            assert await store.put_incident(i)
        await board.refresh()
        body = status_of(snapshot(board, NOW))
        assert [i.id for i in body.incidents] == [mine.id]  # the tenant's is not public
        assert [(c.name, c.state) for c in body.components][:3] == [
            ("store", "operational"),
            ("cluster", "operational"),
            ("links", "outage"),
        ]
        links = body.components[2]
        assert len(links.days) == 90 and links.days[-1].state == "outage"
        assert links.uptime_90d < 100 and body.components[0].uptime_90d == 100.0
        assert (body.stale, body.as_of) == (False, "2027-01-15T08:00:00.000Z")
        await store.close()  # the store away: the board keeps what it knew, stale
        clock[0] += 5
        assert not await board.poll()
        body = status_of(snapshot(board, NOW + 5000))
        assert (body.stale, body.as_of) == (True, "2027-01-15T08:00:00.000Z")
        assert [i.id for i in body.incidents] == [mine.id]
        assert board.stale_since == NOW / 1000 + 5
    finally:
        await store.close()


def test_the_page_refreshes_itself_unless_paused_with_or_without_scripts() -> None:
    def refresh(page: _Text) -> list[str | None]:
        return [a.get("content") for t, a in page.attrs if a.get("http-equiv") == "refresh"]

    def links(page: _Text) -> list[str | None]:
        return [a.get("href") for t, a in page.attrs if t == "a"]

    def button(page: _Text) -> dict[str, str | None]:
        [found] = [a for t, a in page.attrs if t == "button"]
        return found

    on_page = render_html(snap([]))
    on, off = parse(on_page), parse(render_html(snap([]), refresh=False))
    # Without scripts: a meta refresh, only inside <noscript> (inert text with
    # scripts on), and a link first that stops it; the paused page links back.
    assert refresh(on) == ["60"] and links(on)[0] == "/status?refresh=off"
    assert '<noscript><meta http-equiv="refresh" content="60"></noscript>' in on_page
    assert on_page.count("http-equiv") == 1
    assert refresh(off) == [] and links(off)[0] == "/status"
    # With scripts: the button (hidden until the script shows it) is the first
    # control, pressed when paused; the one script is the one the policy allows.
    assert (button(on)["aria-pressed"], button(off)["aria-pressed"]) == ("false", "true")
    assert "hidden" in button(on) and button(on)["data-every"] == "60"
    assert on.tags.index("button") < on.tags.index("a")
    assert on.tags.count("script") == 1 and f"<script>{SCRIPT}</script>" in on_page
    digest = base64.b64encode(sha256(SCRIPT.encode()).digest()).decode()
    policy = dict(d.strip().split(" ", 1) for d in HEADERS["Content-Security-Policy"].split(";"))
    assert policy["script-src"] == f"'{SCRIPT_HASH}'" == f"'sha256-{digest}'"
    assert policy["connect-src"] == "'self'" and policy["default-src"] == "'none'"
    assert "This page refreshes itself every minute." in "".join(on.data)
    assert "Automatic refresh is paused." in "".join(off.data)
    # --status-refresh: the period in the meta refresh, the button and the words.
    fast = render_html(snap([]), every_s=5)
    assert refresh(parse(fast)) == ["5"] and 'data-every="5"' in fast
    assert "every 5 seconds." in fast
    assert "every 2 minutes." in render_html(snap([]), every_s=120)


@pytest.mark.parametrize("value", ["4", "3601"])
def test_serve_refuses_a_refresh_period_out_of_bounds(tmp_path: Path, value: str) -> None:
    r = run("serve", "--data", str(tmp_path / "d"), "--status-refresh", value, timeout=30)
    one_line_error(r, "--status-refresh")
