"""Relays on one NATS JetStream cluster (issue 5): real nats-server and relay processes.

Three clustered ``nats-server`` processes (one per module) and ``pinrelay serve
--store nats://...`` relays on loopback, each stopped by pid.  Each test names its
relays apart (``--node-id``), so their routes and live-relay records do not meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from pinrelay.client.device import Device, LinkRefused, Message
from pinrelay.core import frames
from pinrelay.relay import STORE_GRACE_S
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.cluster.conftest import StartRelay
from tests.conftest import RelayFactory
from tests.linkclient import link, recv, send
from tests.natsproc import NatsCluster, NatsNode
from tests.relayproc import TIMEOUT_FACTOR, RelayProc


def info(relay: RelayProc) -> dict[str, Any]:
    with relay.client() as c:
        return c.info()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll ``check`` until true (:func:`wait_until`); the seconds it took."""
    start = time.monotonic()
    wait_until(check, timeout, 0.05, what)
    return time.monotonic() - start


def all_delivered(accepted: dict[str, list[str]], received: dict[str, list[Message]]) -> bool:
    """Whether every device received (at least) every id accepted for it."""
    return all({m.id for m in received[pin]} >= set(ids) for pin, ids in accepted.items())


async def until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> float:
    """:func:`wait_for` in a running loop."""
    start = time.monotonic()
    await wait_until_async(check, timeout, 0.02, what)
    return time.monotonic() - start


def test_device_links_to_another_relay_at_once(start_relay: StartRelay) -> None:
    a, b = start_relay("a1"), start_relay("b1")
    # Each lists both, its own first (B's record may take a heartbeat to reach A).
    wait_for("both relays in A's info", lambda: info(a)["link_urls"] == [a.link_url, b.link_url])
    wait_for("both relays in B's info", lambda: info(b)["link_urls"] == [b.link_url, a.link_url])
    assert info(b)["node"] == "b1"
    # A third relay with B's node id is refused (its routes would mix with B's).
    with pytest.raises(RuntimeError, match="in use by a live relay"):
        start_relay("b1", name="b1-twin")

    async def run() -> None:
        device = a.create_device("made on A")
        got: list[Message] = []
        welcomed: list[frames.Welcome] = []
        sdk = Device(
            device["pin"],
            device["token"],
            got.append,
            link_urls=[b.link_url],
            on_link=welcomed.append,
        )
        task = asyncio.create_task(sdk.run())
        try:
            await until("the link to B", lambda: bool(welcomed))
            assert welcomed[0].node == "b1"
            with a.client() as c:
                pushed = await asyncio.to_thread(c.push, device["pin"], {"hi": 1}, ttl=60)
            await until("the push through A to arrive via B", lambda: bool(got))
            assert [m.id for m in got] == [pushed["id"]]

            # A sees the device online (linked to B) from the route bucket.
            def online_via_a() -> bool:
                with a.client() as c:
                    return bool(c.show_device(device["pin"])["online"])

            await until("A to see the device online", online_via_a)
            # So a ttl=0 push through A ("only if online now") is stored, not dropped.
            with a.client() as c:
                now = await asyncio.to_thread(c.push, device["pin"], {"hi": 0}, ttl=0)
            assert not now.get("dropped"), now
            await until("the ttl=0 push to arrive", lambda: len(got) == 2)
            assert got[1].id == now["id"]
        finally:
            await sdk.stop()
            task.cancel()

    asyncio.run(run())


