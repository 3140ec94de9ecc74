"""DESIGN guarantees 1 and "Delivery", end to end, with SIGKILL at random moments.

A real relay process, a real SQLite file, the real SDK.  10,000 pushes (100,000 in the soak; singles
and batches, some with topics, some with short TTLs).  While the device listens,
the relay is killed with SIGKILL again and again and restarted on the same data.
At the end every accepted, unexpired, unreplaced message reached the application
exactly once and in cursor order, and nothing replaced or expired did.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from pinrelay.client.device import Device, Message
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.wait import wait_until_async
from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

TOPICS = 40


@dataclass
class Ledger:
    """What the relay accepted (a 201 seen), by message id."""

    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    replaced: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    live_topic_last: dict[str, str] = field(default_factory=dict)


class Pusher:
    """Pushes with an Idempotency-Key and retries until a 201: an ambiguous push
    (the relay died before answering) is settled by the replay, never doubled."""

    def __init__(self, relay: RelayProc, pin: str) -> None:
        self.relay = relay
        self.pin = pin
        self.http = httpx.AsyncClient(headers=relay.admin_headers(), timeout=10)
        self.retries = 0

    async def _post(self, path: str, body: dict[str, Any], key: str) -> Any:
        deadline = time.monotonic() + 60 * TIMEOUT_FACTOR
        while True:
            try:
                r = await self.http.post(
                    f"{self.relay.url}{path}", json=body, headers={"Idempotency-Key": key}
                )
                if r.status_code in (200, 201):
                    return r.json()
                assert r.status_code >= 500, r.text
            except httpx.HTTPError:
                pass
            self.retries += 1
            assert time.monotonic() < deadline, "relay did not come back"
            await asyncio.sleep(0.05)  # retry interval while the relay restarts

    async def single(self, n: int, fields: dict[str, Any]) -> dict[str, Any]:
        body = {"data": {"n": n}, **fields}
        result: dict[str, Any] = await self._post(
            f"/v1/devices/{self.pin}/messages", body, f"single-{n}"
        )
        return result

    async def batch(self, first: int, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = {
            "messages": [
                {"to": self.pin, "data": {"n": first + i}, **f} for i, f in enumerate(items)
            ]
        }
        result = await self._post("/v1/messages", body, f"batch-{first}")
        out: list[dict[str, Any]] = result["results"]
        return out


def fields_for(n: int, rng: random.Random, offline: bool) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.15:
        # Phases use separate topics: a live push must not collapse an offline one.
        phase = "off" if offline else "live"
        return {"ttl": 3600, "topic": f"{phase}{rng.randrange(TOPICS)}"}
    if offline and roll < 0.25:
        return {"ttl": 1}  # expires before the device links
    return {"ttl": 3600, "urgency": rng.choice(["low", "normal", "high"])}


async def push_range(
    pusher: Pusher, ledger: Ledger, start: int, stop: int, rng: random.Random, offline: bool
) -> None:
    n = start
    while n < stop:
        if rng.random() < 0.5:
            size = min(rng.randint(20, 200), stop - n)
            items = [fields_for(n + i, rng, offline) for i in range(size)]
            results = await pusher.batch(n, items)
        else:
            size = 1
            items = [fields_for(n, rng, offline)]
            results = [await pusher.single(n, items[0])]
        for f, r in zip(items, results, strict=True):
            assert r["cursor"] is not None, r
            mid = r["id"]
            topic = f.get("topic")
            if topic is not None:
                previous = ledger.live_topic_last.get(topic)
                if offline and previous is not None:
                    ledger.replaced.add(previous)
                ledger.live_topic_last[topic] = mid
            if f["ttl"] == 1:
                ledger.expired.add(mid)
            ledger.accepted[mid] = {**f, "cursor": r["cursor"], "n": n}
            ledger.order.append(mid)
            n += 1


async def killer(relay: RelayProc, stop: asyncio.Event, kills: list[float], min_kills: int) -> None:
    """Kill and restart until told to stop, and at least ``min_kills`` times (kills
    after the last push still hit the device mid-delivery)."""
    rng = random.Random(7)
    while not stop.is_set() or len(kills) < min_kills:
        await asyncio.sleep(rng.uniform(0.2, 1.0))  # a random moment for the next kill
        relay.kill()
        kills.append(time.monotonic())
        await asyncio.to_thread(relay.start)


async def test_sigkill_loses_nothing_and_duplicates_nothing(
    relay_factory: RelayFactory,
) -> None:
    await crash_run(relay_factory, total=10_000, offline=2_000, min_kills=5)


@pytest.mark.slow
async def test_soak_sigkill_100k(relay_factory: RelayFactory) -> None:
    """`make soak`: ten times the messages, at least 30 kills."""
    await crash_run(relay_factory, total=100_000, offline=10_000, min_kills=30)


async def crash_run(relay_factory: RelayFactory, total: int, offline: int, min_kills: int) -> None:
    """Push ``total`` messages (``offline`` of them before the device links) while the
    relay is SIGKILLed at least ``min_kills`` times; check the guarantees."""
    relay = relay_factory()
    device = relay.create_device("crash-test")
    pin = device["pin"]
    rng = random.Random(2026)
    ledger = Ledger()
    pusher = Pusher(relay, pin)

    # Phase 1, device offline: topics collapse and short TTLs run out unseen.
    await push_range(pusher, ledger, 0, offline, rng, offline=True)
    # Waits out the ttl=1 messages (what the phase is about): all expired by now.
    await asyncio.sleep(1.5)
    ledger.live_topic_last.clear()

    # Phase 2: the device listens while the relay is SIGKILLed at random moments.
    received: list[Message] = []
    late: list[str] = []

    def on_message(m: Message) -> None:
        if time.time() * 1000 > parse_rfc3339(m.expires_at) + 500:
            late.append(m.id)
        received.append(m)

    sdk = Device(
        pin, device["token"], on_message, url=relay.url, backoff_base=0.05, backoff_max=0.5
    )
    listening = asyncio.create_task(sdk.run())
    stop = asyncio.Event()
    kills: list[float] = []
    chaos = asyncio.create_task(killer(relay, stop, kills, min_kills))
    try:
        await push_range(pusher, ledger, offline, total, rng, offline=False)
    finally:
        stop.set()
        await chaos
    if relay.proc is None or relay.proc.poll() is not None:
        relay.start()

    # Every live-phase topic message may have been replaced before delivery except
    # the last of each topic; everything else must arrive.
    live_ids = ledger.order[
        ledger.order.index(next(m for m in ledger.order if ledger.accepted[m]["n"] == offline)) :
    ]
    last_of_topic = set(ledger.live_topic_last.values())
    optional = {
        m
        for m in live_ids
        if ledger.accepted[m].get("topic") is not None and m not in last_of_topic
    }
    required = set(ledger.accepted) - ledger.replaced - ledger.expired - optional
    with contextlib.suppress(TimeoutError):  # the asserts below say what is missing
        await wait_until_async(lambda: required <= {m.id for m in received}, 60.0, 0.2)
    await sdk.stop()
    listening.cancel()
    await pusher.http.aclose()

    ids = [m.id for m in received]
    assert len(kills) >= min_kills, f"the relay was killed only {len(kills)} times"
    assert len(ids) == len(set(ids)), "the application saw a message twice"
    cursors = [m.cursor for m in received]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    missing = required - set(ids)
    assert not missing, (
        f"{len(missing)} accepted messages never arrived: "
        + repr(sorted((ledger.accepted[m]["n"], ledger.accepted[m]) for m in missing)[:10])
        + f" last received cursor {cursors[-1] if cursors else None}"
    )
    assert not set(ids) & ledger.replaced, "a replaced topic message was delivered"
    assert not set(ids) & ledger.expired, "an expired message was delivered"
    assert not late, f"{len(late)} messages arrived after their expiry"
    assert set(ids) <= set(ledger.accepted), "a message nobody pushed arrived"
    # Per-device order is acceptance order (one pusher, sequential requests).
    accepted_rank = {m: i for i, m in enumerate(ledger.order)}
    assert [accepted_rank[m] for m in ids] == sorted(accepted_rank[m] for m in ids)
    assert len(ledger.accepted) == total
    # Nothing unacknowledged was dropped: the relay keeps nothing back either.
    with relay.client() as c:
        shown = c.show_device(pin)
    assert shown["acked_cursor"] == cursors[-1]
