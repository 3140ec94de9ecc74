"""A device's own routes from the client side: the calls Routes builds, DeviceClient
and the SDK's device.contacts / device.groups against a real relay, and the group
calls against an httpx MockTransport that answers as the group API is specified
(the relay's group routes are being built on main)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from pinrelay.client.contacts import (
    AsyncRunner,
    Contact,
    ContactAnswer,
    DeviceClient,
    Group,
    Groups,
    Routes,
)
from pinrelay.client.device import Device, Message
from pinrelay.client.http import ApiError
from tests.relayproc import RelayProc

# Every test here on the `relay` fixture makes devices of its own: one relay for the
# module (tests/conftest.py).
pytestmark = pytest.mark.shared_relay

A, B, C = "0A0A0A0A", "0B0B0B0B", "0C0C0C0C"


def nothing(_m: Message) -> None:
    return None


class TestRoutes:
    def test_paths_and_bodies(self) -> None:
        r = Routes(A)
        assert (r.invite(B).method, r.invite(B).path, r.invite(B).body) == (
            "POST",
            f"/v1/devices/{A}/contacts",
            {"pin": B},
        )
        assert r.accept(B).path == f"/v1/devices/{A}/contacts/{B}/accept"
        assert r.decline(B).path == f"/v1/devices/{A}/contacts/{B}/decline"
        assert (r.remove(B).method, r.remove(B).path) == ("DELETE", f"/v1/devices/{A}/contacts/{B}")
        assert (r.block(B).path, r.block(B).body) == (f"/v1/devices/{A}/blocks", {"pin": B})
        assert (r.unblock(B).method, r.unblock(B).path) == ("DELETE", f"/v1/devices/{A}/blocks/{B}")
        assert r.read(["x", "y"]).body == {"ids": ["x", "y"]}
        g = "G0123456789AB"
        assert r.add_members(g, [B]).path == f"/v1/devices/{A}/groups/{g}/members"
        assert r.remove_member(g, B).path == f"/v1/devices/{A}/groups/{g}/members/{B}"
        assert (r.leave(g).method, r.leave(g).path) == ("DELETE", f"/v1/devices/{A}/groups/{g}")

    def test_a_send_has_a_client_id_and_a_ttl_only_when_given(self) -> None:
        r = Routes(A)
        body = r.send(B, "hi").body
        assert body is not None and set(body) == {"to", "text", "client_id"}
        assert body["client_id"] != r.send(B, "hi").body["client_id"]  # type: ignore[index]
        assert r.send(B, "hi", "mine", 60).body == {
            "to": B,
            "text": "hi",
            "client_id": "mine",
            "ttl": 60,
        }

    def test_what_a_caller_passes_stays_one_path_segment(self) -> None:
        assert (
            Routes(A).accept("../../keys").path == f"/v1/devices/{A}/contacts/..%2F..%2Fkeys/accept"
        )


class FakeGroups:
    """The group API as specified, for A's contacts B and C (not D)."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        self.contacts = {A: {B, C}}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")  # v1 devices PIN groups [G [members [M]]]
        pin = parts[2]
        assert request.headers["authorization"] == f"Bearer token-{pin}"
        body = json.loads(request.content) if request.content else {}
        if parts[3:] == ["groups"] and request.method == "POST":
            friends = self.contacts.get(pin, set())
            gid = f"G{len(self.groups):012d}"
            members = [pin] + [p for p in body["members"] if p in friends]
            ignored = [p for p in body["members"] if p not in friends]
            self.groups[gid] = {
                "group": gid,
                "name": body["name"],
                "creator": pin,
                "members": members,
            }
            return httpx.Response(201, json={**self.groups[gid], "ignored": ignored})
        if parts[3:] == ["groups"]:
            mine = [g for g in self.groups.values() if pin in g["members"]]
            return httpx.Response(200, json={"groups": mine})
        group = self.groups.get(parts[4])
        if group is None:
            return httpx.Response(404, json={"status": 404, "detail": "no such group"})
        if len(parts) == 5:  # leave
            group["members"].remove(pin)
            return httpx.Response(204)
        if group["creator"] != pin:
            return httpx.Response(403, json={"status": 403, "detail": "only its creator may"})
        if request.method == "POST":
            friends = self.contacts.get(pin, set())
            group["members"] += [p for p in body["pins"] if p in friends]
            ignored = [p for p in body["pins"] if p not in friends]
            return httpx.Response(200, json={**group, "ignored": ignored})
        group["members"].remove(parts[6])
        return httpx.Response(204)


