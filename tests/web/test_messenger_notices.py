"""What the web messenger shows besides chat (issue 13 with issue 17's incidents): an
application's push lands in Notifications, read as text, with no message box; an
incident that concerns the device is a banner at once, its resolution replaces it,
and a dismissed one stays dismissed when the next hello tells of it again.

Artefact: ``test-artifacts/web/notices.png`` (Notifications open, an incident's banner).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext, expect

from tests.relayproc import RelayProc
from tests.web.test_messenger import App, serious

NewContext = Callable[..., BrowserContext]


def test_pushes_and_incidents_in_the_page(
    relay: RelayProc, new_context: NewContext, artifacts: Path
) -> None:
    device = relay.create_device("web")
    pin = device["pin"]
    app = App(new_context(viewport={"width": 1100, "height": 760}), relay)
    page = app.page
    app.link_with_token(pin, device["token"])
    admin = httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30)
    with admin:
        for data in ({"title": "Build 812", "text": "green"}, {"n": 4}):
            r = admin.post(f"/v1/devices/{pin}/messages", json={"data": data, "ttl": 3600})
            assert r.status_code in (201, 202), r.text
        entry = page.locator("#contacts button[data-notices]")
        expect(entry.locator(".badge")).to_have_attribute("data-unread", "2")
        entry.click()
        expect(page.locator("#conversation-title")).to_have_text("Notifications")
        assert app.texts() == ["Build 812: green", '{"n":4}']
        expect(page.locator("#messages li .from").first).to_have_text("push")
        expect(page.locator("#composer")).to_be_hidden()
        expect(page.locator("#contact-panel")).to_be_hidden()
        expect(entry.locator(".badge")).to_have_count(0)

        body = {"component": "links", "severity": "major", "text": "Links drop in the east"}
        r = admin.post("/v1/incidents", json=body)
        assert r.status_code == 201, r.text
        incident = r.json()["id"]
        banner = page.locator(f'#incidents li[data-incident="{incident}"]')
        expect(banner).to_have_text("Service notice (links, major): Links drop in the east")
        assert serious(page) == []
        page.screenshot(path=artifacts / "notices.png")
        r = admin.post(f"/v1/incidents/{incident}/resolve", json={"text": "Links are back"})
        assert r.status_code == 200, r.text
        expect(banner).to_contain_text("Resolved (links, major): Links are back")
        banner.get_by_role("button", name="Dismiss this notice").click()
        expect(page.locator("#incidents")).to_be_hidden()
        # The next hello tells of it again (resolved within the hour): it stays away,
        # and the pushes are still there, once each.
        page.reload()
        app.expect_linked()
        page.locator("#contacts button[data-notices]").click()
        assert app.texts() == ["Build 812: green", '{"n":4}']
        expect(page.locator("#incidents")).to_be_hidden()
    assert app.errors == []
