"""Figures and reports on relays whose store is a 3-node NATS JetStream cluster
(store/jetstream/figures.py): every relay records its readings, a report from
one relay counts both, and readings taken while the cluster lost its quorum (two
of three nats-servers killed) are written once it is back, so the report of the
outage covers it."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from pinrelay.core.readings import Readings
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.wait import wait_until
from tests.api.test_incidents import _ok, open_incident
from tests.api.test_reports import check_png
from tests.clusterrelay import nats_cluster
from tests.conftest import RelayFactory

__all__ = ["nats_cluster"]
EVERY_S = 1.0  # the monitors read once a second
OUTAGE_S = 4.0


async def recorded(cluster: NatsCluster, since_ms: int) -> dict[str, list[Readings]]:
    """Each relay's readings since ``since_ms``, read from the store as a report does."""
    store = JetStreamStore(cluster.urls)
    await store.open()
    try:
        found = await store.readings(since_ms, int(time.time() * 1000) + 60_000)
    finally:
        await store.close()
    by_node: dict[str, list[Readings]] = {}
    for r in found:
        by_node.setdefault(r.node, []).append(r)
    return by_node


def test_readings_of_every_relay_and_of_an_outage_reach_the_report(
    nats_cluster: NatsCluster, relay_factory: RelayFactory
) -> None:
    store = ["--store", ",".join(nats_cluster.urls), "--figures-every", str(EVERY_S)]
    first = relay_factory("first", extra=[*store, "--node-id", "first", "--region", "eu"])
    relay_factory("second", extra=[*store, "--node-id", "second", "--region", "us"])
    began = int(time.time() * 1000)
    with httpx.Client(base_url=first.url, headers=first.admin_headers(), timeout=30) as admin:
        iid = open_incident(admin, component="cluster", severity="critical")["id"]

        def both() -> bool:
            r = _ok(admin.get(f"/v1/incidents/{iid}/report"))
            return [g["relays"] for g in r["regions"]] == [1, 1]

        wait_until(both, 20, 0.2, "readings of both relays in the report")
        # The store loses its quorum for a few seconds: figures wait in memory.
        lost = [nats_cluster.node("n2"), nats_cluster.node("n3")]
        for node in lost:
            node.kill()
        down_ms = int(time.time() * 1000)
        time.sleep(OUTAGE_S)  # the outage lasts a while (nothing to poll for)
        for node in lost:
            node.start()
        up_ms = int(time.time() * 1000)
        nats_cluster.wait_ready(30, started=True)

        def resolved() -> bool:
            return admin.post(f"/v1/incidents/{iid}/resolve").status_code == 200

        wait_until(resolved, 30, 0.5, "the incident resolved once the store is back")
        assert "figures not recorded" in first.output()  # they did wait
        report = _ok(admin.get(f"/v1/incidents/{iid}/report"))
        assert report["relays"] == ["first", "second"]
        assert [g["region"] for g in report["regions"]] == ["eu", "us"]
        check_png(admin.get(f"/v1/incidents/{iid}/report.png").content)

    def covered() -> dict[str, list[Readings]] | None:
        try:
            found = asyncio.run(recorded(nats_cluster, began))
        except StoreClosed:  # the cluster is still settling: opening a store timed out
            return None
        done = all(n in found and found[n][-1].at_ms > up_ms for n in ("first", "second"))
        return found if done else None

    for name, readings in wait_until(covered, 30, 0.5, "readings after the outage").items():
        during = [r.at_ms for r in readings if down_ms <= r.at_ms <= up_ms]
        gaps = [b - a for a, b in itertools.pairwise(r.at_ms for r in readings)]
        assert len(during) >= OUTAGE_S / EVERY_S / 2, (name, during)  # taken, held, written
        assert max(gaps) < 2_000, (name, gaps)
