"""Automatic incidents on a relay on SQLite (monitors.py, core/monitors.py; issue 16).

The store's writer process is stopped (SIGSTOP): the store probe stops answering,
the store monitor turns red, and after ``--incident-after`` the relay opens an
incident by itself (kept on the relay while it cannot be written, shown by the
API); the writer runs again (SIGCONT): the incident is written, and after
``--resolve-after`` of green it resolves itself.  Detection delay is in the
record (``opened_at`` - ``started_at``).  The incident survives a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx

from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.relayproc import RelayProc
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.api.test_api import assert_problem
from tests.api.test_tenants import Tenant
from tests.api.test_webhooks import FAST, check_signature, deliveries, subscribe
from tests.conftest import RelayFactory
from tests.link.test_system_messages import system_until
from tests.linkclient import ack_all, link
from tests.store.test_sqlite_writer import children
from tests.webhooks.receiver import receiving

INCIDENT_AFTER_S = 2
FLAGS = [
    "--incident-after",
    str(INCIDENT_AFTER_S),
    "--resolve-after",
    "2",
    "--monitor",
    "store-slow-ms=400",
    "--monitor",
    "store-fail-ms=1000",
]


def auto_incidents(admin: httpx.Client) -> list[dict[str, Any]]:
    r = admin.get("/v1/incidents")
    assert r.status_code == 200, r.text
    return [i for i in r.json()["incidents"] if i["source"] == "auto"]


def ms(at: str) -> int:
    return parse_rfc3339(at)


async def test_a_stopped_store_writer_opens_an_incident_that_resolves_itself(
    relay_factory: RelayFactory,
) -> None:
    """The whole cycle on one relay: a linked device gets the ``system`` messages, a
    local webhook receiver signed notifications, /status.json shows the incident,
    and the report counts what the test counted."""
    relay = relay_factory("auto", extra=[*FLAGS, *FAST])
    (writer,) = children(relay.pid)
    device = relay.create_device()
    ws, _ = await link(relay, device)
    with (
        receiving() as receiver,
        httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin,
    ):
        hook = subscribe(admin, receiver.url)
        # Healthy: the probes pass, nothing opens (a few probes' worth).
        await asyncio.to_thread(
            wait_until, lambda: "pinrelay_store_commit" in admin.get("/metrics").text, 10
        )
        assert auto_incidents(admin) == []
        stopped_ms = int(time.time() * 1000)
        os.kill(writer, signal.SIGSTOP)
        try:
            opened = await asyncio.to_thread(
                wait_until, lambda: auto_incidents(admin), 20, 0.2, "an automatic incident"
            )
            [incident] = opened
            assert incident["component"] == "store" and incident["state"] == "open"
            assert incident["severity"] == "critical" and incident["holder"] == "node-1"
            started, opened_at = ms(incident["started_at"]), ms(incident["opened_at"])
            # Red from the first probe that waited too long; open incident_after later.
            assert stopped_ms - 1500 <= started <= stopped_ms + 3000
            assert opened_at - started >= INCIDENT_AFTER_S * 1000
            assert opened_at - stopped_ms < (INCIDENT_AFTER_S + 6) * 1000
            assert "cannot be stored" in incident["updates"][0]["text"]
            [news] = await system_until(ws, 1, timeout=10)
            assert news["data"]["incident"] == incident["id"] and news["data"]["event"] == "opened"
            status = (await asyncio.to_thread(httpx.get, f"{relay.url}/status.json")).json()
            assert {c["name"]: c["state"] for c in status["components"]}["store"] == "outage"
            assert incident["id"] in {i["id"] for i in status["incidents"]}
            await asyncio.to_thread(
                wait_until, lambda: deliveries(receiver, hook["id"]), 20, 0.2, "the webhook"
            )
        finally:
            os.kill(writer, signal.SIGCONT)

        def resolved() -> dict[str, Any] | None:
            found = [i for i in auto_incidents(admin) if i["id"] == incident["id"]]
            return found[0] if found and found[0]["state"] == "resolved" else None

        done = await asyncio.to_thread(wait_until, resolved, 30, 0.2, "the incident resolved")
        assert ms(done["resolved_at"]) - ms(done["started_at"]) >= INCIDENT_AFTER_S * 1000
        assert done["updates"][-1]["text"].startswith("Resolved")
        # One incident, not one per red probe.
        assert [i["id"] for i in auto_incidents(admin)] == [incident["id"]]
        [after] = await system_until(ws, 1, timeout=10)
        assert after["data"]["event"] == "resolved"

        def hook_events() -> list[str] | None:
            events = [d["event"] for d in deliveries(receiver, hook["id"])]
            return events if events and events[-1] == "resolved" else None

        events = await asyncio.to_thread(wait_until, hook_events, 20, 0.2, "resolved webhook")
        assert events[0] == "opened", events
        for got in receiver.accepted():
            check_signature(got)
        url = f"/v1/incidents/{incident['id']}/report"
        report = (await asyncio.to_thread(admin.get, url)).json()
        sent = report["notifications"]
        assert [n["count"] for n in sent if n["channel"] == "devices"] == [1, 1]  # one device
        assert sum(n["channel"] == "webhook" for n in sent) == len(events)
        assert report["expired"] == 0 and report["detection_delay_ms"] >= 2000
    await ws.close()
    relay.stop()
    again = RelayProc(relay.data, extra=FLAGS).start()
    try:
        with httpx.Client(base_url=again.url, headers=again.admin_headers(), timeout=30) as c:
            r = await asyncio.to_thread(c.get, f"/v1/incidents/{incident['id']}")
            assert r.status_code == 200 and r.json()["state"] == "resolved"
    finally:
        again.stop()


def monitors(admin: httpx.Client) -> dict[str, Any]:
    r = admin.get("/v1/monitors")
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def test_links_that_fall_below_half_their_peak_open_a_links_incident(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory(
        "links",
        extra=[
            "--incident-after", "1", "--resolve-after", "1",
            "--monitor", "links-min=4", "--monitor", "links-drop=0.5",
        ],
    )  # fmt: skip
    devices = [relay.create_device() for _ in range(6)]

    async def run() -> dict[str, Any]:
        links = [(await link(relay, d))[0] for d in devices]
        with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
            assert monitors(admin)["node"] == "node-1"
            await wait_until_async(
                lambda: (monitors(admin)["readings"] or {}).get("links") == 6, 10, 0.1
            )
            for ws in links[1:]:
                await ws.close()

            def red() -> dict[str, Any] | None:
                return next((f for f in monitors(admin)["red"] if f["component"] == "links"), None)

            finding = await wait_until_async(red, 10, 0.1, "the links monitor red")
            assert finding["severity"] == "major"
            assert finding["text"] == "Linked devices fell from 6 to about 1"
            opened = await wait_until_async(
                lambda: [i for i in auto_incidents(admin) if i["component"] == "links"], 10, 0.1
            )
            await links[0].close()
            return dict(opened[0])

    incident = asyncio.run(run())
    assert incident["state"] == "open" and incident["severity"] == "major"
    # Links stay low: the peak leaves its 10-minute window only later; the incident
    # stays open (the monitor is still red).
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        assert [i["state"] for i in auto_incidents(admin)] == ["open"]


def test_messages_that_wait_for_a_linked_device_open_a_delivery_incident(
    relay_factory: RelayFactory,
) -> None:
    """The lag threshold at 1 ms (a real relay delivers in about that): a stream of
    pushes to a linked device is red at once; without pushes it is green again."""
    relay = relay_factory(
        "lag",
        extra=["--incident-after", "1", "--resolve-after", "1", "--monitor", "lag-ms=1"],
    )
    device = relay.create_device()

    async def run() -> str:
        ws, _ = await link(relay, device)
        url = f"{relay.url}/v1/devices/{device['pin']}/messages"

        acker = asyncio.get_running_loop().create_task(ack_all(ws))
        with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:

            def pushed_until_open() -> list[dict[str, Any]]:
                for n in range(20):
                    r = admin.post(url, json={"data": {"n": n}, "ttl": 600})
                    assert r.status_code == 201, r.text
                return [i for i in auto_incidents(admin) if i["component"] == "delivery"]

            opened = await asyncio.to_thread(
                wait_until, pushed_until_open, 20, 0.05, "a delivery incident"
            )
            readings = monitors(admin)["readings"]
            assert readings["delivered"] >= 0 and readings["lag_ms"] >= 0
            acker.cancel()
            await ws.close()
            # No more pushes: green, and resolved a second later.
            await wait_until_async(
                lambda: [i["state"] for i in auto_incidents(admin)] == ["resolved"], 20, 0.2
            )
            return str(opened[0]["updates"][0]["text"])

    assert asyncio.run(run()).startswith("Deliveries are late")


def test_an_incident_survives_its_relay_killed_and_the_restarted_relay_resolves_it(
    relay_factory: RelayFactory,
) -> None:
    """Every probe counts as slow (``store-slow-ms=0``): an incident opens and is
    written; the relay is SIGKILLed; restarted with the usual thresholds, it finds
    the incident in the store, still its own, and resolves it."""
    red = ["--incident-after", "1", "--monitor", "store-slow-ms=0"]
    relay = relay_factory("killed", extra=red)
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        opened = wait_until(lambda: auto_incidents(admin), 20, 0.2, "an automatic incident")
        [incident] = opened
        assert incident["severity"] == "major" and incident["state"] == "open"
    relay.kill()
    again = RelayProc(relay.data, extra=["--resolve-after", "1"]).start()
    try:
        with httpx.Client(base_url=again.url, headers=again.admin_headers(), timeout=30) as c:
            done = wait_until(
                lambda: [i for i in auto_incidents(c) if i["state"] == "resolved"], 20, 0.2
            )
            assert [i["id"] for i in done] == [incident["id"]]
            assert done[0]["holder"] == "node-1"
    finally:
        again.stop()


def test_only_the_relays_admin_key_reads_the_monitors(relay_factory: RelayFactory) -> None:
    relay = relay_factory("keys")
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        assert monitors(admin)["region"]
        tenant = Tenant(admin, "t")
        with tenant.client("admin") as ta, tenant.client("push") as push:
            refused = assert_problem(ta.get("/v1/monitors"), 403, "forbidden")
            assert "monitors" in refused["detail"]
            assert_problem(push.get("/v1/monitors"), 403)
        assert_problem(httpx.get(f"{relay.url}/v1/monitors"), 401)