def test_device_client_groups_against_the_specified_api() -> None:
    fake = FakeGroups()
    transport = httpx.MockTransport(fake)
    with DeviceClient("http://relay", A, f"token-{A}", transport=transport) as a:
        made = a.create_group("friends", [B, "0D0D0D0D"])
        assert made == Group(
            group="G000000000000",
            name="friends",
            creator=A,
            members=[A, B],
            ignored=["0D0D0D0D"],
        )
        assert a.add_members(made.group, [C]).members == [A, B, C]
        a.remove_member(made.group, C)
        assert a.groups() == [Group(group=made.group, name="friends", creator=A, members=[A, B])]
    with DeviceClient("http://relay", B, f"token-{B}", transport=transport) as b:
        with pytest.raises(ApiError) as refused:
            b.add_members(made.group, [C])
        assert (refused.value.status, refused.value.detail) == (403, "only its creator may")
        b.leave(made.group)
        assert b.groups() == []


async def test_device_groups_against_the_specified_api() -> None:
    transport = httpx.MockTransport(FakeGroups())
    groups = Groups(AsyncRunner("http://relay", A, f"token-{A}", transport=transport))
    made = await groups.create("g", [B])
    assert (await groups.add(made.group, [C])).members == [A, B, C]
    await groups.remove(made.group, B)
    assert [g.members for g in await groups.list()] == [[A, C]]
    await groups.leave(made.group)
    assert await groups.list() == []
    with pytest.raises(ApiError, match="no such group"):
        await groups.leave("G999999999999")


async def test_device_contacts_against_a_relay(relay: RelayProc) -> None:
    a, b, c = relay.create_device(), relay.create_device(), relay.create_device()
    da = Device(a["pin"], a["token"], nothing, url=relay.url)
    db = Device(b["pin"], b["token"], nothing, url=relay.url)
    dc = Device(c["pin"], c["token"], nothing, url=relay.url)
    assert await da.contacts.invite(b["pin"]) == ContactAnswer(pin=b["pin"], state="invited")
    [pending] = await db.contacts.list()
    assert (pending.pin, pending.state) == (a["pin"], "pending")
    assert isinstance(pending, Contact) and pending.since.endswith("Z")
    assert (await db.contacts.accept(a["pin"])).state == "accepted"
    assert [(x.pin, x.state) for x in await da.contacts.list()] == [(b["pin"], "accepted")]
    await dc.contacts.invite(a["pin"])
    assert (await da.contacts.decline(c["pin"])).state == "declined"
    assert (await da.contacts.block(c["pin"])).state == "blocked"
    await da.contacts.unblock(c["pin"])
    await da.contacts.remove(b["pin"])
    assert await da.contacts.list() == [] == await db.contacts.list()
    with pytest.raises(ApiError) as missing:
        await da.contacts.accept(c["pin"])
    assert missing.value.status == 404
    wrong = Device(a["pin"], "wrong", nothing, url=relay.url)
    with pytest.raises(ApiError) as refused:
        await wrong.contacts.list()
    assert refused.value.status == 401


async def test_sdk_chat_with_contacts_made_through_the_sdk(relay: RelayProc) -> None:
    a, b = relay.create_device(), relay.create_device()
    got: list[str] = []
    da = Device(a["pin"], a["token"], nothing, url=relay.url)
    db = Device(
        b["pin"],
        b["token"],
        lambda m: got.append(m.data["text"]) if m.kind == "chat" else None,
        url=relay.url,
    )
    await da.contacts.invite(b["pin"])
    await db.contacts.accept(a["pin"])
    runners = [asyncio.create_task(d.run()) for d in (da, db)]
    try:
        handle = await da.send(b["pin"], "made friends with the SDK")
        await handle.wait_for("delivered", timeout=10)
        assert got == ["made friends with the SDK"]
    finally:
        for d in (da, db):
            await d.stop()
        await asyncio.gather(*runners, return_exceptions=True)


async def test_contacts_need_the_http_url() -> None:
    device = Device(A, "t", nothing, link_urls=["ws://127.0.0.1:1/v1/link"])
    with pytest.raises(ValueError, match="HTTP url"):
        await device.contacts.list()


def test_unreachable_is_status_0() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = DeviceClient("http://relay", A, "t", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(ApiError) as unreachable:
        client.contacts()
    assert unreachable.value.status == 0
    assert "cannot reach the relay at http://relay" in unreachable.value.detail
