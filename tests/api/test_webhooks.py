"""Outgoing webhooks (PROTOCOL "Webhooks", issue 16, DECISIONS 56) on a real relay on
SQLite; test_webhooks_on_cluster.py runs the shared ones on a 3-node cluster and
checks that another relay takes a dead relay's lease over.

A subscription is made with an admin key (the relay's: every incident; a tenant's:
its tenant's); bad input answers problem+json and stores nothing; another tenant's
subscription answers as none.  Each incident event reaches the subscriptions that
may see it, signed (the test checks the HMAC with the secret), with its id in the
body and in ``Idempotency-Key``; a receiver that is down for a while then gets
every event, in order, none twice; what was not delivered when the relay was
SIGKILLed is delivered by the relay once restarted.  The receivers are local HTTP
servers (tests/webhooks/receiver.py).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pinrelay.testing.wait import wait_until
from tests.api.test_api import assert_problem
from tests.api.test_incidents import _ok, open_incident
from tests.api.test_tenants import Tenant
from tests.conftest import RelayFactory
from tests.relayproc import RelayProc
from tests.webhooks.receiver import Got, Receiver, receiving

SECRET = "a-secret-of-32-characters-long!!"
#: Short back-off and lease, so a receiver that comes back is retried within a second.
FAST = ["--webhook-retry-cap", "0.5", "--webhook-lease", "2"]


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def subscribe(http: httpx.Client, url: str, **body: Any) -> dict[str, Any]:
    made: dict[str, Any] = _ok(
        http.post(
            "/v1/webhooks", json={"url": url, "secret": SECRET, "events": ["incident"], **body}
        ),
        201,
    )
    assert made["id"].startswith("W") and "secret" not in made
    assert http.get(f"/v1/webhooks/{made['id']}").json() == made
    return made


def check_signature(got: Got, secret: str = SECRET) -> None:
    """What a receiver does (PROTOCOL "Webhooks"): HMAC-SHA256 of "<t>.<raw body>"."""
    fields = dict(p.split("=", 1) for p in got.headers["pinrelay-signature"].split(","))
    t = int(fields["t"])
    assert abs(time.time() - t) < 300
    mac = hmac.new(secret.encode(), f"{t}.".encode() + got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, fields["v1"]), got
    assert got.headers["content-type"] == "application/json"


def deliveries(r: Receiver, hook_id: str | None = None) -> list[dict[str, Any]]:
    """The JSON deliveries answered 2xx (of one subscription), in order."""
    found = [g.json() for g in r.accepted() if b'"event"' in g.body]
    return [d for d in found if hook_id is None or d["id"].endswith("." + hook_id)]


def test_bad_subscriptions_answer_problems_and_store_nothing(admin: httpx.Client) -> None:
    good = {"url": "http://127.0.0.1:9/h", "secret": SECRET, "events": ["incident"]}
    bad: list[tuple[dict[str, Any], int]] = [
        ({**good, "url": "ftp://example.org/h"}, 422),
        ({**good, "url": "http://"}, 422),
        ({**good, "url": "http://u:p@example.org/"}, 422),
        ({**good, "url": "http://example.org:99999/"}, 422),
        ({**good, "secret": "short"}, 422),
        ({**good, "secret": "x" * 257}, 422),
        ({**good, "events": []}, 422),
        ({**good, "events": ["deploy"]}, 422),
        ({**good, "kind": "fax"}, 422),
        ({**good, "kind": "sms"}, 422),  # no recipient
        ({**good, "extra": 1}, 422),
        ({"url": good["url"]}, 422),
    ]
    for body, status in bad:
        assert_problem(admin.post("/v1/webhooks", json=body), status)
    assert_problem(
        admin.post("/v1/webhooks", content=b"{nope", headers={"content-type": "application/json"}),
        400,
    )
    assert_problem(admin.get("/v1/webhooks/W000000000000"), 404)
    assert_problem(admin.delete("/v1/webhooks/not-an-id"), 404)
    assert _ok(admin.get("/v1/webhooks")) == {"webhooks": []}
    # A push key is not enough.
    made = _ok(admin.post("/v1/keys", json={"name": "p", "scope": "push"}), 201)
    with httpx.Client(
        base_url=admin.base_url, headers={"Authorization": f"Bearer {made['key']}"}
    ) as push:
        assert_problem(push.post("/v1/webhooks", json=good), 403)
    assert _ok(admin.get("/v1/webhooks")) == {"webhooks": []}


def test_subscriptions_are_bounded_and_each_tenant_sees_its_own(admin: httpx.Client) -> None:
    a, b = Tenant(admin, "hooks A"), Tenant(admin, "hooks B")
    with a.client("admin") as a_admin, b.client("admin") as b_admin:
        mine = subscribe(a_admin, "http://127.0.0.1:9/a")
        assert mine["tenant"] == a.id and mine["kind"] == "json"
        sms = subscribe(a_admin, "https://sms.example/send?to=%2B15550100", kind="sms")
        assert sms["to"] == "+15550100"
        assert [h["id"] for h in _ok(a_admin.get("/v1/webhooks"))["webhooks"]] == [
            mine["id"],
            sms["id"],
        ]
        assert _ok(b_admin.get("/v1/webhooks")) == {"webhooks": []}
        for method in ("GET", "DELETE"):
            theirs = b_admin.request(method, f"/v1/webhooks/{mine['id']}")
            nobody = b_admin.request(method, "/v1/webhooks/W000000000000")
            assert theirs.status_code == nobody.status_code == 404
            assert theirs.text.replace(mine["id"], "W000000000000") == nobody.text
        assert {h["id"] for h in _ok(admin.get("/v1/webhooks"))["webhooks"]} >= {mine["id"]}
        for n in range(18):
            subscribe(a_admin, f"http://127.0.0.1:9/{n}")
        assert_problem(
            a_admin.post(
                "/v1/webhooks",
                json={"url": "http://127.0.0.1:9/x", "secret": SECRET, "events": ["incident"]},
            ),
            409,
        )
        assert len(_ok(a_admin.get("/v1/webhooks"))["webhooks"]) == 20
        subscribe(b_admin, "http://127.0.0.1:9/b")  # B's own bound
        assert a_admin.delete(f"/v1/webhooks/{mine['id']}").status_code == 204
        assert_problem(a_admin.get(f"/v1/webhooks/{mine['id']}"), 404)


def test_deliveries_are_signed_and_reach_only_who_may_see_them(
    admin: httpx.Client, receiver: Receiver
) -> None:
    a, b = Tenant(admin, "told A"), Tenant(admin, "told B")
    everyone = subscribe(admin, receiver.url)
    with a.client("admin") as a_admin, b.client("admin") as b_admin:
        hook_a = subscribe(a_admin, receiver.url)
        hook_b = subscribe(b_admin, receiver.url)
        sms = subscribe(a_admin, receiver.url + "?to=%2B15550100", kind="sms")
        chat = subscribe(a_admin, receiver.url, kind="chat")
    only_a = open_incident(admin, component="links", severity="major", tenants=[a.id])
    public = open_incident(admin, component="store", severity="minor", text="Slow writes")
    # 2 each for the relay's, A's, A's SMS and A's chat subscriptions; 1 for B's.
    wait_until(lambda: len(receiver.accepted()) >= 9, timeout=20)
    for got in receiver.accepted():
        check_signature(got)
        assert got.headers["idempotency-key"]
    by_hook = {h: deliveries(receiver, h) for h in (everyone["id"], hook_a["id"], hook_b["id"])}
    assert [d["incident"]["id"] for d in by_hook[hook_b["id"]]] == [public["id"]]
    assert {d["incident"]["id"] for d in by_hook[hook_a["id"]]} == {only_a["id"], public["id"]}
    assert {d["incident"]["id"] for d in by_hook[everyone["id"]]} == {only_a["id"], public["id"]}
    for got in receiver.accepted():
        if b'"event"' in got.body:
            d = got.json()
            assert set(d) == {"event", "incident", "id"} and d["event"] == "opened"
            assert got.headers["idempotency-key"] == d["id"]
            assert set(d["incident"]) == {
                "id",
                "state",
                "component",
                "severity",
                "started_at",
                "resolved_at",
                "updates",
            }
            assert d["id"] == f"{d['incident']['id']}.1.{d['id'].rsplit('.', 1)[1]}"
    texts = [g.json() for g in receiver.accepted() if b'"event"' not in g.body]
    assert {"to": "+15550100", "text": "store minor opened: Slow writes"} in texts
    assert {"text": "store minor opened: Slow writes"} in texts
    assert {"to": "+15550100", "text": "links major opened: Writes fail"} in texts
    assert len(texts) == 4, (texts, sms, chat)
    assert len(receiver.accepted()) == 9


def test_a_receiver_down_for_a_while_gets_everything_in_order_once(
    relay_factory: RelayFactory, receiver: Receiver
) -> None:
    relay = relay_factory(extra=FAST)
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        hook = subscribe(admin, receiver.url)
        receiver.status = 503
        iid = open_incident(admin)["id"]
        wait_until(lambda: len(receiver.got) >= 2, timeout=10)  # refused, retried
        receiver.down()  # and now connections are refused
        for n in range(3):
            _ok(admin.post(f"/v1/incidents/{iid}/updates", json={"text": f"Update {n}"}), 201)
        _ok(admin.post(f"/v1/incidents/{iid}/resolve", json={"text": "Fixed"}))
        time.sleep(1.5)  # a while down: the relay retries into a closed port
        receiver.status = 200
        receiver.up()
        wait_until(lambda: len(deliveries(receiver)) >= 5, timeout=20)
        got = deliveries(receiver, hook["id"])
        assert [(d["event"], len(d["incident"]["updates"])) for d in got] == [
            ("opened", 1),
            ("updated", 2),
            ("updated", 3),
            ("updated", 4),
            ("resolved", 5),
        ]
        assert len({d["id"] for d in got}) == 5
        assert got[-1]["incident"]["state"] == "resolved"
        # (The relay counts an attempt once it has read the answer the receiver sent.)
        ok, failed = (f'pinrelay_webhook_attempts_total{{result="{r}"}}' for r in ("ok", "failed"))

        def counted() -> str | None:
            text = admin.get("/metrics").text
            return text if f"{ok} 5.0" in text else None

        metrics = wait_until(counted)
        assert failed in metrics and f"{failed} 0.0" not in metrics


def test_what_a_killed_relay_did_not_deliver_its_restart_delivers(
    relay_factory: RelayFactory, receiver: Receiver
) -> None:
    relay = relay_factory(extra=FAST)
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        hook = subscribe(admin, receiver.url)
        receiver.status = 503
        iid = open_incident(admin)["id"]
        _ok(admin.post(f"/v1/incidents/{iid}/updates", json={"text": "More"}), 201)
        wait_until(lambda: len(receiver.got) >= 2, timeout=10)
    relay.kill()
    receiver.status = 200
    relay.start()
    wait_until(lambda: len(deliveries(receiver)) >= 2, timeout=20)
    got = deliveries(receiver, hook["id"])
    assert [d["event"] for d in got] == ["opened", "updated"]
    assert len({d["id"] for d in got}) == 2
