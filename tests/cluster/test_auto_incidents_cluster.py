"""Automatic incidents on a cluster (monitors.py; issue 16): two of the three
nats-servers are killed, so the store loses its quorum.  Each relay's store probe
stops answering; after ``--incident-after`` each opens the incident on its own
(it cannot write it), under the id both derive alike, and its API shows it.  The
nodes come back: the incident is written once, and it resolves itself after
``--resolve-after`` of green; both relays then read the same resolved incident."""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from pinrelay.client.device import Device, SystemMessage
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.api.test_auto_incidents import auto_incidents
from tests.api.test_webhooks import FAST, check_signature, deliveries, subscribe
from tests.conftest import RelayFactory
from tests.linkclient import link
from tests.natsproc import NatsCluster
from tests.webhooks.receiver import receiving

FLAGS = [
    "--incident-after",
    "3",
    "--resolve-after",
    "3",
    "--monitor",
    "store-slow-ms=1500",
    "--monitor",
    "store-fail-ms=2500",
]


def open_store_incident(c: httpx.Client) -> dict[str, Any] | None:
    try:
        found = [i for i in auto_incidents(c) if i["component"] == "store"]
    except (httpx.HTTPError, AssertionError):
        return None
    return next((i for i in found if i["state"] == "open"), None)


