"""Portability (PROTOCOL "Portability", issue 15) on a real relay on SQLite; the same
tests run on the cluster store in test_portability_on_cluster.py.

A device with a backlog, contacts and a group is exported, moved to another tenant at
its request with that tenant's acceptance, and moved to a new handset with a pairing
code: every undelivered message arrives once on the new handset's link, contacts and
groups still work, the old tenant's keys get 404 and the old token is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pinrelay.core import frames
from tests.api.test_api import assert_problem
from tests.api.test_tenants import NOBODY, Tenant, same_as_nobody
from tests.linkclient import closed_with, error_then_close, link, raw_link, recv, send
from tests.relayproc import RelayProc

pytestmark = pytest.mark.shared_relay


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _befriend(http: httpx.Client, d: dict[str, Any], e: dict[str, Any]) -> str:
    """``d`` and ``e`` become contacts and share a group ``d`` made; the group's id."""
    d_auth, e_auth = _bearer(d["token"]), _bearer(e["token"])
    _ok(http.post(f"/v1/devices/{d['pin']}/contacts", json={"pin": e["pin"]}, headers=d_auth), 202)
    _ok(http.post(f"/v1/devices/{e['pin']}/contacts/{d['pin']}/accept", headers=e_auth))
    group = http.post(
        f"/v1/devices/{d['pin']}/groups",
        json={"name": "crew", "members": [e["pin"]]},
        headers=d_auth,
    )
    return str(_ok(group, 201)["group"])


def _push(key: str, pin: str, n: int, http: httpx.Client) -> httpx.Response:
    return http.post(
        f"/v1/devices/{pin}/messages", json={"data": {"n": n}, "ttl": 3600}, headers=_bearer(key)
    )


def _export_all(http: httpx.Client, pin: str, token: str, limit: int) -> list[dict[str, Any]]:
    """Every undelivered message, page by page."""
    got: list[dict[str, Any]] = []
    after = 0
    while True:
        page = _ok(
            http.get(
                f"/v1/devices/{pin}/export",
                params={"after": after, "limit": limit},
                headers=_bearer(token),
            )
        )
        assert len(page["messages"]) <= limit
        got += page["messages"]
        after = page["cursor"]
        if not page["truncated"]:
            return got


async def _refused(relay: RelayProc, pin: str, token: str) -> None:
    ws = await raw_link(relay)
    await send(ws, frames.Hello(pin=pin, token=token, cursor=0))
    refused, _ = await error_then_close(ws)
    assert refused.code == "unauthorized"


async def _receive(
    relay: RelayProc, device: dict[str, Any], expected: set[str]
) -> list[frames.Msg]:
    """Link as ``device`` until every id of ``expected`` came; each message once, in
    cursor order."""
    ws, _ = await link(relay, device)
    seen: list[frames.Msg] = []
    try:
        while {m.id for m in seen} < expected:
            frame = await recv(ws)
            if isinstance(frame, frames.Msg):
                seen.append(frame)
        assert len({m.id for m in seen}) == len(seen), "a message arrived twice"
        assert [m.cursor for m in seen] == sorted(m.cursor for m in seen)
    finally:
        await ws.close()
    return seen


