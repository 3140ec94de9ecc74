"""The HTTP API against a real relay process: auth, devices, pushes, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pinrelay.testing.wait import wait_until
from tests.conftest import RelayFactory
from tests.relayproc import RelayProc

PROBLEM = "application/problem+json"


@pytest.fixture
def api(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


def assert_problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    if code is not None:
        assert body["type"].endswith("/" + code)
    return body


def backlog(api: httpx.Client, pin: str) -> int:
    return int(api.get(f"/v1/devices/{pin}").json()["backlog"])


def new_device(api: httpx.Client) -> dict[str, Any]:
    r = api.post("/v1/devices", json={"label": "t"})
    assert r.status_code == 201
    body: dict[str, Any] = r.json()
    return body


class TestAuth:
    def test_missing_and_wrong_key(self, relay: RelayProc) -> None:
        r = httpx.post(f"{relay.url}/v1/devices", json={})
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.post(f"{relay.url}/v1/devices", json={}, headers={"Authorization": "Bearer nope"})
        assert_problem(r, 401)

    def test_scopes(self, relay: RelayProc, api: httpx.Client) -> None:
        keys = {
            s: api.post("/v1/keys", json={"name": s, "scope": s}).json()
            for s in ("push", "devices")
        }
        device = new_device(api)
        push_h = {"Authorization": f"Bearer {keys['push']['key']}"}
        dev_h = {"Authorization": f"Bearer {keys['devices']['key']}"}
        assert_problem(api.post("/v1/devices", headers=push_h, json={}), 403, "forbidden")
        assert api.post("/v1/devices", headers=dev_h, json={}).status_code == 201
        pushed = api.post(
            f"/v1/devices/{device['pin']}/messages", headers=push_h, json={"data": 1, "ttl": 9}
        )
        assert pushed.status_code == 201
        assert_problem(
            api.post(
                f"/v1/devices/{device['pin']}/messages", headers=dev_h, json={"data": 1, "ttl": 9}
            ),
            403,
        )
        assert_problem(api.get("/v1/keys", headers=push_h), 403)
        listed = api.get("/v1/keys").json()["keys"]
        assert {k["name"] for k in listed} == {"push", "devices"}
        assert all("key" not in k for k in listed)
        assert api.delete(f"/v1/keys/{keys['push']['id']}").status_code == 204
        r = api.post(
            f"/v1/devices/{device['pin']}/messages", headers=push_h, json={"data": 1, "ttl": 9}
        )
        assert_problem(r, 401)
        assert_problem(api.delete(f"/v1/keys/{keys['push']['id']}"), 404)
        assert backlog(api, device["pin"]) == 1

    def test_failed_auth_rate_limited_per_source(self, relay: RelayProc) -> None:
        # 10 x --auth-failure-limit per source (DECISIONS 31); one client, one source.
        bad = {"Authorization": "Bearer guess"}
        with httpx.Client() as c:
            statuses = [c.get(f"{relay.url}/v1/keys", headers=bad).status_code for _ in range(100)]
            assert statuses == [401] * 100
            # The bucket leaks one failure every 60 / 100 s: a few more may pass.
            for _ in range(20):
                r = c.get(f"{relay.url}/v1/keys", headers=bad)
                if r.status_code == 429:
                    break
        assert_problem(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1


@pytest.mark.shared_relay
class TestDevices:
    def test_create_show_rotate_delete(self, api: httpx.Client, relay: RelayProc) -> None:
        d = new_device(api)
        assert len(d["pin"]) == 8 and d["pin"] == d["pin"].upper()
        assert d["link_urls"] == [relay.link_url]
        shown = api.get(f"/v1/devices/{d['pin']}").json()
        assert shown["online"] is False and shown["backlog"] == 0 and shown["label"] == "t"
        assert "token" not in shown
        rotated = api.post(f"/v1/devices/{d['pin']}/token").json()
        assert rotated["token"] != d["token"]
        api.post(f"/v1/devices/{d['pin']}/messages", json={"data": 1, "ttl": 60})
        assert api.delete(f"/v1/devices/{d['pin']}").status_code == 204
        assert_problem(api.get(f"/v1/devices/{d['pin']}"), 404, "not_found")
        assert_problem(api.delete(f"/v1/devices/{d['pin']}"), 404)

    def test_pins_are_unique(self, api: httpx.Client) -> None:
        pins = {new_device(api)["pin"] for _ in range(50)}
        assert len(pins) == 50

    @pytest.mark.parametrize("pin", ["abcdef01", "ABC", "GHIJKLMN", "0123456789"])
    def test_bad_pin(self, api: httpx.Client, pin: str) -> None:
        assert_problem(api.get(f"/v1/devices/{pin}"), 404)

    def test_bad_create_bodies(self, api: httpx.Client) -> None:
        assert_problem(api.post("/v1/devices", json={"label": ""}), 422)
        assert_problem(api.post("/v1/devices", json={"label": 5}), 422)
        assert_problem(api.post("/v1/devices", json={"nope": 1}), 422)
        assert_problem(
            api.post("/v1/devices", content=b"{", headers={"content-type": "application/json"}),
            400,
        )
        assert_problem(
            api.post("/v1/devices", content=b"x", headers={"content-type": "text/plain"}), 415
        )


@pytest.mark.shared_relay
class TestPush:
    def test_push_answer(self, api: httpx.Client) -> None:
        d = new_device(api)
        r = api.post(
            f"/v1/devices/{d['pin']}/messages",
            json={"data": {"a": [1, 2]}, "ttl": 60, "topic": "t", "urgency": "high"},
        )
        assert r.status_code == 201
        body = r.json()
        assert body["cursor"] == 1 and len(body["id"]) == 26 and body["dropped"] is False
        assert body["expires_at"].endswith("Z")

    @pytest.mark.parametrize(
        ("body", "status"),
        [
            ({"data": 1}, 422),  # ttl is required
            ({"ttl": 5}, 422),  # data is required
            ({"data": 1, "ttl": -1}, 422),
            ({"data": 1, "ttl": 10**9}, 422),  # beyond the maximum ttl
            ({"data": 1, "ttl": 5, "topic": "has space"}, 422),
            ({"data": 1, "ttl": 5, "topic": "x" * 33}, 422),
            ({"data": 1, "ttl": 5, "urgency": "urgent"}, 422),
            ({"data": 1, "ttl": 5, "extra": True}, 422),
            ({"data": 1, "ttl": "5"}, 422),
            ({"data": "x" * 5000, "ttl": 5}, 413),
            ([1, 2], 422),
        ],
    )
    def test_bad_push_changes_nothing(self, api: httpx.Client, body: object, status: int) -> None:
        d = new_device(api)
        assert_problem(api.post(f"/v1/devices/{d['pin']}/messages", json=body), status)
        assert backlog(api, d["pin"]) == 0

    def test_malformed_json_and_media_type(self, api: httpx.Client) -> None:
        d = new_device(api)
        url = f"/v1/devices/{d['pin']}/messages"
        r = api.post(url, content=b'{"data": ', headers={"content-type": "application/json"})
        assert_problem(r, 400, "bad_request")
        r = api.post(url, content=b'{"data":1,"ttl":1}', headers={"content-type": "text/plain"})
        assert_problem(r, 415)
        assert_problem(
            api.post(url, content=b"x" * 200_000, headers={"content-type": "application/json"}), 413
        )
        assert backlog(api, d["pin"]) == 0

    def test_unknown_device(self, api: httpx.Client) -> None:
        r = api.post("/v1/devices/0BADF00D/messages", json={"data": 1, "ttl": 5})
        assert_problem(r, 404, "not_found")

    def test_wrong_method(self, api: httpx.Client) -> None:
        assert_problem(api.put("/v1/devices"), 405)

    def test_topic_replaces_undelivered(self, api: httpx.Client) -> None:
        d = new_device(api)
        url = f"/v1/devices/{d['pin']}/messages"
        for n in range(3):
            api.post(url, json={"data": n, "ttl": 60, "topic": "score"})
        api.post(url, json={"data": "other", "ttl": 60, "topic": "weather"})
        assert backlog(api, d["pin"]) == 2

    def test_idempotency_key(self, api: httpx.Client) -> None:
        d = new_device(api)
        url = f"/v1/devices/{d['pin']}/messages"
        h = {"Idempotency-Key": "order-42"}
        first = api.post(url, json={"data": 1, "ttl": 60}, headers=h)
        again = api.post(url, json={"data": 1, "ttl": 60}, headers=h)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert backlog(api, d["pin"]) == 1
        assert_problem(api.post(url, json={"data": 2, "ttl": 60}, headers=h), 409, "conflict")
        assert_problem(
            api.post(url, json={"data": 2, "ttl": 60}, headers={"Idempotency-Key": "x" * 300}), 422
        )
        assert backlog(api, d["pin"]) == 1

    def test_ttl_zero_offline_is_dropped(self, api: httpx.Client) -> None:
        d = new_device(api)
        r = api.post(f"/v1/devices/{d['pin']}/messages", json={"data": 1, "ttl": 0})
        assert r.status_code == 201
        assert r.json()["dropped"] is True and r.json()["cursor"] is None
        assert backlog(api, d["pin"]) == 0


@pytest.mark.shared_relay
class TestBatch:
    def test_mixed_batch(self, api: httpx.Client) -> None:
        a, b = new_device(api), new_device(api)
        r = api.post(
            "/v1/messages",
            json={
                "messages": [
                    {"to": a["pin"], "data": 1, "ttl": 60},
                    {"to": "0BADF00D", "data": 2, "ttl": 60},
                    {"to": b["pin"], "data": 3, "ttl": 60},
                    {"to": a["pin"], "data": 4, "ttl": 60},
                ]
            },
        )
        assert r.status_code == 200
        results = r.json()["results"]
        assert [x["status"] for x in results] == [201, 404, 201, 201]
        assert [x["cursor"] for x in results] == [1, None, 1, 2]
        assert backlog(api, a["pin"]) == 2 and backlog(api, b["pin"]) == 1

    def test_bad_batches_change_nothing(self, api: httpx.Client) -> None:
        a = new_device(api)
        ok = {"to": a["pin"], "data": 1, "ttl": 60}
        assert_problem(api.post("/v1/messages", json={"messages": []}), 422)
        assert_problem(api.post("/v1/messages", json={"messages": [ok] * 1001}), 422)
        bad = [ok, {**ok, "ttl": -5}]
        assert_problem(api.post("/v1/messages", json={"messages": bad}), 422)
        big = [ok, {**ok, "data": "y" * 5000}]
        assert_problem(api.post("/v1/messages", json={"messages": big}), 413)
        assert_problem(api.post("/v1/messages", json={"messages": [{**ok, "to": "x"}]}), 422)
        assert backlog(api, a["pin"]) == 0

    def test_full_batch_in_one_request(self, api: httpx.Client) -> None:
        a = new_device(api)
        msgs = [{"to": a["pin"], "data": n, "ttl": 60} for n in range(1000)]
        r = api.post("/v1/messages", json={"messages": msgs})
        assert [x["cursor"] for x in r.json()["results"]] == list(range(1, 1001))
        assert backlog(api, a["pin"]) == 1000


class TestInbox:
    def test_long_poll_wakes_on_push(self, api: httpx.Client, relay: RelayProc) -> None:
        d = new_device(api)
        dev = {"Authorization": f"Bearer {d['token']}"}

        async def poll() -> httpx.Response:
            async with httpx.AsyncClient(base_url=relay.url, headers=dev, timeout=30) as c:
                return await c.get(f"/v1/devices/{d['pin']}/inbox", params={"wait": 20})

        async def scenario() -> httpx.Response:
            waiting = asyncio.create_task(poll())
            # No signal that the poll is parked at the relay: give it a moment, in
            # which it must not answer (nothing to deliver yet).
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await asyncio.to_thread(
                api.post, f"/v1/devices/{d['pin']}/messages", json={"data": "hi", "ttl": 60}
            )
            return await asyncio.wait_for(waiting, 5)

        r = asyncio.run(scenario())
        body = r.json()
        assert [m["data"] for m in body["messages"]] == ["hi"]
        assert body["cursor"] == 1 and body["messages"][0]["type"] == "msg"
        ack = httpx.post(f"{relay.url}/v1/devices/{d['pin']}/ack", json={"cursor": 1}, headers=dev)
        assert ack.status_code == 204
        assert backlog(api, d["pin"]) == 0

    def test_inbox_errors(self, api: httpx.Client, relay: RelayProc) -> None:
        d = new_device(api)
        dev = {"Authorization": f"Bearer {d['token']}"}
        url = f"{relay.url}/v1/devices/{d['pin']}"
        assert_problem(httpx.get(f"{url}/inbox", headers={"Authorization": "Bearer x"}), 401)
        assert_problem(httpx.get(f"{url}/inbox", params={"wait": 61}, headers=dev), 422)
        assert_problem(httpx.get(f"{url}/inbox", params={"after": "x"}, headers=dev), 422)
        assert_problem(httpx.post(f"{url}/ack", json={"cursor": 5}, headers=dev), 409)
        assert_problem(httpx.post(f"{url}/ack", json={"cursor": -1}, headers=dev), 422)
        # An API key is not a device token.
        assert_problem(httpx.get(f"{url}/inbox", headers=relay.admin_headers()), 401)

    def test_wrong_tokens_from_one_source_do_not_lock_the_inbox_out(
        self, api: httpx.Client, relay: RelayProc
    ) -> None:
        """Issue 11, hole 6: failures count per source and per source + PIN, never
        per PIN alone, so a correct token from elsewhere is never refused."""
        d = new_device(api)
        url = f"{relay.url}/v1/devices/{d['pin']}/inbox"

        def client(source: str) -> httpx.Client:
            return httpx.Client(transport=httpx.HTTPTransport(local_address=source))

        with client("127.0.0.2") as attacker:
            bad = {"Authorization": "Bearer guess"}
            statuses = [attacker.get(url, headers=bad).status_code for _ in range(11)]
            assert statuses == [401] * 10 + [429]
            right = {"Authorization": f"Bearer {d['token']}"}
            assert_problem(attacker.get(url, headers=right), 429, "rate_limited")
        with client("127.0.0.3") as device:
            r = device.get(url, headers=right, params={"wait": 0})
            assert r.status_code == 200, r.text


class TestOperations:
    def test_info_health_metrics_openapi(self, relay: RelayProc) -> None:
        info = httpx.get(f"{relay.url}/v1/info").json()
        assert info["link_urls"] == [relay.link_url] and info["version"]
        assert httpx.get(f"{relay.url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{relay.url}/readyz").status_code == 200
        metrics = httpx.get(f"{relay.url}/metrics", headers=relay.admin_headers()).text
        for name in (
            "pinrelay_links_open",
            "pinrelay_store_commit_seconds_bucket",
            "pinrelay_messages_expired_total",
        ):
            assert name in metrics
        doc = httpx.get(f"{relay.url}/openapi.json").json()
        assert doc["openapi"].startswith("3.1")
        assert "/v1/devices/{pin}/messages" in doc["paths"]
        assert "PushFields" in doc["components"]["schemas"]

    def test_admin_key_file_is_private(self, relay_factory: RelayFactory) -> None:
        relay = relay_factory("keyless", admin_key=None)
        path = relay.data / "admin.key"
        assert path.stat().st_mode & 0o777 == 0o600
        key = path.read_text().strip()
        r = httpx.get(f"{relay.url}/v1/keys", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert str(path) in relay.wait_output("capacity").replace("\n", "")  # the banner

    def test_expired_messages_are_swept(self, relay_factory: RelayFactory) -> None:
        relay = relay_factory(extra=["--sweep-interval", "0.2"])
        with httpx.Client(base_url=relay.url, headers=relay.admin_headers()) as api:
            d = new_device(api)
            api.post(f"/v1/devices/{d['pin']}/messages", json={"data": 1, "ttl": 1})
            api.post(f"/v1/devices/{d['pin']}/messages", json={"data": 2, "ttl": 60})
            assert backlog(api, d["pin"]) == 2
            wait_until(
                lambda: "pinrelay_messages_expired_total 0.0" not in api.get("/metrics").text,
                10.0,
                0.1,
                "the ttl=1 message swept",
            )
            assert backlog(api, d["pin"]) == 1
            assert "pinrelay_messages_expired_total 1.0" in api.get("/metrics").text
