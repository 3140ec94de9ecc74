"""The Matrix gateway through SIGKILLs of the relay, as a homeserver drives it: each
notification is retried until it is answered 200 (the spec's retry with backoff), while
another thread SIGKILLs the relay and restarts it on the same data.  Every event then
arrives exactly once, in order: a 200 means stored, and a retry of a notification whose
answer was lost is recognised by its event_id (PROTOCOL "Matrix push gateway")."""

from __future__ import annotations

import time

import httpx
import msgspec
import pytest

from tests.chat.conftest import Links
from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR
from tests.webpush.helpers import subscribe
from tests.webpush.sigkills import SigKills
from tests.webpush.test_matrix_gateway import next_matrix, notification

# In `make soak`: the gateway stores through the Web Push path, whose SIGKILL test
# (tests/webpush/test_push_crash.py) runs in `make test`.
pytestmark = pytest.mark.slow

EVENTS = 150
KILLS = 2


async def test_every_event_arrives_once_through_sigkills(
    relay_factory: RelayFactory, links: Links
) -> None:
    relay = relay_factory()
    device = relay.create_device()
    endpoint = subscribe(relay, device).info["endpoint"]
    answered: list[int] = []
    retries = 0
    kills = SigKills(relay, lambda: len(answered), total=EVENTS, kills=KILLS, jitter=15)

    def homeserver() -> None:
        nonlocal retries
        deadline = time.monotonic() + 120 * TIMEOUT_FACTOR
        client = httpx.Client(timeout=5)
        for n in range(EVENTS):
            body = notification(endpoint, event_id=f"${n}")
            while time.monotonic() < deadline and not kills.failures:
                try:
                    r = client.post(f"{relay.url}/_matrix/push/v1/notify", json=body)
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code == 200:
                    assert r.json() == {"rejected": []}, r.text
                    answered.append(n)
                    break
                # Refused while it restarts, or a 503 while it starts or stops.
                assert r is None or r.status_code == 503, r.text
                retries += 1
                client = httpx.Client(timeout=5)
                time.sleep(0.02)
        client.close()

    await kills.run(homeserver)
    assert answered == list(range(EVENTS)), f"only {len(answered)} events answered in time"
    assert retries > 0, "no request met a killed relay: the test proved nothing"

    ws, _ = await links(relay, device)
    got: list[int] = []
    while not got or got[-1] != EVENTS - 1:
        msg = await next_matrix(ws)
        got.append(int(msgspec.json.decode(msg.data)["notification"]["event_id"][1:]))
    assert got == list(range(EVENTS)), "lost, repeated or out of order"