def test_a_long_poll_on_one_relay_is_woken_by_a_push_through_another(
    start_relay: StartRelay,
) -> None:
    a, b = start_relay("a6"), start_relay("b6")
    device = a.create_device("polls B")
    pin, auth = device["pin"], {"Authorization": f"Bearer {device['token']}"}

    async def run() -> tuple[dict[str, Any], float, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as http:
            poll = asyncio.create_task(
                http.get(f"{b.url}/v1/devices/{pin}/inbox?wait=30", headers=auth)
            )
            # No signal that the poll is parked at B: give it a moment, in which it
            # must not answer (nothing to deliver yet).
            await asyncio.sleep(0.5)
            assert not poll.done()
            pushed = await http.post(
                f"{a.url}/v1/devices/{pin}/messages",
                json={"data": {"via": "A"}, "ttl": 60},
                headers=a.admin_headers(),
            )
            assert pushed.status_code == 201, pushed.text
            at = time.monotonic()
            answer = await poll
            return pushed.json(), time.monotonic() - at, answer.json()

    pushed, took, answer = asyncio.run(run())
    assert [m["id"] for m in answer["messages"]] == [pushed["id"]]
    assert answer["cursor"] == pushed["cursor"]
    # Woken through NATS, not found by the waiter's 5 s recheck of the store.
    assert took < 3.0, f"the poll on B answered {took:.1f} s after the push"


def test_a_link_on_another_relay_replaces_the_first_and_kicks_reach_it(
    start_relay: StartRelay,
) -> None:
    a, b = start_relay("a4"), start_relay("b4")
    device = a.create_device()
    pin, token = device["pin"], device["token"]

    async def run() -> None:
        first_links: list[frames.Welcome] = []
        second_links: list[frames.Welcome] = []
        first = Device(
            pin, token, lambda m: None, link_urls=[a.link_url], on_link=first_links.append
        )
        second = Device(
            pin, token, lambda m: None, link_urls=[b.link_url], on_link=second_links.append
        )
        t1 = asyncio.create_task(first.run())
        await until("the first link, on A", lambda: bool(first_links))
        t2 = asyncio.create_task(second.run())
        # A "replaced" error makes the SDK stop: the first link's run() returns.
        await asyncio.wait_for(t1, 10 * TIMEOUT_FACTOR)
        assert [w.node for w in second_links] == ["b4"]
        # A token rotated through A closes the device's link on B.
        with a.client() as c:
            await asyncio.to_thread(c.rotate_token, pin)
        with pytest.raises(LinkRefused) as refused:
            await asyncio.wait_for(t2, 10 * TIMEOUT_FACTOR)
        assert refused.value.status == 401

    asyncio.run(run())


def test_idempotent_retry_through_another_relay_returns_the_first_answer(
    start_relay: StartRelay,
) -> None:
    a, b = start_relay("a3"), start_relay("b3")
    device = a.create_device()
    with a.client() as ca, b.client() as cb:
        first = ca.push(device["pin"], {"n": 1}, ttl=60, idempotency_key="retry-1")
        again = cb.push(device["pin"], {"n": 1}, ttl=60, idempotency_key="retry-1")
        assert again == first
        shown = cb.show_device(device["pin"])
    assert shown["backlog"] == 1


@dataclass
class Ledger:
    """Per device: pushes answered 201 in order, and pushes whose answer was lost."""

    accepted: dict[str, list[str]] = field(default_factory=dict)
    maybe: dict[str, set[str]] = field(default_factory=dict)
    received: dict[str, list[Message]] = field(default_factory=dict)
    #: Monotonic time each accepted push was sent, by id (failover timing).
    sent_at: dict[str, float] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)


async def pusher(
    pin: str,
    relays: list[RelayProc],
    clients: list[httpx.AsyncClient],
    ledger: Ledger,
    stop: asyncio.Event,
    offset: int,
) -> None:
    """Sequential pushes to one device, alternating relays; a dead relay is skipped."""
    n = 0
    turn = offset
    while not stop.is_set():
        k = turn % len(relays)
        turn += 1
        sent = time.monotonic()
        try:
            r = await clients[k].post(
                f"{relays[k].url}/v1/devices/{pin}/messages",
                json={"data": {"n": n}, "ttl": 600},
            )
        except httpx.HTTPError:
            # It may have been stored before the relay died: allowed, not required.
            ledger.maybe.setdefault(pin, set())
            await asyncio.sleep(0.02)  # pacing: retry through the next relay
            continue
        if r.status_code == 201:
            mid = r.json()["id"]
            ledger.accepted.setdefault(pin, []).append(mid)
            ledger.sent_at[mid] = sent
            n += 1
        else:
            assert r.status_code >= 500, r.text
        await asyncio.sleep(0.05)  # pacing the load