def test_export_move_and_new_handset(relay: RelayProc, admin: httpx.Client) -> None:
    a, b = Tenant(admin, "carrier A"), Tenant(admin, "carrier B")
    d, e = a.device(), a.device()
    pin = d["pin"]
    group = _befriend(admin, d, e)
    for n in range(3):
        _ok(_push(a.keys["push"], pin, n, admin), 201)

    answer = admin.get(f"/v1/devices/{pin}/export", headers=_bearer(d["token"]))
    assert answer.headers["cache-control"] == "no-store"
    export = _ok(answer)
    assert export["format"] == "pinrelay-export/1"
    assert export["device"]["pin"] == pin and export["device"]["tenant"] == a.id
    assert export["contacts"] == [
        {"pin": e["pin"], "state": "accepted", "since": export["contacts"][0]["since"]}
    ]
    assert [(g["group"], g["creator"], sorted(g["members"])) for g in export["groups"]] == [
        (group, pin, sorted([pin, e["pin"]]))
    ]
    assert export["grants"] == [] and export["move"] is None and export["channels"] == []
    pushes = [m for m in export["messages"] if m["kind"] == "push"]
    assert [m["data"] for m in pushes] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert not export["truncated"] and export["cursor"] == export["messages"][-1]["cursor"]
    # Paging gives the same messages, once each.
    assert _export_all(admin, pin, d["token"], limit=1) == export["messages"]
    undelivered = {m["id"] for m in export["messages"]}

    # The move: the device asks, tenant B accepts.
    asked = admin.post(
        f"/v1/devices/{pin}/move", json={"tenant": b.id}, headers=_bearer(d["token"])
    )
    assert _ok(asked, 202)["tenant"] == b.id
    shown = _ok(admin.get(f"/v1/devices/{pin}/move", headers=_bearer(d["token"])))
    assert shown == asked.json()
    with a.client("admin") as a_admin:  # A may not accept for B: B is unknown to it
        assert_problem(a_admin.post(f"/v1/tenants/{b.id}/moves/{pin}/accept"), 404)
    with b.client("push") as b_push:  # accepting needs the devices scope
        assert_problem(b_push.post(f"/v1/tenants/{b.id}/moves/{pin}/accept"), 403)
    with b.client("devices") as b_devices:
        done = b_devices.post(f"/v1/tenants/{b.id}/moves/{pin}/accept")
        assert _ok(done) == {"pin": pin, "tenant": b.id}
        again = b_devices.post(f"/v1/tenants/{b.id}/moves/{pin}/accept")
        assert_problem(again, 404)
        assert _ok(b_devices.get(f"/v1/devices/{pin}"))["tenant"] == b.id
    assert_problem(admin.get(f"/v1/devices/{pin}/move", headers=_bearer(d["token"])), 404)

    # A's keys lose the device at once, as for a PIN with no device.
    with a.client("devices") as a_devices:
        same_as_nobody(
            a_devices.get(f"/v1/devices/{pin}"), a_devices.get(f"/v1/devices/{NOBODY}"), pin
        )
    same_as_nobody(
        _push(a.keys["push"], pin, 9, admin), _push(a.keys["push"], NOBODY, 9, admin), pin
    )
    late = _ok(_push(b.keys["push"], pin, 3, admin), 201)["id"]

    # A new handset: a pairing code from B's devices key gives it a new token.
    with b.client("devices") as b_devices:
        code = _ok(b_devices.post(f"/v1/devices/{pin}/pairing"), 201)["code"]
    paired = _ok(admin.post("/v1/pairing", json={"code": code}, headers={}))
    assert paired["pin"] == pin and paired["token"] != d["token"]
    old = dict(d)
    d = {**d, "token": paired["token"]}
    assert_problem(admin.get(f"/v1/devices/{pin}/export", headers=_bearer(old["token"])), 401)
    asyncio.run(_refused(relay, pin, old["token"]))

    # Contacts and groups still work across tenants.
    chat = {"to": pin, "text": "still there?", "client_id": "c1"}
    from_e = _ok(
        admin.post(f"/v1/devices/{e['pin']}/chat", json=chat, headers=_bearer(e["token"])), 201
    )
    to_group = {"to": group, "text": "yes", "client_id": "c2"}
    _ok(admin.post(f"/v1/devices/{pin}/chat", json=to_group, headers=_bearer(d["token"])), 201)
    inbox = _ok(admin.get(f"/v1/devices/{e['pin']}/inbox", headers=_bearer(e["token"])))
    assert any(m["kind"] == "chat" and m.get("from") == pin for m in inbox["messages"])

    # The new handset's link: every undelivered message once, in cursor order.
    seen = asyncio.run(_receive(relay, d, undelivered | {late, from_e["id"]}))
    # Acknowledged, none of them comes again (a receipt of the group message may).
    ack = {"cursor": seen[-1].cursor}
    _ok(admin.post(f"/v1/devices/{pin}/ack", json=ack, headers=_bearer(d["token"])), 204)
    rest = _ok(admin.get(f"/v1/devices/{pin}/inbox", headers=_bearer(d["token"])))
    assert not {m["id"] for m in rest["messages"]} & {m.id for m in seen}


def test_a_tenantless_device_moves_the_same_way(admin: httpx.Client) -> None:
    a, b = Tenant(admin, "going away"), Tenant(admin, "new home")
    d = a.device()
    pin, auth = d["pin"], _bearer(d["token"])
    _ok(_push(a.keys["push"], pin, 1, admin), 201)
    _ok(admin.delete(f"/v1/tenants/{a.id}"), 204)
    export = _ok(admin.get(f"/v1/devices/{pin}/export", headers=auth))
    assert export["device"]["tenant"] is None and len(export["messages"]) == 1
    _ok(admin.post(f"/v1/devices/{pin}/move", json={"tenant": b.id}, headers=auth), 202)
    # The relay's admin key may accept for any tenant.
    _ok(admin.post(f"/v1/tenants/{b.id}/moves/{pin}/accept"))
    after = _ok(admin.get(f"/v1/devices/{pin}/export", headers=auth))
    assert after["device"]["tenant"] == b.id and after["messages"] == export["messages"]


