"""Web Push across SIGKILLs of the relay (issue 14): pywebpush pushes while the relay
is killed and restarted at random moments; every push answered 201 reaches the
SDK's application once, decrypted, in the order it was pushed.

Web Push has no idempotency key, so a push whose answer was lost with the relay is
sent again as a new attempt (its own payload): it may arrive or not, but never as
one of the answered ones twice."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import pywebpush
import requests

from pinrelay.client.webpush import WebPushSubscription
from pinrelay.testing.wait import wait_until_async
from tests.client.test_webpush_sdk import App, running
from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

# In `make soak` (about a minute): tests/webpush/test_push_crash.py keeps the same
# guarantee (every 201 once, in order, through SIGKILLs) in `make test`.
pytestmark = pytest.mark.slow

N = 200


async def push_until_answered(
    sub: WebPushSubscription, n: int, answered: list[bytes], unsure: set[bytes]
) -> None:
    """Push message ``n`` until one attempt is answered 201."""
    deadline = time.monotonic() + 60 * TIMEOUT_FACTOR
    for attempt in range(10_000):
        payload = f"{n}.{attempt}".encode()
        try:
            r = await asyncio.to_thread(
                pywebpush.webpush, sub.to_json(), payload, ttl=3600, timeout=10
            )
        except requests.RequestException:
            unsure.add(payload)  # the relay died before or after storing it
        except pywebpush.WebPushException as exc:
            status = exc.response.status_code if exc.response is not None else None
            assert status is not None and status >= 500, exc.message
            unsure.add(payload)
        else:
            assert r.status_code == 201
            answered.append(payload)
            return
        assert time.monotonic() < deadline, "the relay did not come back"
        await asyncio.sleep(0.05)  # retry interval while the relay restarts
    raise AssertionError("unreachable")


async def killer(relay: RelayProc, stop: asyncio.Event, kills: list[float], at_least: int) -> None:
    rng = random.Random(14)
    while not stop.is_set() or len(kills) < at_least:
        await asyncio.sleep(rng.uniform(0.2, 1.0))  # a random moment for the next kill
        relay.kill()
        kills.append(time.monotonic())
        await asyncio.to_thread(relay.start)


async def test_every_answered_push_arrives_once_across_sigkills(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory()
    app = App(relay, relay.create_device())
    sub = await app.device.subscribe()
    answered: list[bytes] = []
    unsure: set[bytes] = set()
    kills: list[float] = []
    stop = asyncio.Event()
    async with running(app):
        chaos = asyncio.create_task(killer(relay, stop, kills, at_least=3))
        try:
            for n in range(N):
                await push_until_answered(sub, n, answered, unsure)
        finally:
            stop.set()
            await chaos
        await wait_until_async(
            lambda: set(answered) <= set(app.payloads),
            timeout=60,
            message=lambda: f"{len(set(answered) - set(app.payloads))} answered pushes missing",
        )
    assert len(kills) >= 3
    got = app.payloads
    assert all(m.webpush is not None and m.webpush.error is None for m in app.webpush)
    assert len(got) == len(set(got)), "a push reached the application twice"
    assert [p for p in got if p in set(answered)] == answered  # once each, in push order
    assert set(got) - set(answered) <= unsure