def test_relay_failover_delivers_everything_exactly_once(start_relay: StartRelay) -> None:
    a, b = start_relay("a2"), start_relay("b2")
    wait_for("both relays listed", lambda: len(info(a)["link_urls"]) == 2)
    devices = [(a if i % 2 else b).create_device(f"d{i}") for i in range(50)]
    urls_a, urls_b = info(a)["link_urls"], info(b)["link_urls"]
    assert urls_a == [a.link_url, b.link_url] and urls_b == [b.link_url, a.link_url]

    async def run() -> tuple[float, list[float], list[float]]:
        ledger = Ledger()
        nodes: dict[str, list[str]] = {}
        sdks: list[Device] = []
        for i, d in enumerate(devices):
            pin = d["pin"]
            ledger.received[pin] = []

            def on_message(m: Message, pin: str = pin) -> None:
                ledger.received[pin].append(m)
                ledger.received_at[m.id] = time.monotonic()

            def on_link(w: frames.Welcome, pin: str = pin) -> None:
                nodes.setdefault(pin, []).append(w.node)

            sdks.append(
                Device(
                    pin,
                    d["token"],
                    on_message,
                    # Half start on A, half on B; each knows both (from /v1/info).
                    link_urls=urls_a if i % 2 else urls_b,
                    backoff_base=0.05,
                    backoff_max=0.5,
                    on_link=on_link,
                )
            )
        tasks = [asyncio.create_task(s.run()) for s in sdks]
        stop = asyncio.Event()
        relays = [a, b]
        clients = [httpx.AsyncClient(headers=r.admin_headers(), timeout=10) for r in relays]
        try:
            await until("every device linked", lambda: len(nodes) == len(devices))
            assert {ns[0] for ns in nodes.values()} == {"a2", "b2"}
            pushers = [
                asyncio.create_task(pusher(d["pin"], relays, clients, ledger, stop, i))
                for i, d in enumerate(devices)
            ]
            await asyncio.sleep(1.5)  # pacing: the load runs a while before the kill
            on_a = {pin for pin, ns in nodes.items() if ns[-1] == "a2"}
            a.kill()
            killed = time.monotonic()
            # A push through the survivor can take a few seconds while JetStream fails
            # over (DECISIONS: single-push failover tail): wait for one per moved device.
            await until(
                "a push accepted after the kill for every moved device",
                lambda: all(
                    any(ledger.sent_at[m] > killed for m in ledger.accepted.get(pin, []))
                    for pin in on_a
                ),
                timeout=15,
            )
            stop.set()
            await asyncio.gather(*pushers)

            await until(
                "every accepted message delivered",
                lambda: all_delivered(ledger.accepted, ledger.received),
                timeout=20,
            )
            await asyncio.sleep(0.3)  # a duplicate would show up now
        finally:
            for s in sdks:
                await s.stop()
            for t in tasks:
                t.cancel()
            for c in clients:
                await c.aclose()

        # Every device that was on A moved to B.
        assert on_a, "no device was linked to the killed relay"
        for pin in on_a:
            assert nodes[pin][-1] == "b2", nodes[pin]
        # Exactly once, in order, nothing that was not pushed.
        for pin, got in ledger.received.items():
            ids = [m.id for m in got]
            accepted = ledger.accepted.get(pin, [])
            assert len(ids) == len(set(ids)), f"{pin}: a message reached the application twice"
            cursors = [m.cursor for m in got]
            assert cursors == sorted(cursors), f"{pin}: out of order"
            assert set(accepted) <= set(ids), f"{pin}: accepted messages never arrived"
            ns = [m.data["n"] for m in got]
            assert ns == sorted(ns), f"{pin}: not in push order"
            extra = set(ids) - set(accepted)
            assert not extra or pin in ledger.maybe, f"{pin}: {len(extra)} unpushed messages"
        # Failover time: from the kill to the first message pushed after it, per moved device.
        moved = []
        for pin in on_a:
            after = [m for m in ledger.accepted[pin] if ledger.sent_at[m] > killed]
            assert after, f"{pin}: nothing pushed after the kill"
            moved.append(ledger.received_at[after[0]] - killed)
        latency = [
            ledger.received_at[m] - ledger.sent_at[m]
            for ids in ledger.accepted.values()
            for m in ids
            if ledger.sent_at[m] < killed
        ]
        return killed, moved, latency

    killed, moved, latency = asyncio.run(run())
    gone = wait_for(
        "the killed relay to leave /v1/info",
        lambda: info(b)["link_urls"] == [b.link_url],
        timeout=10,
    )
    since_kill = time.monotonic() - killed
    print(
        f"\nfailover: {len(moved)} devices moved; first post-kill push delivered after "
        f"p50 {statistics.median(moved):.2f} s, max {max(moved):.2f} s; "
        f"push->device before the kill p50 {statistics.median(latency) * 1000:.1f} ms; "
        f"dead relay left /v1/info {since_kill - gone:.1f}-{since_kill:.1f} s after the kill"
    )
    # Links retry within 0.5 s and know both relays: a device that waited for a
    # heartbeat (30 s) or for the dead relay to leave /v1/info would take far longer.
    # 10 s, not 5: with a CPU hog and an fsync loop beside the suite one device took
    # 6.8 s (pushes then took 0.4 s at p50).
    assert max(moved) < 10 * TIMEOUT_FACTOR


