"""The status page (``/status``, issue 16) in Debian's chromium: with and without an
open incident, at a phone's width and a desktop's, with JavaScript off and on.

Off, it shows everything, reloads itself (a meta refresh inside ``<noscript>``)
and its first link stops that; it needs no horizontal scroll at 375 px, shows 90
day marks per component with text alternatives and a resolved incident's report
link.  On, its first control is the button that pauses the refresh, and axe-core
finds no serious or critical violation at all, refreshing or paused (nothing is
allowed: DECISIONS 60).  On a relay refreshing every 5 s (``--status-refresh``),
an incident opened after the page loaded shows without a reload (focus and open
details kept); paused, one opened does not show within a period, a reload
shows it; the same without scripts through the meta refresh and its link.

The relay starts on a store seeded with incidents of past days (what an API call
cannot backdate), so the day marks show outages and degraded days.

Artefacts (the test prints the folder): ``test-artifacts/web/status/`` holds
``calm-375px.png``, ``calm-desktop.png``, ``incident-375px.png`` and
``incident-desktop.png`` (whole pages, without scripts), and the same names ending
``-script.png`` (the top of the page with its script: the pause button).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Locator, Page, expect

from pinrelay.core.incidents import Component, Severity, open_incident, resolve
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import scaled, wait_until
from tests.conftest import RelayFactory
from tests.web.test_messenger import no_horizontal_scroll, serious

NewContext = Callable[..., BrowserContext]
DAY_MS, H = 86_400_000, 3_600_000
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1100, "height": 900}
#: Past incidents: (component, severity, days ago, hours long).
PAST: list[tuple[Component, Severity, int, int]] = [
    ("cluster", "critical", 75, 1),
    ("store", "critical", 40, 2),
    ("delivery", "major", 10, 5),
    ("links", "minor", 3, 1),
]


def seed(db: Path) -> None:
    """Store resolved incidents of past days in ``db`` before its relay starts."""

    async def put() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            now = int(time.time() * 1000)
            for n, (component, severity, ago, hours) in enumerate(PAST, 1):
                start = now - ago * DAY_MS
                opened = open_incident(
                    f"I{n:012d}", component, severity, f"{component} trouble", start
                )
                assert await store.put_incident(opened)
                assert await store.put_incident(resolve(opened, "Fixed", start + hours * H))
        finally:
            await store.close()

    # Playwright's sync API holds an event loop on this thread: another thread's.
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(put())
        except BaseException as exc:  # re-raised on the test's thread
            failed.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and not failed, failed


def check_page(page: Page) -> None:
    """What every view of the page must show, with JavaScript off: all of it, a meta
    refresh (inside ``<noscript>``) and the link that stops it first, no button."""
    expect(page.get_by_role("heading", name="pinrelay status", level=1)).to_be_visible()
    meta = page.locator("noscript meta[http-equiv=refresh]")
    assert meta.get_attribute("content") == "60"
    assert page.get_by_role("link").first.text_content() == "Stop refreshing"
    expect(page.get_by_role("button")).to_have_count(0)
    marks = page.get_by_role("img")
    expect(marks).to_have_count(4)
    for n, name in enumerate(("store", "cluster", "links", "delivery")):
        label = marks.nth(n).get_attribute("aria-label") or ""
        assert label.startswith(f"{name}, the last 90 days: ") and "% uptime" in label, label
        assert marks.nth(n).locator("rect").count() == 90
    store_label = marks.nth(0).get_attribute("aria-label") or ""
    assert "0 days with an outage" not in store_label, store_label  # 40 days ago
    # Every day mark has its own text (a title: the day, its state, its uptime).
    title = page.locator("svg rect title").first.text_content() or ""
    assert ": operational, 100 % up" in title or ": outage" in title, title
    expect(page.get_by_text("This relay cannot reach its store")).to_have_count(0)


def watch_errors(page: Page) -> list[str]:
    """Uncaught script errors and Content-Security-Policy violations of ``page``."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return errors


def pause_button(page: Page) -> Locator:
    return page.get_by_role("button", name="Pause automatic refresh")


