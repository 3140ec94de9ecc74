"""System messages on relays sharing a 3-node NATS JetStream cluster: an incident
opened through one relay reaches the devices linked to another within a couple of
seconds (its board reads the store every second), and its resolve through the
second reaches the first's devices; a device that links to either hears it at hello.
Devices hearing of an automatic incident while the store has lost its quorum:
tests/cluster/test_auto_incidents_cluster.py (the whole cycle)."""

from __future__ import annotations

import time

import httpx

from pinrelay.testing.natsproc import NatsCluster
from tests.api.test_incidents import open_incident
from tests.clusterrelay import nats_cluster
from tests.conftest import RelayFactory
from tests.link.test_system_messages import api, check_system, system_until, take
from tests.linkclient import link
from tests.relayproc import TIMEOUT_FACTOR

__all__ = ["nats_cluster"]


async def test_an_incident_through_one_relay_reaches_devices_on_another(
    nats_cluster: NatsCluster, relay_factory: RelayFactory
) -> None:
    store = ["--store", ",".join(nats_cluster.urls)]
    first = relay_factory("first", extra=[*store, "--node-id", "first"])
    second = relay_factory("second", extra=[*store, "--node-id", "second"])
    on_first, on_second = first.create_device(), second.create_device()
    ws_1, _ = await link(first, on_first)
    ws_2, _ = await link(second, on_second)
    try:
        with (
            httpx.Client(base_url=first.url, headers=first.admin_headers(), timeout=30) as one,
            httpx.Client(base_url=second.url, headers=second.admin_headers(), timeout=30) as two,
        ):
            opened_at = time.monotonic()
            made = open_incident(one, component="cluster", severity="major", text="Split")
            [here] = await system_until(ws_1, 1, timeout=2)
            check_system(here, made, "opened", "Split")
            [there] = await system_until(ws_2, 1, timeout=5)
            assert time.monotonic() - opened_at < 3 * TIMEOUT_FACTOR
            assert there == here  # the same frame from either relay (same id)
            # A device linking to the second now hears it at hello.
            late = second.create_device()
            ws_3, _ = await link(second, late)
            try:
                [news] = await take(ws_3, 1)
                assert news == here
                await api(two, "POST", f"/v1/incidents/{made['id']}/resolve")
                resolved_at = time.monotonic()
                for ws in (ws_2, ws_3, ws_1):
                    [frame] = await system_until(ws, 1, timeout=5)
                    check_system(frame, made, "resolved", "Resolved.")
                    assert frame["id"] == f"{made['id']}.2"
                assert time.monotonic() - resolved_at < 3 * TIMEOUT_FACTOR
            finally:
                await ws_3.close()
    finally:
        await ws_1.close()
        await ws_2.close()
