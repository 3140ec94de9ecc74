"""A relay's feed of new messages stalls while pushes through another relay are
stored (issue 16; DECISIONS 63).

Relay a runs with the ``feed-stall`` fault (PINRELAY_FAULTS): while its file exists,
a's feed holds each new message, as a stuck consumer would.  A device linked to a
misses what is pushed through b; nothing else is red (the store takes writes).  a's
monitors compare the feed with its streams: behind and not advancing, the lag
grows, a ``delivery`` incident opens, and a restarts its feed (logged).  The stall
ends: the device receives every message in order, and the incident resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinrelay.testing.wait import wait_until_async
from tests.api.test_auto_incidents import monitors
from tests.api.test_delivery_stall import (
    delivery_incident,
    events,
    in_order,
    known_ids,
    read_all,
    reads_fail_cycle,
    stored,
)
from tests.cluster.conftest import StartRelay
from tests.linkclient import link

FLAGS = ["--incident-after", "2", "--resolve-after", "2", "--monitor", "lag-ms=1500"]


async def test_a_stalled_feed_opens_a_delivery_incident_and_loses_nothing(
    tmp_path: Path, start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = tmp_path / "feed-stall"
    monkeypatch.setenv("PINRELAY_FAULTS", f"feed-stall={fault}")
    a = start_relay("stall-a", extra=FLAGS)
    monkeypatch.delenv("PINRELAY_FAULTS")
    b = start_relay("stall-b", extra=FLAGS)
    device = b.create_device()
    url = f"/v1/devices/{device['pin']}/messages"
    got: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=a.url, headers=a.admin_headers(), timeout=30) as on_a,
        httpx.Client(base_url=b.url, headers=b.admin_headers(), timeout=30) as on_b,
    ):

        def push(n: int) -> None:
            r = on_b.post(url, json={"data": {"n": n}, "ttl": 600})
            assert r.status_code == 201, r.text

        ws, _ = await link(a, device)
        reader = asyncio.create_task(read_all(ws, got))
        try:
            await asyncio.to_thread(push, 0)  # the feed works: at once
            await wait_until_async(lambda: len(stored(got)) == 1, 10, 0.05, "the first")
            known = known_ids(on_a)
            await asyncio.to_thread(fault.touch)
            for n in range(1, 5):
                await asyncio.to_thread(push, n)

            def red() -> dict[str, Any] | None:
                found = monitors(on_a)["red"]
                return next((f for f in found if f["component"] == "delivery"), None)

            await wait_until_async(red, 15, 0.1, "a's delivery monitor red")
            assert all(f["component"] != "store" for f in monitors(on_a)["red"])
            incident = await wait_until_async(
                lambda: delivery_incident(on_a, "open", known), 15, 0.1, "a delivery incident"
            )
            assert incident["holder"] == "stall-a"
            await wait_until_async(lambda: "opened" in events(got), 10, 0.1, "told")
            assert len(stored(got)) == 1  # the device missed the rest
            await asyncio.to_thread(a.wait_output, "the feed of new messages was", 10)  # restarted
            assert "restarted it on" in a.output()

            await asyncio.to_thread(fault.unlink)
            await wait_until_async(lambda: len(stored(got)) >= 5, 15, 0.05, "the rest")
            in_order(got, 5)
            await asyncio.to_thread(push, 5)  # and new ones flow again
            await wait_until_async(lambda: len(stored(got)) == 6, 10, 0.05, "the next")
            done = await wait_until_async(
                lambda: delivery_incident(on_a, "resolved", incident_id=incident["id"]),
                40,
                0.2,
                "resolved",
            )
            assert done["id"] == incident["id"]
            await wait_until_async(lambda: "resolved" in events(got), 10, 0.1, "told again")
            assert [m["data"]["n"] for m in stored(got)] == list(range(6))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await ws.close()


async def test_reads_that_fail_on_a_cluster_relay_open_a_delivery_incident(
    tmp_path: Path, start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite cycle (tests/api/test_delivery_stall.py) on a cluster: relay a's
    reads fail (``read-fail``) while pushes through b are stored and a's feed hands
    them on; what a owes its linked device counts, and its pump retries."""
    fault = tmp_path / "read-fail"
    monkeypatch.setenv("PINRELAY_FAULTS", f"read-fail={fault}")
    a = start_relay("reads-a", extra=FLAGS)
    monkeypatch.delenv("PINRELAY_FAULTS")
    b = start_relay("reads-b", extra=FLAGS)
    await reads_fail_cycle(a, b, fault)