def look(
    new_context: NewContext, url: str, out: Path, name: str, shown: Callable[[Page], None]
) -> None:
    """The page at a phone's width and a desktop's: with JavaScript off (checked,
    screenshot), then on: the pause button is its first control, and axe-core finds
    no serious or critical violation, refreshing or paused."""
    for size, viewport in (("375px", PHONE), ("desktop", DESKTOP)):
        context = new_context(viewport=viewport, java_script_enabled=False)
        page = context.new_page()
        page.goto(f"{url}/status")
        check_page(page)
        shown(page)
        assert no_horizontal_scroll(page), f"{name} at {size} scrolls sideways"
        page.screenshot(path=out / f"{name}-{size}.png", full_page=True)
        context.close()
        context = new_context(viewport=viewport)
        page = context.new_page()
        errors = watch_errors(page)
        page.goto(f"{url}/status")
        shown(page)
        # With scripting on, the meta refresh is inert text inside <noscript>.
        assert page.locator("meta[http-equiv=refresh]").count() == 0
        button = pause_button(page)
        expect(button).to_have_attribute("aria-pressed", "false")
        page.keyboard.press("Tab")
        expect(button).to_be_focused()
        expect(page.get_by_text("This page refreshes itself every minute.")).to_be_visible()
        assert serious(page) == [], f"{name} at {size}"
        assert no_horizontal_scroll(page), f"{name} at {size} scrolls sideways (script on)"
        page.screenshot(path=out / f"{name}-{size}-script.png")  # the top, with the button
        page.keyboard.press("Enter")  # pauses
        expect(button).to_have_attribute("aria-pressed", "true")
        expect(page).to_have_url(f"{url}/status?refresh=off")
        expect(page.get_by_text("Automatic refresh is paused.")).to_be_visible()
        assert serious(page) == [], f"{name} at {size}, paused"
        page.reload()  # the URL keeps the choice
        shown(page)
        expect(pause_button(page)).to_have_attribute("aria-pressed", "true")
        pause_button(page).click()
        expect(page).to_have_url(f"{url}/status")
        expect(pause_button(page)).to_have_attribute("aria-pressed", "false")
        assert errors == [], errors
        context.close()


def test_the_status_page_with_and_without_an_incident(
    tmp_path: Path, relay_factory: RelayFactory, new_context: NewContext, artifacts: Path
) -> None:
    out = artifacts / "status"
    out.mkdir(parents=True, exist_ok=True)
    print(f"status page screenshots in {out}")
    seed(tmp_path / "status" / "pinrelay.db")
    relay = relay_factory("status")

    def calm(page: Page) -> None:
        expect(page.get_by_text("No open incident.")).to_be_visible()
        expect(page.get_by_role("heading", name="Resolved: delivery, major")).to_be_visible()
        expect(page.locator("strong.operational")).to_have_count(4)

    look(new_context, relay.url, out, "calm", calm)

    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:

        def made(r: httpx.Response, status: int) -> Any:
            assert r.status_code == status, r.text
            return r.json()

        body = {"component": "store", "severity": "critical", "region": "eu-west"}
        down = made(admin.post("/v1/incidents", json={**body, "text": "Writes fail"}), 201)
        made(admin.post(f"/v1/incidents/{down['id']}/updates", json={"text": "Disk full"}), 201)
        slow = {"component": "links", "severity": "minor", "text": "Links drop and return"}
        done = made(admin.post("/v1/incidents", json=slow), 201)
        made(admin.post(f"/v1/incidents/{done['id']}/resolve", json={"text": "Stable"}), 200)

    def incident(page: Page) -> None:
        expect(page.get_by_role("heading", name="Open: store, critical in eu-west")).to_be_visible()
        expect(page.get_by_text("Disk full")).to_be_visible()
        expect(page.locator("strong.outage")).to_have_text("outage")
        report = page.get_by_role("link", name="Incident report")
        expect(report.first).to_have_attribute("href", f"/v1/incidents/{done['id']}/report")
        expect(page.locator(f"#{done['id']}")).to_contain_text("needs the relay's admin key")
        expect(page.locator(f"#{down['id']}").get_by_role("link")).to_have_count(0)

    look(new_context, relay.url, out, "incident", incident)
    for name in ("calm", "incident"):
        for size in ("375px", "desktop"):
            assert (out / f"{name}-{size}.png").stat().st_size > 10_000
            assert (out / f"{name}-{size}-script.png").stat().st_size > 10_000


#: The refresh period of the relay of the refresh test (--status-refresh: 5 at least).
EVERY_S = 5


def stays_absent(page: Page, target: Locator, seconds: float, what: str) -> None:
    """``target`` does not show on ``page`` at any poll until ``seconds`` (scaled)
    have passed: the negative of expect(...).to_be_visible()."""
    deadline = time.monotonic() + scaled(seconds)
    while True:
        assert target.count() == 0, f"{what} showed before the deadline"
        left = deadline - time.monotonic()
        if left <= 0:
            return
        page.wait_for_timeout(min(250.0, left * 1000))