def test_move_requests_are_checked(admin: httpx.Client) -> None:
    a, b = Tenant(admin, "here"), Tenant(admin, "there")
    d = a.device()
    pin, auth = d["pin"], _bearer(d["token"])
    move = f"/v1/devices/{pin}/move"
    assert_problem(admin.post(move, json={"tenant": "cccccccccccc"}, headers=auth), 404)
    assert_problem(admin.post(move, json={"tenant": a.id}, headers=auth), 409)
    assert_problem(admin.post(move, json={"tenant": "Nope"}, headers=auth), 422)
    assert_problem(admin.post(move, json={"tenant": b.id}, headers={}), 401)
    assert_problem(admin.get(move, headers=auth), 404)
    assert_problem(admin.delete(move, headers=auth), 404)
    # The last request counts; a withdrawn one cannot be accepted.
    _ok(admin.post(move, json={"tenant": "default"}, headers=auth), 202)
    _ok(admin.post(move, json={"tenant": b.id}, headers=auth), 202)
    assert_problem(admin.post(f"/v1/tenants/default/moves/{pin}/accept"), 404)
    _ok(admin.delete(move, headers=auth), 204)
    with b.client("admin") as b_admin:
        assert_problem(b_admin.post(f"/v1/tenants/{b.id}/moves/{pin}/accept"), 404)
        assert_problem(b_admin.post(f"/v1/tenants/{b.id}/moves/nothex00/accept"), 404)
    assert _ok(admin.get(f"/v1/devices/{pin}/export", headers=auth))["device"]["tenant"] == a.id


def test_export_pages_are_bounded(admin: httpx.Client) -> None:
    a = Tenant(admin, "pages")
    d = a.device()
    pin, auth = d["pin"], _bearer(d["token"])
    for n in range(5):
        _ok(_push(a.keys["push"], pin, n, admin), 201)
    page = _ok(admin.get(f"/v1/devices/{pin}/export", params={"limit": 2}, headers=auth))
    assert [m["data"]["n"] for m in page["messages"]] == [0, 1] and page["truncated"]
    assert page["cursor"] == page["messages"][-1]["cursor"]
    rest = _export_all(admin, pin, d["token"], limit=2)
    assert [m["data"]["n"] for m in rest] == [0, 1, 2, 3, 4]
    export = f"/v1/devices/{pin}/export"
    assert_problem(admin.get(export, params={"limit": 0}, headers=auth), 422)
    assert_problem(admin.get(export, params={"limit": 1001}, headers=auth), 422)
    assert_problem(admin.get(export, headers=_bearer(a.keys["admin"])), 401)


async def _kicked_on_rotation(
    relay: RelayProc, device: dict[str, Any], rotate: Callable[[], str]
) -> str:
    """Link with the old token, rotate, and see that link closed (after the backlog
    the old handset got unacknowledged); the new token."""
    ws, _ = await link(relay, device)
    token = await asyncio.to_thread(rotate)
    frame = await recv(ws)
    while isinstance(frame, frames.Msg):
        frame = await recv(ws)
    assert isinstance(frame, frames.Error) and frame.code == "unauthorized", frame
    assert await closed_with(ws) == 4401
    return token


def test_a_new_handset_by_token_rotation_after_a_move(
    relay: RelayProc, admin: httpx.Client
) -> None:
    a, b = Tenant(admin, "before"), Tenant(admin, "after")
    d = a.device()
    pin, auth = d["pin"], _bearer(d["token"])
    ids = {_ok(_push(a.keys["push"], pin, n, admin), 201)["id"] for n in range(3)}
    _ok(admin.post(f"/v1/devices/{pin}/move", json={"tenant": b.id}, headers=auth), 202)
    with b.client("devices") as b_devices:
        _ok(b_devices.post(f"/v1/tenants/{b.id}/moves/{pin}/accept"))

        def rotate() -> str:
            return str(_ok(b_devices.post(f"/v1/devices/{pin}/token"))["token"])

        token = asyncio.run(_kicked_on_rotation(relay, d, rotate))
    assert_problem(admin.get(f"/v1/devices/{pin}/export", headers=auth), 401)
    seen = asyncio.run(_receive(relay, {**d, "token": token}, ids))
    assert {m.id for m in seen} == ids


def test_a_move_counts_against_the_devices_quota(admin: httpx.Client) -> None:
    a, b = Tenant(admin, "small"), Tenant(admin, "full")
    b.device()
    _ok(admin.patch(f"/v1/tenants/{b.id}", json={"quotas": {"devices": 1}}))
    d = a.device()
    pin, auth = d["pin"], _bearer(d["token"])
    _ok(admin.post(f"/v1/devices/{pin}/move", json={"tenant": b.id}, headers=auth), 202)
    with b.client("devices") as b_devices:
        full = assert_problem(b_devices.post(f"/v1/tenants/{b.id}/moves/{pin}/accept"), 429)
        assert "devices quota" in full["detail"]
        assert _ok(admin.get(f"/v1/devices/{pin}/move", headers=auth))["tenant"] == b.id
        _ok(admin.patch(f"/v1/tenants/{b.id}", json={"quotas": {"devices": 2}}))
        _ok(b_devices.post(f"/v1/tenants/{b.id}/moves/{pin}/accept"))
