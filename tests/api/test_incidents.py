"""Operators' incidents and the status page (PROTOCOL "Incidents and status", issue 16)
on a real relay on SQLite; test_incidents_on_cluster.py runs them on a 3-node cluster.

An incident opened with the relay's admin key turns its component degraded or out on
``/status.json``, ``/status`` and ``/status.atom``; updates grow its timeline; once
resolved the component is operational again and the incident can change no more
(409).  A tenant's admin key reads the incidents affecting its tenant and changes
none; another tenant's incident answers as one that does not exist.  Incidents
survive a restart of the relay.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from pinrelay.api.status_page import SCRIPT_HASH
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.wait import wait_until
from tests.api.test_api import assert_problem
from tests.api.test_tenants import Tenant
from tests.relayproc import RelayProc

NOBODY = "I000000000000"
#: Text an operator might write that HTML and XML must escape.
NASTY = '<script>alert("x")</script> & <b>bold</b> ü'
ATOM = "{http://www.w3.org/2005/Atom}"


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def open_incident(http: httpx.Client, **body: Any) -> dict[str, Any]:
    body = {"component": "store", "severity": "critical", "text": "Writes fail", **body}
    made: dict[str, Any] = _ok(http.post("/v1/incidents", json=body), 201)
    assert made["state"] == "open" and made["id"].startswith("I")
    return made


def states(http: httpx.Client) -> dict[str, str]:
    r = httpx.get(f"{http.base_url}/status.json")  # no key
    body = _ok(r)
    # The contract, and what this relay adds (PROTOCOL "Incidents and status").
    assert set(body) == {"components", "incidents", "stale", "as_of"}
    assert body["stale"] is False and parse_rfc3339(body["as_of"])
    for c in body["components"]:
        assert set(c) == {"name", "state", "uptime_90d", "days"} and len(c["days"]) == 90
    return {c["name"]: c["state"] for c in body["components"]}


def public_incidents(url: str) -> dict[str, dict[str, Any]]:
    body = _ok(httpx.get(f"{url}/status.json"))
    for i in body["incidents"]:
        assert set(i) == {
            "id",
            "state",
            "component",
            "severity",
            "started_at",
            "resolved_at",
            "updates",
        }
        for u in i["updates"]:
            assert set(u) == {"at", "text"}
            parse_rfc3339(u["at"])
    return {i["id"]: i for i in body["incidents"]}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.refresh = False
        self.viewport = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "meta" and a.get("http-equiv") == "refresh" and a.get("content") == "60":
            self.refresh = True
        if tag == "meta" and a.get("name") == "viewport":
            self.viewport = "width=device-width" in (a.get("content") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def html_page(url: str) -> _Page:
    r = httpx.get(f"{url}/status")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # One script, the page's own refresh, the only one its policy allows (by hash).
    assert f"script-src '{SCRIPT_HASH}';" in r.headers["content-security-policy"]
    # Its icon is named, allowed and served: else a browser asks for /favicon.ico (a
    # 404) or is refused it by the policy, and says so in its console.
    assert " img-src 'self';" in r.headers["content-security-policy"]
    assert '<link rel="icon" href="/app/icon.svg" type="image/svg+xml">' in r.text
    icon = httpx.get(f"{url}/app/icon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    page = _Page()
    page.feed(r.text)
    page.close()
    assert page.refresh and page.viewport and page.tags.count("script") == 1
    assert r.text.count("<script>") == 1 and "<b>" not in r.text
    return page


def atom_entries(url: str) -> list[tuple[str, str]]:
    r = httpx.get(f"{url}/status.atom")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/atom+xml")
    feed = ET.fromstring(r.content)  # noqa: S314 (our own relay's feed)
    assert feed.tag == f"{ATOM}feed" and feed.find(f"{ATOM}id") is not None
    found = []
    for entry in feed.findall(f"{ATOM}entry"):
        assert entry.find(f"{ATOM}updated") is not None and entry.find(f"{ATOM}title") is not None
        found.append((entry.findtext(f"{ATOM}id") or "", entry.findtext(f"{ATOM}content") or ""))
    return found


def resolve_all(http: httpx.Client) -> None:
    """Resolve what other tests left open (the cluster's relay is shared by a module)."""
    for i in _ok(http.get("/v1/incidents", params={"limit": 1000}))["incidents"]:
        if i["state"] == "open":
            _ok(http.post(f"/v1/incidents/{i['id']}/resolve"))


def test_an_incident_opens_grows_and_resolves_on_every_view(
    relay: RelayProc, admin: httpx.Client
) -> None:
    resolve_all(admin)
    assert set(states(admin).values()) == {"operational"}
    assert list(states(admin)) == ["store", "cluster", "links", "delivery"]
    made = open_incident(admin, text=NASTY, region="eu-west")
    iid = made["id"]
    assert (made["region"], made["source"], made["tenants"]) == ("eu-west", "operator", [])
    assert states(admin)["store"] == "outage"
    slow = open_incident(admin, component="delivery", severity="minor", text="Late")
    assert states(admin)["delivery"] == "degraded"
    shown = public_incidents(relay.url)[iid]
    assert shown["updates"] == [{"at": shown["started_at"], "text": NASTY}]
    assert shown["resolved_at"] is None and shown["severity"] == "critical"

    after = _ok(admin.post(f"/v1/incidents/{iid}/updates", json={"text": "Disk replaced"}), 201)
    assert [u["text"] for u in after["updates"]] == [NASTY, "Disk replaced"]
    assert _ok(admin.get(f"/v1/incidents/{iid}")) == after
    page = html_page(relay.url)
    assert NASTY in "".join(page.text) and "Disk replaced" in "".join(page.text)
    entries = atom_entries(relay.url)
    assert (f"urn:pinrelay:incident:{iid}:0", NASTY) in entries
    assert (f"urn:pinrelay:incident:{iid}:1", "Disk replaced") in entries

    done = _ok(admin.post(f"/v1/incidents/{iid}/resolve", json={"text": "All writes back"}))
    assert done["state"] == "resolved" and done["resolved_at"] is not None
    assert states(admin)["store"] == "operational"
    assert public_incidents(relay.url)[iid]["state"] == "resolved"
    _ok(admin.post(f"/v1/incidents/{slow['id']}/resolve"))  # no body: no last update
    assert set(states(admin).values()) == {"operational"}
    # Resolved is final (core/incidents.py rule 1).
    assert_problem(admin.post(f"/v1/incidents/{iid}/updates", json={"text": "x"}), 409, "conflict")
    assert_problem(admin.post(f"/v1/incidents/{iid}/resolve"), 409, "conflict")
    assert _ok(admin.get(f"/v1/incidents/{iid}")) == done
    listed = _ok(admin.get("/v1/incidents"))["incidents"]
    assert iid in [i["id"] for i in listed] and listed[0]["started_at"] >= listed[-1]["started_at"]


def test_bad_requests_change_nothing(relay: RelayProc, admin: httpx.Client) -> None:
    for body in (
        {"component": "disk", "severity": "minor", "text": "x"},
        {"component": "store", "severity": "huge", "text": "x"},
        {"component": "store", "severity": "minor", "text": ""},
        {"component": "store", "severity": "minor", "text": "x" * 2001},
        {"component": "store", "severity": "minor", "text": "bell\u0007"},
        {"component": "store", "severity": "minor", "text": "x", "tenants": ["NOT A TENANT"]},
        {"component": "store", "severity": "minor"},
    ):
        assert_problem(admin.post("/v1/incidents", json=body), 422, "invalid")
    assert_problem(admin.get(f"/v1/incidents/{NOBODY}"), 404, "not_found")
    assert_problem(admin.get("/v1/incidents/nonsense"), 404, "not_found")
    assert_problem(admin.post(f"/v1/incidents/{NOBODY}/updates", json={"text": "x"}), 404)
    assert_problem(admin.post(f"/v1/incidents/{NOBODY}/resolve"), 404)
    iid = open_incident(admin)["id"]
    assert_problem(admin.post(f"/v1/incidents/{iid}/updates", json={}), 422)
    assert_problem(admin.post(f"/v1/incidents/{iid}/updates", json={"text": ""}), 422)
    assert len(_ok(admin.get(f"/v1/incidents/{iid}"))["updates"]) == 1
    assert_problem(httpx.post(f"{relay.url}/v1/incidents", json={}), 401)


def test_a_tenant_admin_reads_only_what_affects_its_tenant(
    relay: RelayProc, admin: httpx.Client
) -> None:
    a, b = Tenant(admin, "a"), Tenant(admin, "b")
    everyone = open_incident(admin, severity="minor")["id"]
    only_a = open_incident(admin, severity="minor", tenants=[a.id])["id"]
    assert only_a not in public_incidents(relay.url)  # not on the public page
    assert everyone in public_incidents(relay.url)
    with a.client("admin") as ca, b.client("admin") as cb, b.client("push") as push:
        assert _ok(ca.get(f"/v1/incidents/{only_a}"))["tenants"] == [a.id]
        assert _ok(cb.get(f"/v1/incidents/{everyone}"))["id"] == everyone
        theirs, nobody = cb.get(f"/v1/incidents/{only_a}"), cb.get(f"/v1/incidents/{NOBODY}")
        assert_problem(theirs, 404)
        assert theirs.text.replace(only_a, NOBODY) == nobody.text
        assert only_a not in cb.get("/v1/incidents").text
        assert only_a in ca.get("/v1/incidents").text
        # Reading only: a tenant's admin changes nothing.
        assert_problem(
            ca.post("/v1/incidents", json={"component": "store", "severity": "minor", "text": "x"}),
            403,
            "forbidden",
        )
        assert_problem(ca.post(f"/v1/incidents/{only_a}/resolve"), 403)
        assert_problem(push.get(f"/v1/incidents/{everyone}"), 403)
    assert _ok(admin.get(f"/v1/incidents/{only_a}"))["state"] == "open"


def test_incidents_survive_a_restart(relay_factory: Any) -> None:
    relay: RelayProc = relay_factory("restarted")
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        iid = open_incident(admin, severity="major", component="links")["id"]
        _ok(admin.post(f"/v1/incidents/{iid}/updates", json={"text": "Half the links back"}), 201)
        before = _ok(admin.get(f"/v1/incidents/{iid}"))
    relay.stop()
    relay.start()
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        assert _ok(admin.get(f"/v1/incidents/{iid}")) == before
        assert states(admin)["links"] == "degraded"
        _ok(admin.post(f"/v1/incidents/{iid}/resolve", json={"text": "All back"}))
        wait_until(lambda: states(admin)["links"] == "operational", timeout=10)
