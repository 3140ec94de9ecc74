"""System messages on relays sharing a 3-node NATS JetStream cluster: an incident
opened through one relay reaches the devices linked to another within a couple of
seconds (its board reads the store every second), and its resolve through the
second reaches the first's devices; a device that links to either hears it at hello.
When the store loses its quorum, the devices on both relays hear of the automatic
incident each relay keeps while it cannot write it, and of its resolve later."""

from __future__ import annotations

import asyncio
import contextlib
import time
from functools import partial
from pathlib import Path

import httpx

from pinrelay.client.device import Device, SystemMessage
from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.wait import wait_until_async
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


async def test_devices_hear_of_an_automatic_incident_when_the_store_loses_its_quorum(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    """Two of three nats-servers killed: the relays' monitors open the store incident
    (kept on each relay, the store cannot take it), and the devices linked to either
    relay hear it opened; the nodes back, it resolves and they hear that."""
    (tmp_path / "nats").mkdir()
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    sdks: list[Device] = []
    tasks: list[asyncio.Task[None]] = []
    heard: dict[str, list[SystemMessage]] = {}
    try:
        store = ["--store", ",".join(cluster.urls)]
        relays = [
            relay_factory(name, extra=[*store, "--node-id", name, *FLAGS]) for name in ("a", "b")
        ]
        for relay in relays:
            device = relay.create_device()
            got = heard.setdefault(relay.link_url, [])
            sdk = Device(
                device["pin"],
                device["token"],
                lambda m: None,
                link_urls=[relay.link_url],
                on_system=got.append,
            )
            sdks.append(sdk)
            tasks.append(asyncio.create_task(sdk.run()))
        await wait_until_async(lambda: all(s.links_opened for s in sdks), timeout=20)
        for node in cluster.nodes[1:]:
            node.kill()

        def events(event: str) -> bool:
            return all(any(m.event == event for m in got) for got in heard.values())

        await wait_until_async(partial(events, "opened"), 40, 0.2, "the devices told")
        for got in heard.values():
            opened = next(m for m in got if m.event == "opened")
            assert opened.data["component"] == "store" and opened.urgency == "high"
        for node in cluster.nodes[1:]:
            node.start()
        await asyncio.to_thread(cluster.wait_ready, 60, started=True)
        await wait_until_async(partial(events, "resolved"), 90, 0.3, "the devices told again")
        for got in heard.values():
            assert len({m.id for m in got}) == len(got)  # each once
    finally:
        for sdk in sdks:
            await sdk.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        cluster.stop()
