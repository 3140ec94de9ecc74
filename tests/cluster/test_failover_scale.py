"""Relay failover at the issue's scale: 3 relays, 500 SDK devices, pushes through all.

The devices link across the three relays (each knows all three from /v1/info) while
batch pushes flow through every relay; one relay is SIGKILLed.  Afterwards: every
device it held is linked to a live relay, and every push answered 201 reached the
application exactly once and in push order.  A batch whose answer was lost with the
relay may or may not have been stored; those items are allowed, not required.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from dataclasses import dataclass, field

import httpx

from pinrelay.client.device import Device, Message
from pinrelay.core import frames
from tests.cluster.conftest import StartRelay
from tests.cluster.test_cluster import all_delivered, info, until, wait_for
from tests.relayproc import RelayProc

DEVICES = 500
PUSHERS = 5
#: Between two batches of one pusher (each batch: one message per device it owns).
BATCH_GAP_S = 1.0


@dataclass
class Ledger:
    accepted: dict[str, list[str]] = field(default_factory=dict)
    #: Ids of items in batches whose answer was lost (stored or not: unknown).
    maybe: set[str] = field(default_factory=set)
    received: dict[str, list[Message]] = field(default_factory=dict)
    nodes: dict[str, list[str]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)
    lost_batches: int = 0


async def pusher(
    pins: list[str],
    relays: list[RelayProc],
    http: httpx.AsyncClient,
    ledger: Ledger,
    stop: asyncio.Event,
    offset: int,
) -> None:
    """Sequential batches to ``pins`` (so each device's pushes are ordered), one relay
    after another; a batch the relay did not answer counts as maybe stored."""
    n = 0
    for turn in itertools.count(offset):
        if stop.is_set():
            return
        relay = relays[turn % len(relays)]
        if relay.proc is None or relay.proc.poll() is not None:
            continue
        body = {"messages": [{"to": p, "data": {"n": n}, "ttl": 600} for p in pins]}
        keys = [f"{p}-{n}" for p in pins]
        n += 1
        sent = time.monotonic()
        try:
            r = await http.post(f"{relay.url}/v1/messages", json=body)
        except httpx.HTTPError:
            ledger.lost_batches += 1
            ledger.maybe.update(keys)
            continue
        if r.status_code == 200:
            for pin, item in zip(pins, r.json()["results"], strict=True):
                assert item["status"] == 201, item
                ledger.accepted[pin].append(item["id"])
                ledger.sent_at[item["id"]] = sent
        else:
            assert r.status_code >= 500, r.text  # not stored: the relay is going away
        await asyncio.sleep(BATCH_GAP_S * random.uniform(0.8, 1.2))  # pacing the load


def test_500_devices_survive_the_loss_of_one_of_three_relays(start_relay: StartRelay) -> None:
    relays = [start_relay(name) for name in ("x7", "y7", "z7")]
    wait_for("every relay listed", lambda: all(len(info(r)["link_urls"]) == 3 for r in relays))
    urls = [info(r)["link_urls"] for r in relays]
    victim = relays[0]

    async def run() -> tuple[Ledger, float, set[str]]:
        async with httpx.AsyncClient(headers=victim.admin_headers(), timeout=30) as admin:
            gate = asyncio.Semaphore(20)

            async def create(i: int) -> dict[str, str]:
                async with gate:
                    r = await admin.post(f"{relays[i % 3].url}/v1/devices", json={})
                    assert r.status_code == 201, r.text
                    made: dict[str, str] = r.json()
                    return made

            devices = await asyncio.gather(*(create(i) for i in range(DEVICES)))
        ledger = Ledger()
        sdks: list[Device] = []
        for i, d in enumerate(devices):
            pin = d["pin"]
            ledger.accepted[pin], ledger.received[pin] = [], []

            def on_message(m: Message, pin: str = pin) -> None:
                ledger.received[pin].append(m)
                ledger.received_at[m.id] = time.monotonic()

            def on_link(w: frames.Welcome, pin: str = pin) -> None:
                ledger.nodes.setdefault(pin, []).append(w.node)

            sdks.append(
                Device(
                    pin,
                    d["token"],
                    on_message,
                    link_urls=urls[i % 3],  # a third starts on each relay
                    backoff_base=0.05,
                    backoff_max=1.0,
                    on_link=on_link,
                )
            )
        tasks = [asyncio.create_task(s.run()) for s in sdks]
        stop = asyncio.Event()
        http = httpx.AsyncClient(
            headers=victim.admin_headers(),
            timeout=30,
            limits=httpx.Limits(max_connections=PUSHERS * 3),
        )
        try:
            await until("every device linked", lambda: len(ledger.nodes) == DEVICES, 60)
            pins = [d["pin"] for d in devices]
            pushers = [
                asyncio.create_task(pusher(pins[j::PUSHERS], relays, http, ledger, stop, offset=j))
                for j in range(PUSHERS)
            ]
            await asyncio.sleep(3.0)  # pacing: the load runs a while before the kill
            on_victim = {pin for pin, ns in ledger.nodes.items() if ns[-1] == "x7"}
            victim.kill()
            killed = time.monotonic()
            await until(
                "a push accepted after the kill for every moved device",
                lambda: all(
                    any(ledger.sent_at[m] > killed for m in ledger.accepted[pin])
                    for pin in on_victim
                ),
                timeout=30,
            )
            stop.set()
            await asyncio.gather(*pushers)

            await until(
                "every accepted message delivered",
                lambda: all_delivered(ledger.accepted, ledger.received),
                timeout=60,
            )
            await asyncio.sleep(0.5)  # a duplicate would show up now
        finally:
            for s in sdks:
                await s.stop()
            for t in tasks:
                t.cancel()
            await http.aclose()
        return ledger, killed, on_victim

    ledger, killed, on_victim = asyncio.run(run())
    assert len(on_victim) > DEVICES // 5, f"only {len(on_victim)} devices on the killed relay"
    for pin in on_victim:
        assert ledger.nodes[pin][-1] in ("y7", "z7"), ledger.nodes[pin]
    total = 0
    for pin, got in ledger.received.items():
        ids = [m.id for m in got]
        assert len(ids) == len(set(ids)), f"{pin}: a message reached the application twice"
        cursors = [m.cursor for m in got]
        assert all(a < b for a, b in itertools.pairwise(cursors)), f"{pin}: out of order"
        ns = [m.data["n"] for m in got]
        assert all(a < b for a, b in itertools.pairwise(ns)), f"{pin}: not in push order"
        accepted = ledger.accepted[pin]
        assert set(accepted) <= set(ids), f"{pin}: accepted messages never arrived"
        extra = [m for m in got if m.id not in set(accepted)]
        assert all(f"{pin}-{m.data['n']}" in ledger.maybe for m in extra), (
            f"{pin}: delivered what was never pushed"
        )
        total += len(accepted)
    # The first message pushed after the kill, per device that moved.
    moved = []
    for pin in on_victim:
        after = [m for m in ledger.accepted[pin] if ledger.sent_at[m] > killed]
        assert after, f"{pin}: nothing accepted after the kill"
        moved.append(ledger.received_at[after[0]] - killed)
    moved.sort()
    print(
        f"\n{total} accepted pushes to {DEVICES} devices, all delivered once and in order; "
        f"{len(on_victim)} devices moved off the killed relay; first post-kill push "
        f"delivered after p50 {statistics.median(moved):.2f} s, "
        f"max {moved[-1]:.2f} s; {ledger.lost_batches} batches lost with the relay"
    )
