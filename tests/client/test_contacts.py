"""A device's own routes from the client side: the calls Routes builds, and
DeviceClient and the SDK's device.contacts / device.groups against a real relay."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pinrelay.client.contacts import (
    AsyncRunner,
    Contact,
    ContactAnswer,
    DeviceClient,
    Groups,
    Routes,
)
from pinrelay.client.device import Device, Message
from pinrelay.client.http import ApiError
from tests.relayproc import RelayProc, free_port

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


def befriend(relay: RelayProc, creator: dict[str, Any], *others: dict[str, Any]) -> None:
    """``creator`` and each of ``others`` become accepted contacts."""
    with DeviceClient(relay.url, creator["pin"], creator["token"]) as c:
        for other in others:
            c.invite(other["pin"])
    for other in others:
        with DeviceClient(relay.url, other["pin"], other["token"]) as o:
            o.accept(creator["pin"])


def test_device_client_groups_against_a_relay(relay: RelayProc) -> None:
    a, b, c, stranger = (relay.create_device() for _ in range(4))
    befriend(relay, a, b, c)
    with DeviceClient(relay.url, a["pin"], a["token"]) as ca:
        made = ca.create_group("friends", [b["pin"], stranger["pin"]])
        assert (made.name, made.creator, made.ignored) == ("friends", a["pin"], [stranger["pin"]])
        assert sorted(made.members) == sorted([a["pin"], b["pin"]])
        added = ca.add_members(made.group, [c["pin"]])
        assert sorted(added.members) == sorted([a["pin"], b["pin"], c["pin"]])
        ca.remove_member(made.group, c["pin"])
        [mine] = ca.groups()
        assert (mine.group, mine.name, mine.creator) == (made.group, "friends", a["pin"])
        assert sorted(mine.members) == sorted([a["pin"], b["pin"]])
    with DeviceClient(relay.url, b["pin"], b["token"]) as cb:
        with pytest.raises(ApiError) as refused:
            cb.add_members(made.group, [c["pin"]])
        assert refused.value.status == 403
        cb.leave(made.group)
        assert cb.groups() == []


async def test_device_groups_against_a_relay(relay: RelayProc) -> None:
    a, b, c = (relay.create_device() for _ in range(3))
    befriend(relay, a, b, c)
    groups = Groups(AsyncRunner(relay.url, a["pin"], a["token"]))
    made = await groups.create("g", [b["pin"]])
    added = await groups.add(made.group, [c["pin"]])
    assert sorted(added.members) == sorted([a["pin"], b["pin"], c["pin"]])
    await groups.remove(made.group, b["pin"])
    assert [sorted(g.members) for g in await groups.list()] == [sorted([a["pin"], c["pin"]])]
    await groups.leave(made.group)
    assert await groups.list() == []
    with pytest.raises(ApiError) as missing:
        await groups.leave("G0123456789AB")
    assert missing.value.status == 404


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
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with DeviceClient(url, A, "t") as client, pytest.raises(ApiError) as unreachable:
        client.contacts()
    assert unreachable.value.status == 0
    assert f"cannot reach the relay at {url}" in unreachable.value.detail


async def test_a_message_read_in_on_message_gets_its_read_receipt_once(
    relay: RelayProc,
) -> None:
    # The SDK acknowledges a message after on_message returns; a read sent from inside
    # it must not reach the relay before that ack (it would be ignored: undelivered).
    a, b = relay.create_device(), relay.create_device()
    receipts: list[tuple[str, str]] = []
    da = Device(
        a["pin"],
        a["token"],
        nothing,
        url=relay.url,
        on_receipt=lambda mid, state, _by: receipts.append((mid, state)),
    )

    async def read_it(m: Message) -> None:
        if m.kind == "chat":
            await db.read(m.id)

    db = Device(b["pin"], b["token"], read_it, url=relay.url)
    await da.contacts.invite(b["pin"])
    await db.contacts.accept(a["pin"])
    runners = [asyncio.create_task(d.run()) for d in (da, db)]
    try:
        handle = await da.send(b["pin"], "read me at once")
        await handle.wait_for("read", timeout=10)
        assert receipts == [(handle.id, "delivered"), (handle.id, "read")]
    finally:
        for d in (da, db):
            await d.stop()
        await asyncio.gather(*runners, return_exceptions=True)
