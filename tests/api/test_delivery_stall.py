"""A delivery that stops while the store still takes writes (issue 16; DECISIONS 63).

The relay's message reads fail (the ``read-fail`` fault, PINRELAY_FAULTS, at the
store boundary), while its writer process stores every push: the store probe stays
green, nothing is delivered, so no delivered message measures any lag.  What the
relay owes the linked device and has not sent does: after ``--incident-after`` a
``delivery`` incident opens.  The fault ends: the pump, which kept retrying, sends
everything in order, and the incident resolves itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from pinrelay.testing.wait import wait_until_async
from tests.api.test_auto_incidents import auto_incidents, monitors
from tests.conftest import RelayFactory
from tests.linkclient import link, send
from tests.relayproc import RelayProc

FLAGS = ["--incident-after", "2", "--resolve-after", "2", "--monitor", "lag-ms=1500"]


async def read_all(ws: ClientConnection, got: list[dict[str, Any]]) -> None:
    """Every frame the relay sends, in order; stored messages acked, pings answered."""
    while True:
        frame = json.loads(await ws.recv())
        got.append(frame)
        if frame["type"] == "msg" and frame.get("cursor") is not None:
            await send(ws, {"type": "ack", "cursor": frame["cursor"]})
        elif frame["type"] == "ping":
            await send(ws, {"type": "pong"})


def stored(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in got if f["type"] == "msg" and f["kind"] != "system"]


def in_order(got: list[dict[str, Any]], n: int) -> None:
    """The messages stored and handed over are pushes 0..n-1, once each, in order."""
    msgs = stored(got)
    assert [m["data"]["n"] for m in msgs] == list(range(n))
    cursors = [m["cursor"] for m in msgs]
    assert cursors == sorted(cursors) and len(set(cursors)) == n


def events(got: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["event"] for f in got if f["type"] == "msg" and f["kind"] == "system"]


def delivery_incident(
    admin: httpx.Client,
    state: str,
    known: frozenset[str] = frozenset(),
    incident_id: str | None = None,
) -> dict[str, Any] | None:
    """An automatic delivery incident in ``state``: not one of ``known`` (a cluster's
    earlier tests'), or the one of ``incident_id``."""
    found = [
        i
        for i in auto_incidents(admin)
        if i["component"] == "delivery" and i["id"] not in known and incident_id in (None, i["id"])
    ]
    return next((i for i in found if i["state"] == state), None)


def metrics(admin: httpx.Client) -> list[str]:
    return admin.get("/metrics").text.splitlines()


def known_ids(admin: httpx.Client) -> frozenset[str]:
    return frozenset(i["id"] for i in auto_incidents(admin))


async def test_reads_that_fail_while_writes_work_open_a_delivery_incident(
    tmp_path: Path, relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = tmp_path / "read-fail"
    monkeypatch.setenv("PINRELAY_FAULTS", f"read-fail={fault}")
    relay = relay_factory("stall", extra=FLAGS)
    await reads_fail_cycle(relay, relay, fault)


async def reads_fail_cycle(relay: RelayProc, pushed_through: RelayProc, fault: Path) -> None:
    """The cycle on ``relay`` (its reads fail while ``fault`` exists), pushes
    through ``pushed_through``."""
    device = pushed_through.create_device()
    url = f"/v1/devices/{device['pin']}/messages"
    got: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin,
        httpx.Client(
            base_url=pushed_through.url, headers=pushed_through.admin_headers(), timeout=30
        ) as pusher,
    ):

        def push(n: int) -> None:
            r = pusher.post(url, json={"data": {"n": n}, "ttl": 600})
            assert r.status_code == 201, r.text

        for n in range(3):  # waiting before the device links
            await asyncio.to_thread(push, n)
        known = known_ids(admin)
        await asyncio.to_thread(fault.touch)
        ws, _ = await link(relay, device)
        reader = asyncio.create_task(read_all(ws, got))
        try:
            for n in range(3, 6):  # writes still work
                await asyncio.to_thread(push, n)

            def red() -> dict[str, Any] | None:
                found = monitors(admin)["red"]
                return next((f for f in found if f["component"] == "delivery"), None)

            finding = await wait_until_async(red, 15, 0.1, "the delivery monitor red")
            assert finding["text"].startswith("Deliveries are late")
            assert monitors(admin)["readings"]["lag_ms"] >= 1500
            # The store itself is fine: the probe passes.
            assert all(f["component"] != "store" for f in monitors(admin)["red"])
            incident = await wait_until_async(
                lambda: delivery_incident(admin, "open", known), 15, 0.1, "a delivery incident"
            )
            assert incident["severity"] == "major"
            # The device heard of it, and got none of its messages.
            await wait_until_async(lambda: "opened" in events(got), 10, 0.1, "told")
            assert stored(got) == []
            assert "pinrelay_delivery_owed 1.0" in await asyncio.to_thread(metrics, admin)

            await asyncio.to_thread(
                fault.unlink
            )  # reads work again: the retrying pump sends them all
            await wait_until_async(lambda: len(stored(got)) >= 6, 15, 0.1, "delivered")
            in_order(got, 6)
            # Delivered again: a push now goes out at once.
            await asyncio.to_thread(push, 6)
            await wait_until_async(lambda: len(stored(got)) == 7, 10, 0.05, "the next one")
            done = await wait_until_async(
                lambda: delivery_incident(admin, "resolved", incident_id=incident["id"]),
                40,
                0.2,
                "the incident resolved",
            )
            assert done["id"] == incident["id"]
            await wait_until_async(lambda: "resolved" in events(got), 10, 0.1, "told again")
            assert [m["data"]["n"] for m in stored(got)] == list(range(7))
            assert "pinrelay_delivery_owed 0.0" in await asyncio.to_thread(metrics, admin)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            await ws.close()
    assert "delivery to" in relay.output() and "works again" in relay.output()


async def test_without_the_fault_a_linked_device_owes_nothing(
    relay_factory: RelayFactory,
) -> None:
    """The control: the same relay and pushes, no fault: delivered at once, and the
    lag read by the monitors stays far below the threshold (what is owed is paid
    within the tick; a device that does not ack fills its window, which is not the
    relay's lag)."""
    relay = relay_factory("nostall", extra=FLAGS)
    device = relay.create_device()
    url = f"/v1/devices/{device['pin']}/messages"
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        ws, _ = await link(relay, device, window=2)
        for n in range(5):  # two fill the window; three wait for acks that never come
            r = await asyncio.to_thread(admin.post, url, json={"data": {"n": n}, "ttl": 600})
            assert r.status_code == 201, r.text
        for _ in range(4):  # a few ticks of the monitors
            await asyncio.sleep(1)
            assert monitors(admin)["readings"]["lag_ms"] < 1500
            assert auto_incidents(admin) == []
        await ws.close()


async def test_a_device_owed_messages_that_unlinks_is_owed_nothing_any_more(
    tmp_path: Path, relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads fail, the linked device is owed its message; it unlinks: the relay owes
    it nothing (time offline is not the relay's lag), and the lag reads low again
    while the reads still fail."""
    fault = tmp_path / "read-fail"
    monkeypatch.setenv("PINRELAY_FAULTS", f"read-fail={fault}")
    relay = relay_factory("unlinks", extra=["--monitor", "lag-ms=60000"])
    device = relay.create_device()
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        r = await asyncio.to_thread(
            admin.post, f"/v1/devices/{device['pin']}/messages", json={"data": {}, "ttl": 600}
        )
        assert r.status_code == 201, r.text
        await asyncio.to_thread(fault.touch)
        ws, _ = await link(relay, device)

        def lag() -> int:
            return int((monitors(admin)["readings"] or {}).get("lag_ms", 0))

        await wait_until_async(lambda: lag() >= 1500, 15, 0.1, "the lag growing")
        assert "pinrelay_delivery_owed 1.0" in await asyncio.to_thread(metrics, admin)
        await ws.close()
        await wait_until_async(
            lambda: "pinrelay_delivery_owed 0.0" in metrics(admin), 10, 0.1, "owed nothing"
        )
        # The lag the monitors judge is held 10 s (LAG_HOLD_MS); the reading is not.
        await wait_until_async(lambda: lag() < 1500, 10, 0.1, "the lag low again")
        assert fault.exists()
