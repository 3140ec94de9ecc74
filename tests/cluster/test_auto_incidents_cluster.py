"""Automatic incidents on a cluster (monitors.py; issue 16): two of the three
nats-servers are killed, so the store loses its quorum.  Each relay's store probe
stops answering; after ``--incident-after`` each opens the incident on its own
(it cannot write it), under the id both derive alike, and its API shows it.  The
nodes come back: the incident is written once, and it resolves itself after
``--resolve-after`` of green; both relays then read the same resolved incident."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.wait import wait_until
from tests.api.test_auto_incidents import auto_incidents
from tests.conftest import RelayFactory
from tests.linkclient import link
from tests.natsproc import NatsCluster

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


def test_a_cluster_that_loses_its_quorum_opens_an_incident_and_resolves_it(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    (tmp_path / "nats").mkdir()
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        store = ["--store", ",".join(cluster.urls)]
        a = relay_factory("a", extra=[*store, "--node-id", "a", *FLAGS])
        b = relay_factory("b", extra=[*store, "--node-id", "b", *FLAGS])
        with (
            httpx.Client(base_url=a.url, headers=a.admin_headers(), timeout=30) as ca,
            httpx.Client(base_url=b.url, headers=b.admin_headers(), timeout=30) as cb,
        ):
            assert auto_incidents(ca) == [] and auto_incidents(cb) == []
            killed = cluster.nodes[1:]
            for node in killed:
                node.kill()
            seen_a = wait_until(lambda: open_store_incident(ca), 40, 0.3, "a's incident")
            seen_b = wait_until(lambda: open_store_incident(cb), 40, 0.3, "b's incident")
            for seen in (seen_a, seen_b):
                assert seen["severity"] == "critical" and seen["holder"] in ("a", "b")
                delay = parse_rfc3339(seen["opened_at"]) - parse_rfc3339(seen["started_at"])
                assert 3000 <= delay < 15_000, delay
            for node in killed:
                node.start()
            cluster.wait_ready(60, started=True)

            def settled() -> list[dict[str, Any]] | None:
                try:
                    on_a, on_b = auto_incidents(ca), auto_incidents(cb)
                except (httpx.HTTPError, AssertionError):
                    return None
                done = all(i["state"] == "resolved" for i in on_a)
                same = sorted(i["id"] for i in on_a) == sorted(i["id"] for i in on_b)
                return on_a if on_a and done and same else None

            final = wait_until(settled, 90, 0.5, "the incident written and resolved")
            ids = {i["id"] for i in final}
            assert {seen_a["id"], seen_b["id"]} <= ids
            # One incident for the failure; a second only if the relays' red starts
            # fell in two minutes' slots, and then it says it continues as the first.
            first = [i for i in final if not i["updates"][-1]["text"].startswith("Continues")]
            assert len(first) == 1, final
            assert all(i["component"] == "store" for i in final)
    finally:
        cluster.stop()


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
            first = wait_until(lambda: open_store_incident(admin), 30, 0.3, "an incident")
            holder = first["holder"]
            other = "b" if holder == "a" else "a"
            # Both relays are red: still one incident.
            assert [i["id"] for i in auto_incidents(admin)] == [first["id"]]
        with httpx.Client(
            base_url=relays[other].url, headers=relays[other].admin_headers(), timeout=30
        ) as admin:
            relays[holder].kill()

            def taken_over() -> dict[str, Any] | None:
                found = open_store_incident(admin)
                return found if found and found["holder"] == other else None

            after = wait_until(taken_over, 60, 0.5, f"relay {other} holding the incident")
            assert after["id"] == first["id"] and after["updates"] == first["updates"]
            assert [i["id"] for i in auto_incidents(admin)] == [first["id"]]
    finally:
        cluster.stop()


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
