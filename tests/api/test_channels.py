"""Channels and broadcasts with consent (PROTOCOL "Channels and broadcasts", issue 15)
on a real relay on SQLite; test_channels_on_cluster.py runs them on a 3-node cluster.

A broadcast reaches exactly the devices that joined its channel, once each; those
that left or refuse the class get nothing; the daily marketing cap holds; the audit
log has every broadcast; another tenant learns nothing of a channel; a relay killed
mid fan-out leaves the rest to the next start, and still every member gets it once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pinrelay.core import frames
from pinrelay.testing.wait import wait_until
from tests.api.test_api import assert_problem
from tests.api.test_tenants import Tenant
from tests.conftest import RelayFactory
from tests.linkclient import link, recv, send
from tests.relayproc import RelayProc

NOBODY_CHANNEL = "C000000000000"


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _channel(t: Tenant, name: str, klass: str = "service") -> str:
    with t.client("broadcast") as c:
        return str(_ok(c.post("/v1/channels", json={"name": name, "class": klass}), 201)["id"])


def _join(http: httpx.Client, d: dict[str, Any], channel: str) -> None:
    _ok(http.post(f"/v1/devices/{d['pin']}/channels/{channel}", headers=_bearer(d["token"])))


def _broadcast(t: Tenant, channel: str, data: Any, ttl: int = 3600) -> str:
    with t.client("broadcast") as c:
        r = _ok(c.post(f"/v1/channels/{channel}/messages", json={"data": data, "ttl": ttl}), 201)
    assert r["channel"] == channel
    return str(r["id"])


def _finished(t: Tenant, broadcast: str, timeout: float = 30) -> dict[str, Any]:
    with t.client("broadcast") as c:

        def done() -> dict[str, Any] | None:
            view: dict[str, Any] = _ok(c.get(f"/v1/broadcasts/{broadcast}"))
            return view if view["done_at"] is not None else None

        return wait_until(done, timeout=timeout, message=f"broadcast {broadcast} to end")


def _inbox(http: httpx.Client, d: dict[str, Any]) -> list[dict[str, Any]]:
    r = http.get(f"/v1/devices/{d['pin']}/inbox", headers=_bearer(d["token"]))
    return list(_ok(r)["messages"])


def _broadcasts_in(http: httpx.Client, d: dict[str, Any]) -> list[str]:
    return [m["id"] for m in _inbox(http, d) if m["kind"] == "broadcast"]


@pytest.mark.shared_relay
def test_a_broadcast_reaches_exactly_the_consenting_members_once(admin: httpx.Client) -> None:
    t = Tenant(admin, "news")
    channel = _channel(t, "alerts")
    joined, left, refusing, stranger = (t.device() for _ in range(4))
    for d in (joined, left, refusing):
        _join(admin, d, channel)
    _ok(
        admin.delete(
            f"/v1/devices/{left['pin']}/channels/{channel}", headers=_bearer(left["token"])
        ),
        204,
    )
    r = admin.put(
        f"/v1/devices/{refusing['pin']}/refusals/service", headers=_bearer(refusing["token"])
    )
    _ok(r, 204)
    mine = _ok(admin.get(f"/v1/devices/{joined['pin']}/channels", headers=_bearer(joined["token"])))
    assert mine == {
        "channels": [{"id": channel, "name": "alerts", "class": "service", "joined": True}],
        "refused": [],
    }

    bid = _broadcast(t, channel, {"text": "storm warning"})
    view = _finished(t, bid)
    assert (view["members"], view["stored"], view["skipped"]) == (2, 1, 1)
    (msg,) = _inbox(admin, joined)
    assert (msg["id"], msg["kind"], msg["from"]) == (bid, "broadcast", channel)
    assert msg["data"] == {
        "channel": channel,
        "name": "alerts",
        "class": "service",
        "data": {"text": "storm warning"},
        "unsubscribe": f"/v1/devices/{joined['pin']}/channels/{channel}",
    }
    for d in (left, refusing, stranger):
        assert _inbox(admin, d) == []

    # The unsubscribe action works as the message says, with the device's token.
    _ok(admin.delete(msg["data"]["unsubscribe"], headers=_bearer(joined["token"])), 204)
    again = _finished(t, _broadcast(t, channel, {"text": "second"}))
    assert (again["members"], again["stored"]) == (1, 0)  # only the refusing one left

    with t.client("admin") as c:
        lines = _ok(c.get("/v1/audit"))["entries"]
    sent = [x for x in lines if x["action"] == "broadcast"]
    assert [x["broadcast"] for x in sent] == [again["id"], bid]
    assert sent[1] == {
        "at": sent[1]["at"],
        "tenant": t.id,
        "key": sent[1]["key"],
        "action": "broadcast",
        "channel": channel,
        "broadcast": bid,
        "stored": 1,
        "done": True,
    }
    assert [x["action"] for x in lines][-1] == "channel.create"


@pytest.mark.shared_relay
def test_the_daily_marketing_cap_holds(admin: httpx.Client) -> None:
    t = Tenant(admin, "shop")
    offers, sales = _channel(t, "offers", "marketing"), _channel(t, "sales", "marketing")
    devices = [t.device() for _ in range(3)]
    for d in devices:
        _join(admin, d, offers)
        _join(admin, d, sales)
    first = _finished(t, _broadcast(t, offers, {"n": 1}))
    second = _finished(t, _broadcast(t, sales, {"n": 2}))
    assert (first["stored"], first["skipped"]) == (3, 0)
    assert (second["stored"], second["skipped"]) == (0, 3)  # the default cap: 1 a day
    for d in devices:
        assert _broadcasts_in(admin, d) == [first["id"]]


@pytest.mark.shared_relay
def test_linked_members_get_it_at_once_and_their_acks_are_counted(
    relay: RelayProc, admin: httpx.Client
) -> None:
    t = Tenant(admin, "live")
    channel = _channel(t, "scores")
    d = t.device()
    _join(admin, d, channel)

    async def scenario() -> dict[str, Any]:
        ws, _ = await link(relay, d)
        try:
            bid = await asyncio.to_thread(_broadcast, t, channel, {"goal": 1})
            m = await recv(ws, timeout=10)
            assert isinstance(m, frames.Msg) and m.id == bid and m.sender == channel
            assert json.loads(bytes(m.data))["data"] == {"goal": 1}
            await send(ws, frames.Ack(cursor=m.cursor))

            def counted() -> dict[str, Any] | None:
                with t.client("broadcast") as c:
                    view: dict[str, Any] = _ok(c.get(f"/v1/broadcasts/{bid}"))
                return view if view["acked"] == 1 else None

            return await asyncio.to_thread(wait_until, counted, 15, 0.1, "the ack to be counted")
        finally:
            await ws.close()

    view = asyncio.run(scenario())
    assert view["stored"] == 1 and view["delivered"] >= 1


def _same_as_no_channel(r: httpx.Response, nobody: httpx.Response, channel: str) -> None:
    assert r.status_code == nobody.status_code == 404, (r.text, nobody.text)
    assert r.headers["content-type"] == nobody.headers["content-type"]
    assert r.text.replace(channel, NOBODY_CHANNEL) == nobody.text


@pytest.mark.shared_relay
def test_another_tenant_learns_nothing_of_a_channel(admin: httpx.Client) -> None:
    a, b = Tenant(admin, "a"), Tenant(admin, "b")
    channel = _channel(a, "private")
    bid = _broadcast(a, channel, {"x": 1})
    b_device = b.device()
    with b.client("broadcast") as c:
        for method, path, body in [
            ("GET", "/v1/channels/{}", None),
            ("DELETE", "/v1/channels/{}", None),
            ("POST", "/v1/channels/{}/messages", {"data": 1, "ttl": 60}),
        ]:
            r = c.request(method, path.format(channel), json=body)
            nobody = c.request(method, path.format(NOBODY_CHANNEL), json=body)
            _same_as_no_channel(r, nobody, channel)
        assert _ok(c.get("/v1/channels")) == {"channels": []}
        assert_problem(c.get(f"/v1/broadcasts/{bid}"), 404, "not_found")
    # B's device cannot join A's channel: answered as a channel that does not exist.
    joining = admin.post(
        f"/v1/devices/{b_device['pin']}/channels/{channel}", headers=_bearer(b_device["token"])
    )
    nobody = admin.post(
        f"/v1/devices/{b_device['pin']}/channels/{NOBODY_CHANNEL}",
        headers=_bearer(b_device["token"]),
    )
    _same_as_no_channel(joining, nobody, channel)
    with b.client("admin") as c:
        assert _ok(c.get("/v1/audit")) == {"entries": []}
        assert_problem(c.get("/v1/audit", params={"tenant": a.id}), 404, "not_found")
    # A's channel and its broadcast are unharmed.
    assert _finished(a, bid)["done_at"] is not None


@pytest.mark.shared_relay
def test_bad_requests_change_nothing(admin: httpx.Client) -> None:
    t = Tenant(admin, "strict")
    channel = _channel(t, "c")
    d = t.device()
    with t.client("broadcast") as c:
        assert_problem(c.post("/v1/channels", json={"name": "x", "class": "spam"}), 422)
        assert_problem(c.post("/v1/channels", json={"name": ""}), 422)
        assert_problem(c.post(f"/v1/channels/{channel}/messages", json={"data": 1, "ttl": 0}), 422)
        assert_problem(c.post(f"/v1/channels/{channel}/messages", json={"ttl": 60}), 422)
        assert [x["id"] for x in _ok(c.get("/v1/channels"))["channels"]] == [channel]
    with t.client("push") as c:  # the wrong scope
        assert_problem(c.post("/v1/channels", json={"name": "x", "class": "service"}), 403)
    # The relay's admin sees every tenant's channels but makes none: they are a tenant's.
    assert channel in [x["id"] for x in _ok(admin.get("/v1/channels"))["channels"]]
    assert_problem(admin.post("/v1/channels", json={"name": "x", "class": "service"}), 403)
    auth = _bearer(d["token"])
    assert_problem(admin.put(f"/v1/devices/{d['pin']}/refusals/spam", headers=auth), 404)
    assert_problem(admin.delete(f"/v1/devices/{d['pin']}/channels/{channel}", headers=auth), 404)
    assert_problem(admin.post(f"/v1/devices/{d['pin']}/channels/{channel}"), 401)
    assert _ok(admin.get(f"/v1/devices/{d['pin']}/channels", headers=auth))["refused"] == []
    with t.client("admin") as c:
        assert_problem(c.get("/v1/audit", params={"limit": 0}), 422)
        assert_problem(c.get("/v1/audit", params={"tenant": "NOT A TENANT"}), 422)


def test_a_relay_killed_mid_fan_out_leaves_no_member_without_it_or_with_it_twice(
    relay_factory: RelayFactory,
) -> None:
    """SIGKILL while pages of members are being stored; the next start resumes the
    fan-out (after --broadcast-takeover s): every member has each broadcast once."""
    flags = ["--broadcast-page", "20", "--broadcast-takeover", "1"]
    relay = relay_factory(extra=flags)
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        t = Tenant(admin, "big")
        channel = _channel(t, "everyone")
        members = [t.device() for _ in range(300)]
        for d in members:
            _join(admin, d, channel)
        sent: list[str] = []
        caught = False
        for _ in range(5):  # until the kill lands mid fan-out
            bid = _broadcast(t, channel, {"n": len(sent)})
            sent.append(bid)
            with t.client("broadcast") as c:
                view = _ok(c.get(f"/v1/broadcasts/{bid}"))
            if view["done_at"] is None:
                relay.kill()
                caught = True
                break
        assert caught, "every fan-out ended before the kill: make the pages smaller"
    relay.start()
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        t.base_url = relay.url
        for bid in sent:
            view = _finished(t, bid, timeout=60)
            assert (view["members"], view["stored"]) == (300, 300), view
        for d in members:
            assert sorted(_broadcasts_in(admin, d)) == sorted(sent), d["pin"]
