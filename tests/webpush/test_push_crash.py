"""Every 201 a Web Push sender got arrives once, through SIGKILLs of the relay.

pywebpush pushes numbered messages one after another while another thread SIGKILLs
the relay three times at random moments and restarts it on the same data.  A push
the relay answered 201 was stored on disk first; a push whose answer was lost may or
may not be there.  Then the device links and reads everything: each 201 exactly
once, nothing twice, in the order the sender got its answers.
"""

from __future__ import annotations

import time

import requests
from pywebpush import WebPushException, webpush

from tests.chat.conftest import Links
from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR
from tests.webpush.helpers import next_webpush, subscribe
from tests.webpush.sigkills import SigKills

PUSHES = 300
KILLS = 3


async def test_every_201_arrives_once_through_sigkills(
    relay_factory: RelayFactory, links: Links
) -> None:
    relay = relay_factory()
    device = relay.create_device()
    sub = subscribe(relay, device)
    confirmed: list[int] = []
    unanswered: list[int] = []
    kills = SigKills(relay, lambda: len(confirmed), total=PUSHES, kills=KILLS, jitter=20)

    def pushing() -> None:
        session = requests.Session()
        deadline = time.monotonic() + 120 * TIMEOUT_FACTOR
        n = 0
        while len(confirmed) < PUSHES and time.monotonic() < deadline and not kills.failures:
            try:
                r = webpush(sub.info, str(n), ttl=3600, timeout=5, requests_session=session)
                assert r.status_code == 201, r.text
                confirmed.append(n)
            except (requests.RequestException, WebPushException) as exc:
                response = getattr(exc, "response", None)
                # Refused connections while it restarts; a 503 while it starts or stops.
                assert response is None or response.status_code == 503, response.text
                unanswered.append(n)
                session = requests.Session()
                time.sleep(0.02)
            n += 1

    await kills.run(pushing)
    assert len(confirmed) == PUSHES, f"only {len(confirmed)} pushes answered in time"

    ws, _ = await links(relay, device)
    got: list[int] = []
    # The last push was answered 201 (the loop ends on one): it is the last stored.
    while not got or got[-1] != confirmed[-1]:
        got.append(int(sub.decrypt(await next_webpush(ws))))
    assert len(got) == len(set(got)), "a message arrived twice"
    assert got == sorted(got), "out of order"
    missing = set(confirmed) - set(got)
    assert not missing, f"answered 201 but lost: {sorted(missing)[:10]}"
    assert set(got) <= set(confirmed) | set(unanswered)