def test_the_page_refreshes_itself_and_its_button_pauses_it(
    relay_factory: RelayFactory, new_context: NewContext
) -> None:
    relay = relay_factory("refresh", extra=["--status-refresh", str(EVERY_S)])
    admin = httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30)

    def open_one(component: str, text: str) -> str:
        body = {"component": component, "severity": "minor", "text": text}
        r = admin.post("/v1/incidents", json=body)
        assert r.status_code == 201, r.text
        made: str = r.json()["id"]
        # The relay serves it already: a page that refreshes would show it.
        wait_until(lambda: made in httpx.get(f"{relay.url}/status").text, 10, message=made)
        return made

    def heading(page: Page, component: str) -> Locator:
        return page.get_by_role("heading", name=f"Open: {component}, minor")

    with admin:
        # With scripts: the content is swapped in, the page is not reloaded (its
        # marker survives), and the focus stays on the button.
        page = new_context(viewport=PHONE).new_page()
        errors = watch_errors(page)
        page.goto(f"{relay.url}/status")
        expect(
            page.get_by_text(f"This page refreshes itself every {EVERY_S} seconds.")
        ).to_be_visible()
        page.evaluate("() => { window.loadedOnce = true; }")
        page.keyboard.press("Tab")
        expect(pause_button(page)).to_be_focused()
        open_one("links", "Links drop")
        expect(heading(page, "links")).to_be_visible()  # 15 s: up to 3 periods
        assert page.evaluate("() => window.loadedOnce === true"), "the page was reloaded"
        expect(pause_button(page)).to_be_focused()

        # Paused: an incident opened now does not show within a period, a reload
        # shows it, and the page stays paused (the URL keeps it).
        page.keyboard.press("Enter")
        expect(page).to_have_url(f"{relay.url}/status?refresh=off")
        store = open_one("store", "Writes slow")
        stays_absent(page, heading(page, "store"), EVERY_S + 1, "a paused page's incident")
        page.reload()
        expect(heading(page, "store")).to_be_visible()
        expect(pause_button(page)).to_have_attribute("aria-pressed", "true")

        # Resumed: it refreshes at once and on; an open details stays open, and the
        # focus stays where it was.
        page.evaluate("() => { window.loadedOnce = true; }")
        pause_button(page).click()
        expect(page).to_have_url(f"{relay.url}/status")
        summary = page.locator("#days-links summary")
        summary.click()
        expect(summary).to_be_focused()
        r = admin.post(f"/v1/incidents/{store}/resolve", json={"text": "Fast again"})
        assert r.status_code == 200, r.text
        expect(page.get_by_role("heading", name="Resolved: store, minor")).to_be_visible()
        assert page.evaluate("() => window.loadedOnce === true"), "the page was reloaded"
        expect(page.locator("#days-links")).to_have_attribute("open", "")
        expect(page.locator("#days-links summary")).to_be_focused()
        assert serious(page) == []
        assert errors == [], errors
        live = page

        # Without scripts: the meta refresh reloads the page, its link stops that.
        page = new_context(viewport=PHONE, java_script_enabled=False).new_page()
        page.goto(f"{relay.url}/status")
        expect(page.get_by_role("heading", name="Resolved: store, minor")).to_be_visible()
        open_one("delivery", "Slow deliveries")
        expect(heading(page, "delivery")).to_be_visible()
        page.get_by_role("link", name="Stop refreshing").click()
        expect(page).to_have_url(f"{relay.url}/status?refresh=off")
        assert page.locator("noscript meta[http-equiv=refresh]").count() == 0
        open_one("cluster", "Nodes away")
        stays_absent(page, heading(page, "cluster"), EVERY_S + 1, "a stopped page's incident")
        page.reload()
        expect(heading(page, "cluster")).to_be_visible()
        expect(page.get_by_role("heading", name="Open: links, minor")).to_be_visible()

    # The relay gone: the page says its refresh failed and keeps what it showed.
    relay.stop()
    expect(live.get_by_text("The last refresh failed; the page tries again")).to_be_visible()
    expect(live.get_by_role("heading", name="Open: cluster, minor")).to_be_visible()
    assert live.evaluate("() => window.loadedOnce === true"), "the page was reloaded"
