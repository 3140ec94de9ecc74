"""The Matrix push gateway (PROTOCOL "Matrix push gateway") against a real relay: a
homeserver's ``POST /_matrix/push/v1/notify`` as Synapse shapes it, over real HTTP;
the device receives a ``matrix`` message on its link.  On the cluster:
test_matrix_gateway_on_cluster.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import pytest
from py_vapid import Vapid
from websockets.asyncio.client import ClientConnection

from pinrelay.core import frames
from tests.chat.conftest import Links
from tests.conftest import RelayFactory
from tests.linkclient import recv, send
from tests.relayproc import RelayProc
from tests.webpush.helpers import bearer, subscribe, vapid_public
from tests.webpush.test_push_service import backlog, push, status_of

DEVICE_FIELDS = {"app_id": "im.vector.app.android", "pushkey_ts": 1700000000, "data": {}}


def notification(*pushkeys: str, event_id: str | None = "$ev1", **extra: Any) -> dict[str, Any]:
    """A notification as Synapse sends it, to these pushkeys."""
    fields: dict[str, Any] = {
        "room_id": "!room:example.org",
        "type": "m.room.message",
        "sender": "@alice:example.org",
        "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
        "counts": {"unread": 2},
        "devices": [
            {**DEVICE_FIELDS, "pushkey": k, "tweaks": {"sound": "default"}} for k in pushkeys
        ],
    }
    if event_id is not None:
        fields["event_id"] = event_id
    return {"notification": {**fields, **extra}}


def notify(relay: RelayProc, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{relay.url}/_matrix/push/v1/notify", json=body, timeout=10)


async def next_matrix(ws: ClientConnection) -> frames.Msg:
    """The next ``matrix`` message (acknowledging it)."""
    while True:
        frame = await recv(ws, 10)
        if isinstance(frame, frames.Msg):
            await send(ws, frames.Ack(cursor=frame.cursor))
            if frame.kind == "matrix":
                return frame


@pytest.mark.shared_relay
class TestMatrixGateway:
    def test_discovery(self, relay: RelayProc) -> None:
        r = httpx.get(f"{relay.url}/_matrix/push/v1/notify")
        assert r.status_code == 200 and r.json() == {"unifiedpush": {"gateway": "matrix"}}

    async def test_the_device_gets_the_notification(self, relay: RelayProc, links: Links) -> None:
        device = relay.create_device()
        endpoint = subscribe(relay, device).info["endpoint"]
        other = relay.create_device()
        other_id = subscribe(relay, other).info["id"]  # a bare subscription id works too
        body = notification(endpoint, other_id)
        r = notify(relay, body)
        assert r.status_code == 200 and r.json() == {"rejected": []}
        ws, _ = await links(relay, device)
        msg = await next_matrix(ws)
        data = msgspec.json.decode(msg.data)
        assert data["subscription"] == endpoint.rsplit("/", 1)[1]
        # The notification as sent, its devices narrowed to this one.
        expected = dict(body["notification"], devices=[body["notification"]["devices"][0]])
        assert data["notification"] == expected
        assert msg.urgency == "high" and msg.sender is None
        assert backlog(relay, other["pin"]) == 1

    def test_rejected_pushkeys(self, relay: RelayProc) -> None:
        device = relay.create_device()
        good = subscribe(relay, device).info
        deleted = subscribe(relay, device).info
        r = httpx.delete(
            f"{relay.url}/v1/devices/{device['pin']}/subscriptions/{deleted['id']}",
            headers=bearer(device),
        )
        assert r.status_code == 204
        vapid = Vapid()
        vapid.generate_keys()
        restricted = subscribe(relay, relay.create_device(), vapid_public(vapid)).info
        gone_device = relay.create_device()
        orphan = subscribe(relay, gone_device).info
        with relay.client() as c:
            c.delete_device(gone_device["pin"])
        unknown = f"{relay.url}/push/AAAAAAAAAAAAAAAAAAAAAA"
        elsewhere = "https://ntfy.example.org/upAbCdEf?up=1"
        keys = [
            good["endpoint"],
            deleted["endpoint"],
            restricted["endpoint"],
            orphan["endpoint"],
            unknown,
            elsewhere,
        ]
        r = notify(relay, notification(*keys))
        assert r.status_code == 200, r.text
        assert sorted(r.json()["rejected"]) == sorted(keys[1:])
        assert backlog(relay, device["pin"]) == 1

    def test_a_retry_is_stored_once(self, relay: RelayProc) -> None:
        device = relay.create_device()
        endpoint = subscribe(relay, device).info["endpoint"]
        body = notification(endpoint, event_id="$retried")
        assert notify(relay, body).json() == {"rejected": []}
        body["notification"]["counts"] = {"unread": 3}  # the retry may count anew
        assert notify(relay, body).json() == {"rejected": []}
        assert backlog(relay, device["pin"]) == 1
        # Counts alone (no event_id) are not de-duplicated: each is news.
        counts = notification(endpoint, event_id=None)
        del counts["notification"]["content"]
        assert notify(relay, counts).status_code == 200
        assert notify(relay, counts).status_code == 200
        assert backlog(relay, device["pin"]) == 3

    async def test_low_priority_and_a_large_content(self, relay: RelayProc, links: Links) -> None:
        device = relay.create_device()
        endpoint = subscribe(relay, device).info["endpoint"]
        big = {"msgtype": "m.text", "body": "x" * 5000}
        r = notify(relay, notification(endpoint, event_id="$big", prio="low", content=big))
        assert r.status_code == 200 and r.json() == {"rejected": []}
        ws, _ = await links(relay, device)
        msg = await next_matrix(ws)
        data = msgspec.json.decode(msg.data)
        # Too large with its content: stored without it (the spec lets a pusher omit it).
        assert "content" not in data["notification"]
        assert data["notification"]["event_id"] == "$big"
        assert msg.urgency == "normal" and len(msg.data) <= 4096

    @pytest.mark.parametrize(
        ("body", "content_type", "status", "words"),
        [
            (b"{", "application/json", 400, "malformed JSON"),
            (b'{"notification": {}}', "application/json", 400, "required field `devices`"),
            (b'{"devices": []}', "application/json", 400, "notification"),
            (b'{"notification": {"devices": []}}', "application/json", 400, "length >= 1"),
            (
                b'{"notification": {"devices": [{"app_id": "a"}]}}',
                "application/json",
                400,
                "pushkey",
            ),
            (
                b'{"notification": {"prio": 3, "devices": [{"app_id": "a", "pushkey": "k"}]}}',
                "application/json",
                400,
                "prio",
            ),
            (b'{"notification": {"devices": [], "devices": []}}', "application/json", 400, "twice"),
            (b"{}", "text/plain", 415, "application/json"),
            (b'{"notification": {"x": "' + b"y" * 17000 + b'"}}', "application/json", 413, "16384"),
        ],
    )
    def test_bad_input_is_refused(
        self, relay: RelayProc, body: bytes, content_type: str, status: int, words: str
    ) -> None:
        device = relay.create_device()
        endpoint = subscribe(relay, device).info["endpoint"]
        # Where a device list fits, it names a real endpoint: nothing may be stored.
        body = body.replace(b'"pushkey": "k"', json.dumps({"pushkey": endpoint})[1:-1].encode())
        r = httpx.post(
            f"{relay.url}/_matrix/push/v1/notify",
            content=body,
            headers={"Content-Type": content_type},
        )
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert words in r.json()["detail"]
        assert backlog(relay, device["pin"]) == 0


def test_rate_limit_is_the_web_push_one(relay_factory: RelayFactory) -> None:
    """Gateway pushes count against the subscription's Web Push limit: neither way
    gets around it, and a refused request stores nothing."""
    relay = relay_factory(extra=["--webpush-per-minute", "3"])
    device = relay.create_device()
    sub = subscribe(relay, device)
    for n in range(2):
        assert (
            notify(relay, notification(sub.info["endpoint"], event_id=f"${n}")).status_code == 200
        )
    assert push(sub.info, "x", ttl=60).status_code == 201
    r = notify(relay, notification(sub.info["endpoint"], event_id="$over"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.headers["content-type"] == "application/problem+json"
    assert status_of(lambda: push(sub.info, "x", ttl=60)).status_code == 429
    assert backlog(relay, device["pin"]) == 3
