"""The push service (RFC 8030) against a real relay, driven by pywebpush and py_vapid,
the libraries application servers use; the device side decrypts with http_ece.

PROTOCOL "Web Push"; every refusal is problem+json and stores nothing.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from py_vapid import Vapid, Vapid01
from pywebpush import WebPushException, webpush

from pinrelay.core import frames
from tests.chat.conftest import Links
from tests.conftest import RelayFactory
from tests.linkclient import recv
from tests.relayproc import RelayProc, wait_until_async
from tests.webpush.helpers import bearer, delete, next_webpush, subscribe, vapid_public

CLAIMS = {"sub": "mailto:ops@example.com"}


def push(sub_info: dict[str, Any], data: bytes | str, **kwargs: Any) -> Any:
    return webpush(sub_info, data, timeout=10, **kwargs)


def status_of(call: Any) -> httpx.Response | Any:
    try:
        return call()
    except WebPushException as exc:
        return exc.response


def listed(relay: RelayProc, device: dict[str, Any]) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{relay.url}/v1/devices/{device['pin']}/subscriptions", headers=bearer(device), timeout=10
    )
    assert r.status_code == 200, r.text
    subs: list[dict[str, Any]] = r.json()["subscriptions"]
    return subs


def backlog(relay: RelayProc, pin: str) -> int:
    with relay.client() as c:
        return int(c.show_device(pin)["backlog"])


@pytest.mark.shared_relay
class TestSubscriptions:
    def test_the_answer_is_a_push_subscription(self, relay: RelayProc) -> None:
        device = relay.create_device()
        sub = subscribe(relay, device).info
        assert set(sub) >= {"id", "endpoint", "expirationTime", "keys", "created_at"}
        assert len(sub["id"]) == 22 and sub["expirationTime"] is None
        assert sub["endpoint"] == f"{relay.url}/push/{sub['id']}"
        assert device["pin"] not in sub["endpoint"] and device["token"] not in sub["endpoint"]
        assert set(sub["keys"]) == {"p256dh", "auth"}
        r = httpx.get(
            f"{relay.url}/v1/devices/{device['pin']}/subscriptions", headers=bearer(device)
        )
        assert r.status_code == 200 and r.json()["subscriptions"] == [sub]

    def test_another_token_cannot_list_or_delete(self, relay: RelayProc) -> None:
        a, b = relay.create_device(), relay.create_device()
        sub = subscribe(relay, a).info
        url = f"{relay.url}/v1/devices/{a['pin']}/subscriptions"
        assert httpx.get(url, headers=bearer(b)).status_code == 401
        assert httpx.delete(f"{url}/{sub['id']}", headers=bearer(b)).status_code == 401
        # b's own path does not reach a's subscription either.
        other = f"{relay.url}/v1/devices/{b['pin']}/subscriptions/{sub['id']}"
        r = httpx.delete(other, headers=bearer(b))
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"

    @pytest.mark.parametrize(
        "body",
        [
            {"keys": {"p256dh": "not base64!", "auth": "tBHItJI5svbpez7KI4CCXg"}},
            {"keys": {"p256dh": "BAAA", "auth": "tBHItJI5svbpez7KI4CCXg"}},
            {"keys": {"p256dh": "B" + "A" * 86, "auth": "tBHItJI5svbpez7KI4CCXg"}},  # off the curve
            {"keys": {"auth": "tBHItJI5svbpez7KI4CCXg"}},
            {"applicationServerKey": "AAAA"},
            {"unknown": 1},
        ],
    )
    def test_bad_keys_are_refused(self, relay: RelayProc, body: dict[str, Any]) -> None:
        device = relay.create_device()
        good = subscribe(relay, device).info
        r = httpx.post(
            f"{relay.url}/v1/devices/{device['pin']}/subscriptions",
            json=body,
            headers=bearer(device),
        )
        assert r.status_code in (400, 422), r.text
        assert r.headers["content-type"] == "application/problem+json"
        r = httpx.get(
            f"{relay.url}/v1/devices/{device['pin']}/subscriptions", headers=bearer(device)
        )
        assert r.json()["subscriptions"] == [good]

    def test_a_deleted_subscription_is_gone(self, relay: RelayProc) -> None:
        device = relay.create_device()
        sub = subscribe(relay, device)
        r = httpx.delete(
            f"{relay.url}/v1/devices/{device['pin']}/subscriptions/{sub.info['id']}",
            headers=bearer(device),
        )
        assert r.status_code == 204
        r = status_of(lambda: push(sub.info, "too late", ttl=60))
        assert r.status_code == 410
        assert httpx.get(sub.info["endpoint"]).status_code == 410
        assert backlog(relay, device["pin"]) == 0

    async def test_subscribe_over_the_link(self, relay: RelayProc, links: Links) -> None:
        device = relay.create_device()
        ws, _ = await links(relay, device)
        keys = subscribe(relay, relay.create_device()).keys  # any valid pair
        await ws.send(
            f'{{"type":"subscribe","client_id":"s1","keys":{{"p256dh":"{keys["p256dh"]}","auth":"{keys["auth"]}"}}}}'
        )
        answer = await recv(ws)
        assert isinstance(answer, frames.Subscribed) and answer.client_id == "s1"
        assert answer.subscription.keys.p256dh == keys["p256dh"]
        assert [s["id"] for s in listed(relay, device)] == [answer.subscription.id]


@pytest.mark.shared_relay
class TestPushing:
    async def test_pywebpush_reaches_the_device_encrypted(
        self, relay: RelayProc, links: Links
    ) -> None:
        device = relay.create_device()
        sub = subscribe(relay, device)
        ws, _ = await links(relay, device)
        r = push(
            sub.info, "hello from pywebpush", ttl=60, headers={"Urgency": "high", "Topic": "inbox"}
        )
        assert r.status_code == 201
        assert r.headers["TTL"] == "60"
        assert r.headers["Location"].startswith(sub.info["endpoint"] + "/messages/")
        msg = await next_webpush(ws)
        assert sub.decrypt(msg) == b"hello from pywebpush"
        assert msg.urgency == "high" and msg.sender is None
        assert msg.topic is not None and msg.topic != "inbox"
        assert r.headers["Location"].endswith(f"/{msg.id}.{msg.cursor}")

    async def test_vapid_restricted_subscription(self, relay: RelayProc, links: Links) -> None:
        vapid = Vapid()
        vapid.generate_keys()
        device = relay.create_device()
        sub = subscribe(relay, device, vapid_public(vapid))
        ws, _ = await links(relay, device)
        r = push(sub.info, "signed", ttl=60, vapid_private_key=vapid, vapid_claims=dict(CLAIMS))
        assert r.status_code == 201
        assert sub.decrypt(await next_webpush(ws)) == b"signed"
        # The drafts' form (WebPush + Crypto-Key: p256ecdsa=), as py_vapid's Vapid01 signs.
        legacy = Vapid01()
        legacy.private_key = vapid.private_key
        r = push(sub.info, "legacy", ttl=60, vapid_private_key=legacy, vapid_claims=dict(CLAIMS))
        assert r.status_code == 201
        assert sub.decrypt(await next_webpush(ws)) == b"legacy"

    def test_vapid_refusals(self, relay: RelayProc) -> None:
        vapid, other = Vapid(), Vapid()
        vapid.generate_keys()
        other.generate_keys()
        device = relay.create_device()
        sub = subscribe(relay, device, vapid_public(vapid))
        origin = relay.url

        def attempt(key: Vapid | None, **claims: Any) -> Any:
            if key is None:
                return status_of(lambda: push(sub.info, "x", ttl=60))
            all_claims = {**CLAIMS, **claims}
            return status_of(
                lambda: push(sub.info, "x", ttl=60, vapid_private_key=key, vapid_claims=all_claims)
            )

        now = int(time.time())
        cases = [
            (attempt(None), 401, "only VAPID-signed"),
            (attempt(other), 403, "not the one"),
            (attempt(vapid, aud="https://elsewhere.example"), 401, "not " + origin),
            (attempt(vapid, exp=now + 25 * 3600), 401, "24 hours"),
        ]
        for response, status, words in cases:
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert words in response.json()["detail"]

        # Hand-made headers: an expired token, a bad signature, no JWT at all.
        def token(exp: int) -> str:
            signed = vapid.sign({**CLAIMS, "aud": origin, "exp": exp})["Authorization"]
            return str(signed.split("t=")[1].split(",")[0])

        t = token(now + 600)
        k = vapid_public(vapid)
        body = {"data": b"\x00" * 16 + (4096).to_bytes(4, "big") + b"\x00" + b"\x01" * 40}
        for auth, words in [
            (f"vapid t={t[:-4]}AAAA, k={k}", "does not verify"),
            ("vapid t=abc, k=" + k, "not a JWT"),
            ("Bearer something", "must be a VAPID token"),
            (
                f"vapid t={token(now - 5)}, k={k}",
                "expired",
            ),
        ]:
            r = httpx.post(
                sub.info["endpoint"],
                content=body["data"],
                headers={"TTL": "60", "Content-Encoding": "aes128gcm", "Authorization": auth},
            )
            assert r.status_code == 401, (auth, r.text)
            assert words in r.json()["detail"]
        assert backlog(relay, device["pin"]) == 0

    async def test_topic_replaces_and_ttl0_drops_while_offline(
        self, relay: RelayProc, links: Links
    ) -> None:
        device = relay.create_device()
        sub = subscribe(relay, device)
        other = subscribe(relay, device)  # same topic, another subscription: kept apart
        for text in ("old score", "new score"):
            assert push(sub.info, text, ttl=600, headers={"Topic": "score"}).status_code == 201
        assert push(other.info, "other app", ttl=600, headers={"Topic": "score"}).status_code == 201
        assert push(sub.info, "only if online", ttl=0).status_code == 201
        assert backlog(relay, device["pin"]) == 2
        ws, _ = await links(relay, device)
        first, second = await next_webpush(ws), await next_webpush(ws)
        assert sub.decrypt(first) == b"new score"
        assert other.decrypt(second) == b"other app"

    async def test_the_largest_body_passes_and_one_more_byte_is_413(
        self, relay: RelayProc, links: Links
    ) -> None:
        device = relay.create_device()
        sub = subscribe(relay, device)
        # aes128gcm: 86 bytes of header, 1 delimiter and a 16-byte tag around the text.
        r = push(sub.info, b"x" * (4096 - 103), ttl=60)
        assert r.status_code == 201
        r = status_of(lambda: push(sub.info, b"x" * (4096 - 102), ttl=60))
        assert r.status_code == 413
        ws, _ = await links(relay, device)
        assert sub.decrypt(await next_webpush(ws)) == b"x" * (4096 - 103)
        # Acknowledged over the link: the relay stores it a moment later.
        await wait_until_async(lambda: backlog(relay, device["pin"]) == 0, 10.0, 0.05, "acked")


@pytest.mark.shared_relay
class TestBadRequests:
    BODY = b"\x00" * 16 + (4096).to_bytes(4, "big") + bytes([65]) + b"\x04" * 65 + b"\x01" * 17

    @pytest.mark.parametrize(
        ("headers", "body", "status", "words"),
        [
            ({}, BODY, 400, "TTL header is required"),
            ({"TTL": "soon"}, BODY, 400, "whole number"),
            ({"TTL": "-1"}, BODY, 400, "whole number"),
            ({"TTL": "60", "Urgency": "urgent"}, BODY, 400, "Urgency"),
            ({"TTL": "60", "Topic": "t" * 33}, BODY, 400, "Topic"),
            ({"TTL": "60", "Topic": "a.b"}, BODY, 400, "Topic"),
            ({"TTL": "60"}, b"", 400, "empty"),
            ({"TTL": "60"}, b"\x00" * 21, 400, "aes128gcm"),
            ({"TTL": "60"}, b"\x01" * 4097, 413, "4096"),
            ({"TTL": "60", "Content-Encoding": "aesgcm"}, BODY, 415, "aes128gcm (RFC 8291)"),
            ({"TTL": "60", "Content-Encoding": "gzip"}, BODY, 415, "aes128gcm"),
        ],
    )
    def test_refused_and_nothing_stored(
        self, relay: RelayProc, headers: dict[str, str], body: bytes, status: int, words: str
    ) -> None:
        device = relay.create_device()
        sub = subscribe(relay, device).info
        sent = {"Content-Encoding": "aes128gcm", **headers}
        r = httpx.post(sub["endpoint"], content=body, headers=sent)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert words in r.json()["detail"]
        # One title per problem type: a 415 here is about Content-Encoding, not JSON.
        assert "json" not in r.json()["title"].lower()
        assert backlog(relay, device["pin"]) == 0

    def test_unknown_endpoints(self, relay: RelayProc) -> None:
        for path in ("/push/AAAAAAAAAAAAAAAAAAAAAA", "/push/short", "/push/" + "A" * 200):
            r = httpx.post(
                relay.url + path,
                content=self.BODY,
                headers={"TTL": "60", "Content-Encoding": "aes128gcm"},
            )
            assert r.status_code == 404, r.text
            assert r.headers["content-type"] == "application/problem+json"

    def test_unifiedpush_probe(self, relay: RelayProc) -> None:
        sub = subscribe(relay, relay.create_device()).info
        r = httpx.get(sub["endpoint"])
        assert r.status_code == 200 and r.json() == {"unifiedpush": {"version": 1}}
        assert httpx.get(relay.url + "/push/AAAAAAAAAAAAAAAAAAAAAA").status_code == 404


@pytest.mark.shared_relay
class TestMessageResource:
    async def test_delete_before_delivery(self, relay: RelayProc, links: Links) -> None:
        device = relay.create_device()
        sub, other = subscribe(relay, device), subscribe(relay, device)
        gone = push(sub.info, "never mind", ttl=600).headers["Location"]
        kept = push(sub.info, "still here", ttl=600).headers["Location"]
        # Another subscription's path does not reach it.
        assert delete(gone.replace(sub.info["id"], other.info["id"])) == 404
        assert delete(gone) == 204
        assert delete(gone) == 404
        assert backlog(relay, device["pin"]) == 1
        ws, _ = await links(relay, device)
        assert sub.decrypt(await next_webpush(ws)) == b"still here"
        # Delivered and acknowledged: the resource is gone (the ack may still be on
        # its way when the DELETE arrives).
        await wait_until_async(lambda: delete(kept) == 404, timeout=10)


def test_rate_limit_per_subscription(relay_factory: RelayFactory) -> None:
    relay = relay_factory(extra=["--webpush-per-minute", "3"])
    device = relay.create_device()
    sub = subscribe(relay, device)
    for _ in range(3):
        assert push(sub.info, "x", ttl=60).status_code == 201
    r = status_of(lambda: push(sub.info, "x", ttl=60))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert backlog(relay, device["pin"]) == 3


def test_rate_limit_per_sender(relay_factory: RelayFactory) -> None:
    relay = relay_factory(extra=["--webpush-sender-per-minute", "4"])
    device = relay.create_device()
    subs = [subscribe(relay, device) for _ in range(2)]
    vapid = Vapid()
    vapid.generate_keys()
    for n in range(4):
        assert push(subs[n % 2].info, "x", ttl=60).status_code == 201
    # The same address, another subscription: still this sender's budget.
    r = status_of(lambda: push(subs[1].info, "x", ttl=60))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # A sender that signs is counted by its VAPID key, not by its address.
    signed = push(subs[0].info, "y", ttl=60, vapid_private_key=vapid, vapid_claims=dict(CLAIMS))
    assert signed.status_code == 201
    assert backlog(relay, device["pin"]) == 5


def test_tokens_that_fail_spend_no_budget_of_the_key_they_name(
    relay_factory: RelayFactory,
) -> None:
    """Anyone may write ``k=<someone's key>``: pushes with tokens that do not verify
    spend their address's budget (checked before the signature), never the key's, so
    they cannot lock its holder out of every subscription."""
    relay = relay_factory(extra=["--webpush-sender-per-minute", "4"])
    device = relay.create_device()
    victim, forger = Vapid(), Vapid()
    victim.generate_keys()
    forger.generate_keys()
    sub = subscribe(relay, device, vapid_public(victim))
    claims = {**CLAIMS, "aud": relay.url, "exp": int(time.time()) + 600}
    forged_jwt = forger.sign(dict(claims))["Authorization"].split("t=")[1].split(",")[0]
    forged = f"vapid t={forged_jwt}, k={vapid_public(victim)}"
    # From another loopback address than the victim's (pywebpush's, 127.0.0.1).
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10) as http:
        answers = [
            http.post(
                sub.info["endpoint"],
                content=TestBadRequests.BODY,
                headers={"TTL": "60", "Content-Encoding": "aes128gcm", "Authorization": forged},
            ).status_code
            for _ in range(6)
        ]
    assert answers == [401] * 4 + [429] * 2
    r = push(sub.info, "mine", ttl=60, vapid_private_key=victim, vapid_claims=dict(CLAIMS))
    assert r.status_code == 201
    assert backlog(relay, device["pin"]) == 1


def test_guessing_endpoints_is_rate_limited(relay_factory: RelayFactory) -> None:
    relay = relay_factory()
    device = relay.create_device()
    sub = subscribe(relay, device)
    headers = {"TTL": "60", "Content-Encoding": "aes128gcm"}
    with httpx.Client(base_url=relay.url, timeout=10) as http:
        for n in range(60):
            r = http.post(f"/push/{n:022d}", content=TestBadRequests.BODY, headers=headers)
            assert r.status_code == 404, r.text
        r = http.post(f"/push/{'9' * 22}", content=TestBadRequests.BODY, headers=headers)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # The same address is refused before the lookup, even for a real endpoint.
        assert http.get(sub.info["endpoint"]).status_code == 429


async def test_a_dropped_push_has_no_receipt(relay: RelayProc) -> None:
    sub = subscribe(relay, relay.create_device())
    r = push(sub.info, "only if online", ttl=0, headers={"Prefer": "respond-async"})
    assert r.status_code == 201 and "Link" not in r.headers