async def test_a_cluster_that_loses_its_quorum_tells_everyone_and_reports_it(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    """The whole cycle: two of three nats-servers killed; each relay opens the
    incident (kept on it, the store cannot take it) within the threshold; devices
    linked to both relays get the ``system`` message, a local webhook receiver a
    correctly signed notification, and every relay's /status and /status.json
    show it.  The nodes back: it is written once and resolves; the devices and the
    receiver hear that; the reports' counts are what the test counted."""
    (tmp_path / "nats").mkdir()
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    sdks: list[Device] = []
    admins: dict[str, httpx.Client] = {}
    tasks: list[asyncio.Task[None]] = []
    heard: dict[str, list[SystemMessage]] = {}
    try:
        with receiving() as receiver:
            store = ["--store", ",".join(cluster.urls), "--figures-every", "1", *FAST]
            relays = {
                n: relay_factory(n, extra=[*store, "--node-id", n, *FLAGS]) for n in ("a", "b")
            }
            admins.update(
                (n, httpx.Client(base_url=r.url, headers=r.admin_headers(), timeout=30))
                for n, r in relays.items()
            )
            hook = subscribe(admins["a"], receiver.url)
            for c in admins.values():  # each relay has read it (it sends while away)
                await asyncio.to_thread(
                    wait_until, partial(_metric, c, "pinrelay_webhooks_known", 1), 20, 0.1
                )
            for name, relay in relays.items():
                device = relay.create_device()
                got = heard.setdefault(name, [])
                sdk = Device(
                    device["pin"], device["token"], lambda m: None,
                    link_urls=[relay.link_url], on_system=got.append,
                )  # fmt: skip
                sdks.append(sdk)
                tasks.append(asyncio.create_task(sdk.run()))
            await wait_until_async(lambda: all(s.links_opened for s in sdks), timeout=20)
            assert all(auto_incidents(c) == [] for c in admins.values())
            killed = cluster.nodes[1:]
            killed_ms = int(time.time() * 1000)
            for node in killed:
                node.kill()

            seen = {
                n: await asyncio.to_thread(
                    wait_until, partial(open_store_incident, c), 40, 0.3, f"{n}'s incident"
                )
                for n, c in admins.items()
            }
            for incident in seen.values():
                assert incident["severity"] == "critical" and incident["holder"] in relays
                opened_ms = parse_rfc3339(incident["opened_at"])
                assert 3000 <= opened_ms - parse_rfc3339(incident["started_at"]) < 15_000
                # Red once a probe waited store-fail-ms (2.5 s), open 3 s later.
                assert opened_ms - killed_ms < 20_000, opened_ms - killed_ms

            def told(event: str) -> bool:
                return all(any(m.event == event for m in got) for got in heard.values())

            await wait_until_async(partial(told, "opened"), 20, 0.2, "the devices told")
            for got in heard.values():
                news = next(m for m in got if m.event == "opened")
                assert news.data["component"] == "store" and news.urgency == "high"
            for name, relay in relays.items():
                status = (await asyncio.to_thread(httpx.get, f"{relay.url}/status.json")).json()
                states = {c["name"]: c["state"] for c in status["components"]}
                assert states["store"] == "outage", status
                assert seen[name]["id"] in {i["id"] for i in status["incidents"]}
                page = (await asyncio.to_thread(httpx.get, f"{relay.url}/status")).text
                assert seen[name]["id"] in page

            def hook_heard(event: str) -> list[dict[str, Any]]:
                return [d for d in deliveries(receiver, hook["id"]) if d["event"] == event]

            await asyncio.to_thread(wait_until, partial(hook_heard, "opened"), 20, 0.2)
            for got_hook in receiver.accepted():
                check_signature(got_hook)

            for node in killed:
                node.start()
            await asyncio.to_thread(cluster.wait_ready, 60, started=True)

            def settled() -> list[dict[str, Any]] | None:
                try:
                    on_a, on_b = (auto_incidents(c) for c in admins.values())
                except (httpx.HTTPError, AssertionError):
                    return None
                done = all(i["state"] == "resolved" for i in on_a)
                same = sorted(i["id"] for i in on_a) == sorted(i["id"] for i in on_b)
                return on_a if on_a and done and same else None

            final = await asyncio.to_thread(
                wait_until, settled, 90, 0.5, "the incident written and resolved"
            )
            # One incident for the failure; a second only if the relays' red starts
            # fell in two minutes' slots, and then it says it continues as the first.
            first = [i for i in final if not i["updates"][-1]["text"].startswith("Continues")]
            assert len(first) == 1 and all(i["component"] == "store" for i in final), final
            incident_id = first[0]["id"]
            await wait_until_async(partial(told, "resolved"), 30, 0.2, "the devices told again")
            await asyncio.to_thread(wait_until, partial(hook_heard, "resolved"), 30, 0.2)
            for got in heard.values():
                assert len({m.id for m in got}) == len(got)  # each once
            # The receiver: every event in order; a repeat only under the same id.
            events = [d["event"] for d in deliveries(receiver, hook["id"])]
            assert events[0] == "opened" and events[-1] == "resolved", events
            ids = [d["id"] for d in deliveries(receiver, hook["id"])]
            assert len(set(ids)) == len(dict.fromkeys(ids))

            # The reports (each relay counts what it told and delivered).
            reports = [
                _ok_json(c.get(f"/v1/incidents/{incident_id}/report")) for c in admins.values()
            ]
            told_devices = sum(
                n["count"]
                for r in reports
                for n in r["notifications"]
                if n["channel"] == "devices" and n["event"] == "opened"
            )
            heard_opened = sum(
                1 for got in heard.values() for m in got if m.incident == incident_id
                and m.event == "opened"
            )  # fmt: skip
            assert told_devices == heard_opened == 2, reports
            hooked = sum(
                1 for r in reports for n in r["notifications"] if n["channel"] == "webhook"
            )
            mine = [
                d for d in deliveries(receiver, hook["id"]) if d["incident"]["id"] == incident_id
            ]
            assert hooked == len(mine), (reports, mine)
            for r in reports:
                assert r["expired"] == 0 and r["tenants_affected"] == "all"
                assert r["detection_delay_ms"] >= 3000
            # What was kept in memory while the store was away is written now.
            for c in admins.values():
                await asyncio.to_thread(
                    wait_until, partial(_metric, c, "pinrelay_webhook_deliveries_in_memory", 0),
                    20, 0.2, "the deliveries written",
                )  # fmt: skip
    finally:
        for c in admins.values():
            c.close()
        for sdk in sdks:
            await sdk.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        cluster.stop()


def _metric(c: httpx.Client, name: str, want: float) -> bool:
    lines = c.get("/metrics").text.splitlines()
    return any(line == f"{name} {float(want)}" for line in lines)


def _ok_json(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def test_one_relay_acts_for_an_incident_and_another_takes_it_over_when_it_dies(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    """Every probe counts as slow on both relays (``store-slow-ms=0``): one incident
    is opened, held by one relay; SIGKILL that relay, and the other becomes its
    holder once the dead one has been missing from the live relays for 15 s."""
    (tmp_path / "nats").mkdir()
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        store = ["--store", ",".join(cluster.urls), "--incident-after", "1"]
        red = [*store, "--monitor", "store-slow-ms=0"]
        relays = {name: relay_factory(name, extra=[*red, "--node-id", name]) for name in ("a", "b")}
        with httpx.Client(
            base_url=relays["b"].url, headers=relays["b"].admin_headers(), timeout=30
        ) as admin:
            wait_until(lambda: open_store_incident(admin), 30, 0.3, "an incident")
            # Both relays are red: one incident (and, if their red starts fell in two
            # minutes' slots, a second that says it continues as the first).
            first = _alone_open(admin)
            holder = first["holder"]
            other = "b" if holder == "a" else "a"
        with httpx.Client(
            base_url=relays[other].url, headers=relays[other].admin_headers(), timeout=30
        ) as admin:
            relays[holder].kill()

            def taken_over() -> dict[str, Any] | None:
                try:
                    found = {i["id"]: i for i in auto_incidents(admin)}
                except (httpx.HTTPError, AssertionError):
                    return None
                mine = found.get(first["id"])
                return mine if mine and mine["holder"] == other else None

            after = wait_until(taken_over, 60, 0.5, f"relay {other} holding the incident")
            assert after["state"] == "open" and after["updates"] == first["updates"]
            assert _alone_open(admin)["id"] == first["id"]
    finally:
        cluster.stop()


def _alone_open(admin: httpx.Client) -> dict[str, Any]:
    """The only automatic incident open, once there is one; any other one is
    resolved as continuing it (core/monitors.py rule 4)."""

    def alone() -> list[dict[str, Any]] | None:
        try:
            found = auto_incidents(admin)
        except (httpx.HTTPError, AssertionError):
            return None
        return found if sum(i["state"] == "open" for i in found) == 1 else None

    found = wait_until(alone, 30, 0.5, "one incident open")
    for other in found:
        if other["state"] != "open":
            assert other["updates"][-1]["text"].startswith("Continues"), other
    return next(i for i in found if i["state"] == "open")


def test_the_holder_resolves_nothing_while_another_relay_of_the_region_is_red(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    """Both relays lose most of their links: one incident opens.  The holder's
    devices come back, the other relay's do not: the incident stays open (not
    "working again" while it is not), one incident, until that relay is green too."""
    (tmp_path / "nats").mkdir()
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        flags = [
            "--store", ",".join(cluster.urls), "--incident-after", "1", "--resolve-after", "2",
            "--monitor", "links-min=4", "--monitor", "links-drop=0.5",
        ]  # fmt: skip
        relays = {n: relay_factory(n, extra=[*flags, "--node-id", n]) for n in ("a", "b")}
        devices = {n: [r.create_device() for _ in range(4)] for n, r in relays.items()}

        async def run() -> dict[str, Any]:
            held = {n: [(await link(r, d))[0] for d in devices[n]] for n, r in relays.items()}
            with httpx.Client(
                base_url=relays["a"].url, headers=relays["a"].admin_headers(), timeout=30
            ) as admin:

                def linked(n: str) -> bool:
                    c = httpx.Client(base_url=relays[n].url, headers=relays[n].admin_headers())
                    with c:
                        return (c.get("/v1/monitors").json()["readings"] or {}).get("links") == 4

                for n in relays:
                    await asyncio.to_thread(wait_until, lambda n=n: linked(n), 15, 0.2)
                # Not near a minute's edge: both relays turn red in one slot (one id;
                # two slots give two, the newer resolved as continuing, tested above).
                await asyncio.to_thread(wait_until, lambda: 2 <= time.time() % 60 <= 45, 20, 0.2)
                for n in relays:
                    for ws in held[n][1:]:
                        await ws.close()

                def opened() -> dict[str, Any] | None:
                    found = [i for i in auto_incidents(admin) if i["component"] == "links"]
                    return found[0] if found else None

                first = await asyncio.to_thread(wait_until, opened, 20, 0.2, "an incident")
                holder = first["holder"]
                back = [(await link(relays[holder], d))[0] for d in devices[holder][1:]]
                # The holder is green, the other relay still red: open, for 8 s (the
                # holder would have resolved it 2 s after its own links came back).
                for _ in range(16):
                    await asyncio.sleep(0.5)
                    found = [i for i in auto_incidents(admin) if i["component"] == "links"]
                    assert [(i["id"], i["state"]) for i in found] == [(first["id"], "open")]
                for ws in [*back, *held["a"][:1], *held["b"][:1]]:
                    await ws.close()
                return first

        asyncio.run(run())
    finally:
        cluster.stop()
