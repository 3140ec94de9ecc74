"""Chaos (issue 5): load on 3 relays and 3 NATS nodes while a random relay or NATS
node is SIGKILLed and restarted every few seconds; then a checker.

Every push carries an ``Idempotency-Key`` and is retried (same key, any live relay)
until it is answered 201, within a bounded time.  Devices link with the SDK and
know every relay (``link_urls``), so they fail over.  After the chaos stops and the
cluster settles: every push answered 201 reached the application exactly once, the
per-device cursors rise strictly, no id (or key) reached it twice, and nothing
arrived that was not pushed (a push given up on may or may not have been stored).

Only one process is down at a time (so never more than one NATS node).  Every
process is stopped by pid in ``finally``.  ``test_chaos_long`` (10 minutes) runs
with ``make chaos``; ``test_chaos_short`` in the normal suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pinrelay.client.device import Device, Message
from pinrelay.core import frames
from pinrelay.testing.wait import wait_until_async
from tests.natsproc import NatsCluster, NatsNode
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

RELAYS = 3
DEVICES = 30
#: Give up on one push (and call it "maybe stored") after this long.
PUSH_DEADLINE_S = 45.0
#: Between two pushes to one device.
PUSH_GAP_S = 0.25


@dataclass
class Ledger:
    #: Per device, the ids answered 201, in push order.
    accepted: dict[str, list[str]] = field(default_factory=dict)
    #: Per device, the keys of pushes given up on (stored or not: unknown).
    gave_up: dict[str, set[str]] = field(default_factory=dict)
    received: dict[str, list[Message]] = field(default_factory=dict)
    #: Per device, the node of each link (its first, then one per failover).
    links: dict[str, list[str]] = field(default_factory=dict)
    #: Answers other than 201 (0: no answer), and how many pushes needed a retry.
    statuses: Counter[int] = field(default_factory=Counter)
    retried: int = 0
    kills: list[str] = field(default_factory=list)


def alive(relays: list[RelayProc]) -> list[RelayProc]:
    up = [r for r in relays if r.proc is not None and r.proc.poll() is None]
    return up or relays


async def pusher(
    pin: str,
    relays: list[RelayProc],
    http: httpx.AsyncClient,
    ledger: Ledger,
    stop: asyncio.Event,
) -> None:
    """Sequential pushes to one device; each retried through any live relay until 201."""
    n = 0
    while not stop.is_set():
        n += 1
        key = f"{pin}-{n}"
        deadline = time.monotonic() + PUSH_DEADLINE_S * TIMEOUT_FACTOR
        tries = 0
        while True:
            relay = random.choice(alive(relays))
            tries += 1
            try:
                r = await http.post(
                    f"{relay.url}/v1/devices/{pin}/messages",
                    json={"data": {"n": n, "k": key}, "ttl": 3600},
                    headers={"Idempotency-Key": key},
                )
            except httpx.HTTPError:
                ledger.statuses[0] += 1
            else:
                if r.status_code == 201:
                    ledger.accepted[pin].append(r.json()["id"])
                    break
                ledger.statuses[r.status_code] += 1
                # 503 while the store elects or is away; 409 while a first attempt
                # with this key is still pending.  Nothing else is acceptable.
                assert r.status_code in (409, 503), f"{r.status_code}: {r.text}"
            if time.monotonic() > deadline:
                ledger.gave_up[pin].add(key)
                break
            await asyncio.sleep(random.uniform(0.1, 0.3))  # retry interval
        if tries > 1:
            ledger.retried += 1
        await asyncio.sleep(PUSH_GAP_S)  # pacing the load


async def restart_relay(relay: RelayProc) -> None:
    """On the same ports and data; retried while the store is still electing."""
    for attempt in range(5):
        try:
            await asyncio.to_thread(relay.start, 30.0)
            return
        except (RuntimeError, TimeoutError):
            if attempt == 4:
                raise
            relay.kill()
            await asyncio.sleep(1.0)  # back-off before the next attempt


async def chaos(
    relays: list[RelayProc],
    cluster: NatsCluster,
    ledger: Ledger,
    duration_s: float,
    kill_every: tuple[float, float],
) -> None:
    """Until ``duration_s``: wait, SIGKILL one random relay or NATS node, restart it
    2-4 s later.  One victim at a time: at most one NATS node is ever down."""
    end = time.monotonic() + duration_s
    while True:
        wait = random.uniform(*kill_every)
        if time.monotonic() + wait > end:
            await asyncio.sleep(max(0.0, end - time.monotonic()))  # the chaos schedule
            return
        await asyncio.sleep(wait)  # the chaos schedule: the next kill
        victims: list[RelayProc | NatsNode] = [*relays, *cluster.nodes]
        victim = random.choice(victims)
        name = victim.name if isinstance(victim, NatsNode) else victim.data.name
        ledger.kills.append(name)
        victim.kill()
        await asyncio.sleep(random.uniform(2.0, 4.0))  # the victim stays down a while
        if isinstance(victim, NatsNode):
            victim.start()
            await asyncio.to_thread(cluster.wait_ready, 30.0)
        else:
            await restart_relay(victim)


def check(ledger: Ledger) -> None:
    for pin, got in ledger.received.items():
        ids = [m.id for m in got]
        keys = [m.data["k"] for m in got]
        accepted = ledger.accepted[pin]
        assert len(ids) == len(set(ids)), f"{pin}: a message reached the application twice"
        assert len(keys) == len(set(keys)), f"{pin}: one push stored twice (two ids, one key)"
        cursors = [m.cursor for m in got]
        assert all(a < b for a, b in itertools.pairwise(cursors)), (
            f"{pin}: cursors not strictly increasing: {cursors}"
        )
        ns = [m.data["n"] for m in got]
        assert ns == sorted(ns), f"{pin}: not in push order"
        missing = set(accepted) - set(ids)
        assert not missing, (
            f"{pin}: {len(missing)} accepted messages never arrived: at positions "
            f"{sorted(accepted.index(m) for m in missing)} of {len(accepted)} accepted, "
            f"{len(ids)} received; links {ledger.links[pin]}; kills {ledger.kills}; "
            f"delivered in their place: {[(m.id, m.data) for m in got if m.id not in accepted]}"
        )
        extra = [m for m in got if m.id not in set(accepted)]
        unpushed = [m.id for m in extra if m.data["k"] not in ledger.gave_up[pin]]
        assert not unpushed, f"{pin}: delivered but never accepted: {unpushed}"


def chaos_run(
    tmp_path: Path,
    duration_s: float,
    kill_every: tuple[float, float] = (8.0, 15.0),
    devices: int = DEVICES,
    settle_s: float = 60.0,
) -> Ledger:
    """The scenario: start everything, push through the chaos, settle, check."""
    (tmp_path / "nats").mkdir()
    cluster = NatsCluster(tmp_path / "nats")
    relays: list[RelayProc] = []
    ledger = Ledger()
    try:
        cluster.start()
        store = ",".join(cluster.urls)
        for i in range(RELAYS):
            relays.append(
                RelayProc(tmp_path / f"r{i + 1}", extra=["--store", store, "--node-id", f"c{i}"])
            )
            relays[-1].start()
        made = [relays[i % RELAYS].create_device(f"chaos-{i}") for i in range(devices)]
        link_urls = [r.link_url for r in relays]

        async def run() -> float:
            sdks: list[Device] = []
            for i, d in enumerate(made):
                pin = d["pin"]
                ledger.accepted[pin] = []
                ledger.gave_up[pin] = set()
                ledger.received[pin] = []
                ledger.links[pin] = []

                def on_link(w: frames.Welcome, pin: str = pin) -> None:
                    ledger.links[pin].append(w.node)

                sdks.append(
                    Device(
                        pin,
                        d["token"],
                        ledger.received[pin].append,
                        # Spread over the relays; each knows all of them.
                        link_urls=link_urls[i % RELAYS :] + link_urls[: i % RELAYS],
                        backoff_base=0.05,
                        backoff_max=1.0,
                        on_link=on_link,
                    )
                )
            tasks = [asyncio.create_task(s.run()) for s in sdks]
            stop = asyncio.Event()
            http = httpx.AsyncClient(headers=relays[0].admin_headers(), timeout=10)
            pushers: list[asyncio.Task[None]] = []
            try:
                await wait_until_async(
                    lambda: all(ledger.links.values()), 20.0, 0.05, "every device linked"
                )
                pushers = [
                    asyncio.create_task(pusher(d["pin"], relays, http, ledger, stop)) for d in made
                ]
                await chaos(relays, cluster, ledger, duration_s, kill_every)
                stop.set()
                await asyncio.gather(*pushers)
                settle = time.monotonic()

                def delivered() -> bool:
                    return all(
                        {m.id for m in ledger.received[pin]} >= set(ids)
                        for pin, ids in ledger.accepted.items()
                    )

                with contextlib.suppress(TimeoutError):  # check() says what is missing
                    await wait_until_async(delivered, settle_s, 0.1)
                settled = time.monotonic() - settle
                await asyncio.sleep(1.0)  # a duplicate would show up now
                return settled
            finally:
                stop.set()
                for t in pushers:
                    t.cancel()
                for s in sdks:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(s.stop(), 5)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, *pushers, return_exceptions=True)
                await http.aclose()

        started = time.monotonic()
        settled = asyncio.run(run())
        check(ledger)
        accepted = sum(len(ids) for ids in ledger.accepted.values())
        failovers = sum(max(0, len(ns) - 1) for ns in ledger.links.values())
        print(
            f"\nchaos {duration_s:.0f} s: {len(ledger.kills)} kills {ledger.kills}; "
            f"{accepted} pushes accepted, {ledger.retried} needed retries, "
            f"given up {sum(len(k) for k in ledger.gave_up.values())}, "
            f"non-201 answers {dict(ledger.statuses)}; {failovers} device relinks; "
            f"settled in {settled:.1f} s; run {time.monotonic() - started:.0f} s"
        )
        assert accepted > devices, "hardly anything was accepted"
        return ledger
    finally:
        for relay in relays:
            try:
                relay.stop()
            finally:
                relay.kill()
        cluster.stop()


def test_chaos_short(tmp_path: Path) -> None:
    # About three kills, as 50 s at 8-15 s made, with less calm between them.
    chaos_run(tmp_path, duration_s=32.0, kill_every=(4.0, 8.0))


@pytest.mark.chaos
@pytest.mark.timeout(1200)
def test_chaos_long(tmp_path: Path) -> None:
    chaos_run(tmp_path, duration_s=600.0, kill_every=(20.0, 40.0))
