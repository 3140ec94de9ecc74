"""Web Push across the relays of a cluster (issue 14): a subscription made through
one relay takes pushes sent to another relay's address, its device linked to either;
receipts and deletions are seen by every relay; a Matrix notification posted to one
relay's gateway reaches a device linked to another.

The relays share one public origin (``--public-url``, as behind a load balancer), so
an endpoint names no relay and a VAPID token's ``aud`` is that origin wherever the
request lands.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
from py_vapid import Vapid
from pywebpush import WebPushException, webpush

from tests.chat.conftest import Links
from tests.cluster.conftest import StartRelay
from tests.relayproc import RelayProc, wait_until_async
from tests.webpush.helpers import bearer, next_webpush, subscribe, vapid_public
from tests.webpush.test_matrix_gateway import next_matrix, notification

ORIGIN = "https://push.example"


def at(relay: RelayProc, sub_info: dict[str, Any]) -> dict[str, Any]:
    """The subscription with its endpoint pointed at ``relay`` (the balancer's pick)."""
    assert sub_info["endpoint"].startswith(ORIGIN + "/push/")
    return {**sub_info, "endpoint": sub_info["endpoint"].replace(ORIGIN, relay.url)}


def claims() -> dict[str, Any]:
    return {"sub": "mailto:ops@example.com", "aud": ORIGIN}


async def test_push_through_another_relay(start_relay: StartRelay, links: Links) -> None:
    a = start_relay("wp-a", extra=["--public-url", ORIGIN])
    b = start_relay("wp-b", extra=["--public-url", ORIGIN])
    vapid = Vapid()
    vapid.generate_keys()
    device = a.create_device()
    sub = subscribe(a, device, vapid_public(vapid))
    assert sub.info["endpoint"].startswith(ORIGIN)
    ws, _ = await links(a, device)
    r = webpush(
        at(b, sub.info),
        "pushed through b",
        ttl=60,
        timeout=10,
        vapid_private_key=vapid,
        vapid_claims=claims(),
        headers={"Prefer": "respond-async"},
    )
    assert r.status_code == 202, r.text
    first = await next_webpush(ws)
    assert sub.decrypt(first) == b"pushed through b"
    # b learns of the delivery on a from the store (its long-poll polls).
    receipt = r.headers["Link"].split(">")[0][1:].replace(ORIGIN, b.url)
    async with httpx.AsyncClient(timeout=30) as http:
        got = await http.get(receipt, params={"wait": 15})
    assert got.status_code == 200 and got.json()["state"] == "delivered"

    # The device moves to b; a push through a reaches it there.
    await ws.close()
    ws, _ = await links(b, device)
    r = webpush(
        at(a, sub.info),
        "and back",
        ttl=60,
        timeout=10,
        vapid_private_key=vapid,
        vapid_claims=claims(),
    )
    assert r.status_code == 201, r.text
    back = await next_webpush(ws)
    if back.id == first.id:
        # The link closed before its ack was written: a redelivery (PROTOCOL
        # "Redelivery and duplicates"), which a client drops by its cursor.
        back = await next_webpush(ws)
    assert sub.decrypt(back) == b"and back"


async def test_a_delete_through_one_relay_is_seen_by_another(start_relay: StartRelay) -> None:
    a = start_relay("wp-c", extra=["--public-url", ORIGIN])
    b = start_relay("wp-d", extra=["--public-url", ORIGIN])
    device = a.create_device()
    sub = subscribe(a, device)
    assert webpush(at(b, sub.info), "before", ttl=60, timeout=10).status_code == 201
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.delete(
            f"{a.url}/v1/devices/{device['pin']}/subscriptions/{sub.info['id']}",
            headers=bearer(device),
        )
        assert r.status_code == 204

    def gone() -> bool:
        try:
            webpush(at(b, sub.info), "after", ttl=60, timeout=10)
        except WebPushException as exc:
            return exc.response is not None and exc.response.status_code == 410
        return False

    await wait_until_async(lambda: asyncio.to_thread(gone), timeout=5)


async def test_matrix_gateway_of_another_relay(start_relay: StartRelay, links: Links) -> None:
    """A homeserver's pusher names one relay's gateway; the device is linked to another
    relay: the notification reaches it there (PROTOCOL "Matrix push gateway")."""
    a = start_relay("wp-e", extra=["--public-url", ORIGIN])
    b = start_relay("wp-f", extra=["--public-url", ORIGIN])
    device = a.create_device()
    sub = subscribe(a, device)
    ws, _ = await links(a, device)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{b.url}/_matrix/push/v1/notify",
            json=notification(sub.info["endpoint"], event_id="$across"),
        )
    assert r.status_code == 200 and r.json() == {"rejected": []}, r.text
    msg = await next_matrix(ws)
    assert msgspec.json.decode(msg.data)["notification"]["event_id"] == "$across"