def test_a_relay_without_its_store_refuses_pushes_and_drains_links(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    """Its own NATS cluster, killed whole: /readyz fails, pushes get 503 with
    Retry-After, links get ``drain`` ("store unavailable"); all recover after."""
    (tmp_path / "nats-own").mkdir()
    cluster = NatsCluster(tmp_path / "nats-own")
    cluster.start()
    try:
        relay = relay_factory("solo", extra=["--store", ",".join(cluster.urls), "--node-id", "s"])
        device = relay.create_device()
        with relay.client() as c:
            c.push(device["pin"], {"n": 1}, ttl=60)

        def push(n: int) -> httpx.Response:
            return httpx.post(
                f"{relay.url}/v1/devices/{device['pin']}/messages",
                json={"data": {"n": n}, "ttl": 60},
                headers=relay.admin_headers(),
                timeout=15,
            )

        def serving() -> NatsNode:
            for node in cluster.nodes:
                conns = httpx.get(f"http://127.0.0.1:{node.http_port}/connz", timeout=2).json()
                if any(c.get("name") == "pinrelay-s" for c in conns.get("connections") or []):
                    return node
            raise AssertionError("the relay is connected to no NATS node")

        async def drained() -> frames.Drain:
            ws, _ = await link(relay, device)
            try:
                msg = await recv(ws)
                assert isinstance(msg, frames.Msg)
                await send(ws, frames.Ack(cursor=msg.cursor))
                # Losing the NATS node it talks to: the relay reconnects to another
                # one at once, its links stay, pushes go on (after an election).
                serving().kill()
                with pytest.raises(TimeoutError):
                    await recv(ws, timeout=STORE_GRACE_S + 1.5)
                r = await asyncio.to_thread(
                    wait_for, "a push with one NATS node down", lambda: push(2).status_code == 201
                )
                assert r < 15
                msg = await recv(ws, timeout=10)
                assert isinstance(msg, frames.Msg), msg
                assert msgspec.json.decode(msg.data) == {"n": 2}
                for node in cluster.nodes:
                    node.kill()
                frame = await recv(ws, timeout=10)
                assert isinstance(frame, frames.Drain), frame
                return frame
            finally:
                await ws.close()

        drain = asyncio.run(drained())
        assert drain.reason == "store unavailable"
        assert drain.retry_after_ms > 0
        wait_for(
            "readyz to fail",
            lambda: httpx.get(f"{relay.url}/readyz", timeout=5).status_code == 503,
        )
        r = push(3)
        assert r.status_code == 503, r.text
        assert "retry-after" in r.headers
        cluster.start()
        wait_for(
            "readyz to recover",
            lambda: httpx.get(f"{relay.url}/readyz", timeout=5).status_code == 200,
            timeout=20,
        )

        # Connected is not yet stored: streams elect leaders after a restart (503 until).
        def pushed() -> bool:
            r = push(4)
            assert r.status_code in (201, 503), r.text
            return r.status_code == 201

        wait_for("a push to be stored again", pushed, timeout=30)
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()


def test_relays_started_together_on_a_fresh_cluster_all_come_up(tmp_path: Path) -> None:
    # They race to create the same buckets while JetStream is still placing them.
    cluster = NatsCluster(tmp_path / "nats")
    relays = [
        RelayProc(tmp_path / f"r{i}", extra=["--store", "", "--node-id", f"fresh{i}"])
        for i in range(3)
    ]
    try:
        cluster.start()
        for r in relays:
            r.extra[1] = ",".join(cluster.urls)
            r.start(wait=False)
        for r in relays:
            r.wait_ready(40)
        wait_for("every relay listed", lambda: len(info(relays[0])["link_urls"]) == 3)
    finally:
        for r in relays:
            r.kill()
        cluster.stop()
