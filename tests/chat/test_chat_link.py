"""Contacts, chat and receipts against a real relay process (PROTOCOL "Contacts",
"Chat"), driven by hand over the link and HTTP (no SDK), on the SQLite store.

The same tests run on a cluster store: tests/chat/test_chat_link_on_cluster.py;
chat across relays and through relay kills: tests/cluster/test_chat_cluster.py.

The classes' tests on the ``relay`` fixture make devices of their own and look at
nothing relay-wide: one relay per module (``shared_relay``; on the cluster, one relay
on it). The tests that need flags of their own start a relay with ``relay_factory``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection

from pinrelay.core import frames
from tests.chat.conftest import Links
from tests.conftest import RelayFactory
from tests.linkclient import error_then_close, recv, send
from tests.relayproc import RelayProc

Dev = dict[str, Any]


def bearer(device: Dev) -> dict[str, str]:
    return {"Authorization": f"Bearer {device['token']}"}


def http(relay: RelayProc) -> httpx.Client:
    return httpx.Client(base_url=relay.url, timeout=10)


def invite(relay: RelayProc, inviter: Dev, pin: str) -> httpx.Response:
    with http(relay) as c:
        return c.post(
            f"/v1/devices/{inviter['pin']}/contacts", json={"pin": pin}, headers=bearer(inviter)
        )


def accept(relay: RelayProc, invitee: Dev, inviter: Dev) -> httpx.Response:
    with http(relay) as c:
        return c.post(
            f"/v1/devices/{invitee['pin']}/contacts/{inviter['pin']}/accept",
            headers=bearer(invitee),
        )


def contacts(relay: RelayProc, device: Dev) -> dict[str, str]:
    with http(relay) as c:
        r = c.get(f"/v1/devices/{device['pin']}/contacts", headers=bearer(device))
    assert r.status_code == 200, r.text
    return {e["pin"]: e["state"] for e in r.json()["contacts"]}


def befriend(relay: RelayProc, a: Dev, b: Dev) -> None:
    assert invite(relay, a, b["pin"]).status_code == 202
    assert accept(relay, b, a).status_code == 200


async def next_msg(ws: ClientConnection, kind: str | None = None) -> frames.Msg:
    """The next ``msg`` frame (acknowledging contact notices on the way, if skipped)."""
    while True:
        frame = await recv(ws)
        if isinstance(frame, frames.Msg) and (kind is None or frame.kind == kind):
            return frame
        if isinstance(frame, frames.Msg):
            await send(ws, frames.Ack(cursor=frame.cursor))


async def answer(ws: ClientConnection) -> frames.Sent | frames.Unsent:
    while True:
        frame = await recv(ws)
        if isinstance(frame, frames.Sent | frames.Unsent):
            return frame


def backlog_of(relay: RelayProc, device: Dev) -> int:
    with relay.client() as c:
        n: int = c.show_device(device["pin"])["backlog"]
    return n


def chat_send(to: str, text: str, client_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "send", "to": to, "text": text, "client_id": client_id, **extra}


@pytest.fixture
def pair(relay: RelayProc) -> tuple[Dev, Dev]:
    a, b = relay.create_device(), relay.create_device()
    befriend(relay, a, b)
    return a, b


@pytest.mark.shared_relay
class TestContacts:
    async def test_invite_accept_notices_and_lists(self, links: Links, relay: RelayProc) -> None:
        a, b = relay.create_device(), relay.create_device()
        r = invite(relay, a, b["pin"])
        assert (r.status_code, r.json()) == (202, {"pin": b["pin"], "state": "invited"})
        assert contacts(relay, a) == {b["pin"]: "invited"}
        assert contacts(relay, b) == {a["pin"]: "pending"}
        ws_b, _ = await links(relay, b)
        notice = await next_msg(ws_b, "contact")
        assert (notice.sender, msgspec.json.decode(notice.data)) == (a["pin"], {"event": "invited"})
        r = accept(relay, b, a)
        assert (r.status_code, r.json()) == (200, {"pin": a["pin"], "state": "accepted"})
        ws_a, _ = await links(relay, a)
        notice = await next_msg(ws_a, "contact")
        assert (notice.sender, msgspec.json.decode(notice.data)) == (
            b["pin"],
            {"event": "accepted"},
        )
        assert (
            contacts(relay, a)
            == {b["pin"]: "accepted"}
            == {p: s for p, s in contacts(relay, a).items()}
        )

    def test_invite_answer_is_the_same_for_a_pin_with_no_device(self, relay: RelayProc) -> None:
        a, b = relay.create_device(), relay.create_device()
        nobody = "0" * 7 + ("1" if b["pin"][-1] != "1" else "2")
        real, fake = invite(relay, a, b["pin"]), invite(relay, a, nobody)
        assert real.status_code == fake.status_code == 202
        assert real.content.replace(b["pin"].encode(), b"PIN") == fake.content.replace(
            nobody.encode(), b"PIN"
        )
        skip = {"date", "content-length"}
        assert {k: v for k, v in real.headers.items() if k not in skip} == {
            k: v for k, v in fake.headers.items() if k not in skip
        }
        assert real.headers["content-length"] == fake.headers["content-length"]

    def test_accept_without_invitation_is_404_and_changes_nothing(self, relay: RelayProc) -> None:
        a, b = relay.create_device(), relay.create_device()
        r = accept(relay, a, b)
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert contacts(relay, a) == {} == contacts(relay, b)

    def test_decline_block_unblock_remove(self, relay: RelayProc) -> None:
        a, b = relay.create_device(), relay.create_device()
        invite(relay, a, b["pin"])
        with http(relay) as c:
            r = c.post(f"/v1/devices/{b['pin']}/contacts/{a['pin']}/decline", headers=bearer(b))
            assert (r.status_code, r.json()["state"]) == (200, "declined")
            assert contacts(relay, b) == {}
            r = c.post(f"/v1/devices/{b['pin']}/blocks", json={"pin": a["pin"]}, headers=bearer(b))
            assert (r.status_code, r.json()["state"]) == (200, "blocked")
            assert contacts(relay, b) == {a["pin"]: "blocked"}
            r = c.delete(f"/v1/devices/{b['pin']}/blocks/{a['pin']}", headers=bearer(b))
            assert r.status_code == 204
            assert contacts(relay, b) == {}
        befriend(relay, a, b)
        with http(relay) as c:
            r = c.delete(f"/v1/devices/{a['pin']}/contacts/{b['pin']}", headers=bearer(a))
            assert r.status_code == 204
        assert contacts(relay, a) == {} == contacts(relay, b)

    def test_a_device_is_not_its_own_contact(self, relay: RelayProc) -> None:
        a = relay.create_device()
        assert invite(relay, a, a["pin"]).status_code == 422
        with http(relay) as c:
            r = c.post(f"/v1/devices/{a['pin']}/blocks", json={"pin": a["pin"]}, headers=bearer(a))
        assert r.status_code == 422
        assert contacts(relay, a) == {}

    def test_contacts_need_the_devices_own_token(self, relay: RelayProc) -> None:
        a, b = relay.create_device(), relay.create_device()
        with http(relay) as c:
            r = c.post(
                f"/v1/devices/{a['pin']}/contacts", json={"pin": b["pin"]}, headers=bearer(b)
            )
        assert r.status_code == 401
        assert contacts(relay, a) == {} == contacts(relay, b)

    def test_invitations_are_rate_limited(self, relay_factory: RelayFactory) -> None:
        relay = relay_factory(extra=["--invites-per-hour", "3"])
        a = relay.create_device()
        pins = [f"{n:08X}" for n in range(1, 5)]
        assert [invite(relay, a, p).status_code for p in pins[:3]] == [202, 202, 202]
        r = invite(relay, a, pins[3])
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        assert pins[3] not in contacts(relay, a)
        # The budget is in the store: a relay killed and started again keeps it (on a
        # cluster every relay shares it: tests/store/test_contract_budgets.py).
        relay.kill()
        relay.start()
        assert invite(relay, a, pins[3]).status_code == 429
        assert pins[3] not in contacts(relay, a)
        # Accepting an accepted contact tells the inviter again: it counts as an
        # invitation does, so a device cannot fill another's queue with notices.
        d, e = relay.create_device(), relay.create_device()
        befriend(relay, d, e)  # e's first accept is free
        assert [accept(relay, e, d).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert backlog_of(relay, d) == 1 + 3  # the first "accepted", then the repeats
        assert contacts(relay, e) == {d["pin"]: "accepted"}


@pytest.mark.shared_relay
class TestSend:
    async def test_send_receive_receipts(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        ws_a, _ = await links(relay, a)
        ws_b, _ = await links(relay, b)
        await send(ws_a, chat_send(b["pin"], "hello ✓", "c1"))
        sent = await answer(ws_a)
        assert isinstance(sent, frames.Sent), sent
        assert (sent.client_id, sent.to) == ("c1", b["pin"])
        got = await next_msg(ws_b, "chat")
        assert (got.id, got.sender) == (sent.id, a["pin"])
        assert msgspec.json.decode(got.data) == {"text": "hello ✓", "group": None}
        await send(ws_b, frames.Ack(cursor=got.cursor))
        receipt = await next_msg(ws_a, "receipt")
        assert receipt.sender == b["pin"]
        assert msgspec.json.decode(receipt.data) == {"id": sent.id, "state": "delivered"}
        await send(ws_a, frames.Ack(cursor=receipt.cursor))
        # Read twice (and an id never delivered to b): one read receipt. A read with a
        # client_id is answered once handled; one without is not.
        await send(ws_b, {"type": "read", "ids": [sent.id, "01ZZZZZZZZZZZZZZZZZZZZZZZZ"]})
        await send(ws_b, {"type": "read", "ids": [sent.id], "client_id": "r1"})
        done = await recv(ws_b)
        assert isinstance(done, frames.ReadDone) and done.client_id == "r1"
        receipt = await next_msg(ws_a, "receipt")
        assert msgspec.json.decode(receipt.data) == {"id": sent.id, "state": "read"}
        await send(ws_a, frames.Ack(cursor=receipt.cursor))
        # Nothing more: a third message proves the order and the absence of a duplicate.
        await send(ws_a, chat_send(b["pin"], "again", "c2"))
        assert isinstance(await answer(ws_a), frames.Sent)
        got = await next_msg(ws_b, "chat")
        await send(ws_b, frames.Ack(cursor=got.cursor))
        receipt = await next_msg(ws_a, "receipt")
        assert msgspec.json.decode(receipt.data)["state"] == "delivered"
        assert msgspec.json.decode(receipt.data)["id"] != sent.id

    async def test_read_right_after_the_ack_is_not_lost(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        # A client that shows a message at once acks it and reads it in one breath
        # (the web messenger): the read waits for the delivered bookkeeping that the
        # ack stores, instead of finding nothing to read and sending no receipt.
        a, b = pair
        ws_a, _ = await links(relay, a)
        ws_b, _ = await links(relay, b)
        for n in range(5):
            await send(ws_a, chat_send(b["pin"], f"quick {n}", f"q{n}"))
            assert isinstance(await answer(ws_a), frames.Sent)
        ids = []
        for _ in range(5):
            got = await next_msg(ws_b, "chat")
            # Two frames back to back, no answer awaited in between.
            await ws_b.send(json.dumps({"type": "ack", "cursor": got.cursor}))
            await ws_b.send(json.dumps({"type": "read", "ids": [got.id]}))
            ids.append(got.id)
        states: dict[str, list[str]] = {i: [] for i in ids}
        while any(len(v) < 2 for v in states.values()):
            receipt = await next_msg(ws_a, "receipt")
            data = msgspec.json.decode(receipt.data)
            states[data["id"]].append(data["state"])
            await send(ws_a, frames.Ack(cursor=receipt.cursor))
        assert all(v == ["delivered", "read"] for v in states.values()), states

    async def test_delivered_receipt_when_acked_by_a_later_hello(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        ws_a, _ = await links(relay, a)
        await send(ws_a, chat_send(b["pin"], "while you were away", "c1"))
        sent = await answer(ws_a)
        assert isinstance(sent, frames.Sent)
        ws_b, _ = await links(relay, b)
        got = await next_msg(ws_b, "chat")
        await ws_b.close()  # processed, but the link dropped before its ack
        ws_b, welcome = await links(relay, b, cursor=got.cursor)
        assert welcome.cursor == got.cursor
        receipt = await next_msg(ws_a, "receipt")
        assert msgspec.json.decode(receipt.data) == {"id": sent.id, "state": "delivered"}

    async def test_strangers_and_blocked_senders_get_the_same_answer(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        stranger = relay.create_device()
        with http(relay) as c:
            r = c.post(f"/v1/devices/{b['pin']}/blocks", json={"pin": a["pin"]}, headers=bearer(b))
            assert r.status_code == 200
        answers = []
        for sender in (a, stranger):
            ws, _ = await links(relay, sender)
            await send(ws, chat_send(b["pin"], "hi", "x"))
            got = await answer(ws)
            assert isinstance(got, frames.Unsent), got
            answers.append((got.code, got.message))
        assert answers[0] == answers[1]
        assert answers[0][0] == "not_contact"
        with relay.client() as c:
            assert c.show_device(b["pin"])["backlog"] == 1  # a's old invitation notice only

    async def test_client_id_replay_stores_once(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        ws_a, _ = await links(relay, a)
        await send(ws_a, chat_send(b["pin"], "once", "same"))
        first = await answer(ws_a)
        await send(ws_a, chat_send(b["pin"], "once, edited", "same"))
        second = await answer(ws_a)
        assert isinstance(first, frames.Sent) and isinstance(second, frames.Sent)
        assert first.id == second.id
        with relay.client() as c:
            before = c.show_device(b["pin"])["backlog"]
        ws_b, _ = await links(relay, b)
        chats = []
        for _ in range(before):
            m = await next_msg(ws_b)
            if m.kind == "chat":
                chats.append(msgspec.json.decode(m.data)["text"])
        assert chats == ["once"]

    async def test_a_retry_is_answered_as_the_first_send_after_the_contact_went(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        # The first answer lost, the client sends again; meanwhile b removed a.  The
        # message was stored: the retry must not say otherwise.
        a, b = pair
        ws_a, _ = await links(relay, a)
        await send(ws_a, chat_send(b["pin"], "stored", "r1"))
        first = await answer(ws_a)
        assert isinstance(first, frames.Sent), first
        with http(relay) as c:
            r = c.delete(f"/v1/devices/{b['pin']}/contacts/{a['pin']}", headers=bearer(b))
            assert r.status_code == 204, r.text
            backlog = backlog_of(relay, b)
            await send(ws_a, chat_send(b["pin"], "stored", "r1"))
            again = await answer(ws_a)
            assert isinstance(again, frames.Sent), again
            assert (again.id, again.to) == (first.id, b["pin"])
            body = {"to": b["pin"], "text": "stored", "client_id": "r1"}
            r = c.post(f"/v1/devices/{a['pin']}/chat", json=body, headers=bearer(a))
            assert (r.status_code, r.json()) == (201, {"id": first.id, "to": b["pin"]}), r.text
            # A new message is refused, and nothing was stored by any of these.
            await send(ws_a, chat_send(b["pin"], "new", "r2"))
            refused = await answer(ws_a)
            assert isinstance(refused, frames.Unsent) and refused.code == "not_contact"
            assert backlog_of(relay, b) == backlog

    async def test_a_client_id_used_again_for_another_recipient_answers_the_first(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        c = relay.create_device()
        befriend(relay, a, c)
        ws_a, _ = await links(relay, a)
        await send(ws_a, chat_send(b["pin"], "to b", "z1"))
        first = await answer(ws_a)
        assert isinstance(first, frames.Sent), first
        backlog = backlog_of(relay, c)
        await send(ws_a, chat_send(c["pin"], "to c", "z1"))
        again = await answer(ws_a)
        assert isinstance(again, frames.Sent), again
        # The first answer, whose ``to`` is b: c got nothing.
        assert (again.id, again.to) == (first.id, b["pin"])
        assert backlog_of(relay, c) == backlog

    async def test_pipelined_sends_are_stored_in_send_order(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        ws_a, _ = await links(relay, a)
        for n in range(50):
            await send(ws_a, chat_send(b["pin"], f"m{n}", f"c{n}"))
        answers = [await answer(ws_a) for _ in range(50)]
        assert [x.client_id for x in answers] == [f"c{n}" for n in range(50)]
        assert all(isinstance(x, frames.Sent) for x in answers)
        ws_b, _ = await links(relay, b, window=100)
        texts: list[str] = []
        while len(texts) < 50:
            m = await next_msg(ws_b, "chat")
            texts.append(msgspec.json.decode(m.data)["text"])
        assert texts == [f"m{n}" for n in range(50)]

    async def test_bad_sends_are_answered_and_the_link_stays(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        ws_a, _ = await links(relay, a)
        cases = [
            (chat_send(b["pin"], "x" * (32 * 1024 + 1), "big"), "too_large"),
            (chat_send(b["pin"], "", "empty"), "invalid"),
            (chat_send(b["pin"], "bell \x07", "ctl"), "invalid"),
            (chat_send(b["pin"], "next line \x85", "c1"), "invalid"),
            (chat_send("not-a-pin", "hi", "to"), "invalid"),
            (chat_send(b["pin"], "hi", "t" * 65), "invalid"),
            (chat_send(b["pin"], "hi", "ttl", ttl=0), "invalid"),
            (chat_send("GABCDEFGHJKMN", "hi", "grp"), "unknown_group"),
        ]
        for frame, code in cases:
            await send(ws_a, frame)
            got = await answer(ws_a)
            assert isinstance(got, frames.Unsent), (frame["client_id"], got)
            assert (got.client_id, got.code) == (frame["client_id"], code)
        # The largest text, all escapes, fits the frame limit both ways.
        text = '"\\' * (16 * 1024)
        await send(ws_a, chat_send(b["pin"], text, "max"))
        sent = await answer(ws_a)
        assert isinstance(sent, frames.Sent), sent
        ws_b, welcome = await links(relay, b)
        assert welcome.max_frame >= len(json.dumps(chat_send(b["pin"], text, "x" * 64)))
        delivered = await next_msg(ws_b, "chat")
        assert msgspec.json.decode(delivered.data)["text"] == text
        # So does the largest text of 2-byte characters, each escaped as \uXXXX
        # (6 bytes of JSON for 2 of UTF-8: json.dumps's default).
        wide = "é" * (16 * 1024)
        frame = chat_send(b["pin"], wide, "wide")
        assert len(json.dumps(frame)) > 3 * 32 * 1024
        await send(ws_a, frame)
        sent = await answer(ws_a)
        assert isinstance(sent, frames.Sent), sent
        delivered = await next_msg(ws_b, "chat")
        assert msgspec.json.decode(delivered.data)["text"] == wide

    async def test_repeated_keys_in_a_send_fail_the_link(
        self, links: Links, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        ws_a, _ = await links(relay, a)
        frame = '{"type":"send","to":"B","to":"A","text":"hi","client_id":"c"}'
        await next_msg(ws_a, "contact")  # b's acceptance, first
        await ws_a.send(frame.replace("B", b["pin"], 1).replace('"A"', f'"{a["pin"]}"'))
        error, code = await error_then_close(ws_a)
        assert (error.code, code) == ("bad_request", 4400)
        with relay.client() as c:
            assert c.show_device(b["pin"])["backlog"] == 1  # the invitation notice only


@pytest.mark.shared_relay
class TestHttpChat:
    def test_send_and_read_over_http(self, relay: RelayProc, pair: tuple[Dev, Dev]) -> None:
        a, b = pair
        with http(relay) as c:
            body = {"to": b["pin"], "text": "over http", "client_id": "h1"}
            r = c.post(f"/v1/devices/{a['pin']}/chat", json=body, headers=bearer(a))
            assert r.status_code == 201, r.text
            sent = r.json()
            assert sent["to"] == b["pin"]
            again = c.post(f"/v1/devices/{a['pin']}/chat", json=body, headers=bearer(a))
            assert (again.status_code, again.json()["id"]) == (201, sent["id"])
            inbox = c.get(f"/v1/devices/{b['pin']}/inbox", headers=bearer(b)).json()
            chats = [m for m in inbox["messages"] if m["kind"] == "chat"]
            assert [(m["id"], m["from"]) for m in chats] == [(sent["id"], a["pin"])]
            r = c.post(
                f"/v1/devices/{b['pin']}/ack", json={"cursor": inbox["cursor"]}, headers=bearer(b)
            )
            assert r.status_code == 204
            r = c.post(
                f"/v1/devices/{b['pin']}/read", json={"ids": [sent["id"]]}, headers=bearer(b)
            )
            assert (r.status_code, r.json()) == (200, {"receipts": 1})
            got = c.get(f"/v1/devices/{a['pin']}/inbox", headers=bearer(a)).json()
            receipts = [
                json.loads(json.dumps(m["data"])) for m in got["messages"] if m["kind"] == "receipt"
            ]
            assert receipts == [
                {"id": sent["id"], "state": "delivered"},
                {"id": sent["id"], "state": "read"},
            ]

    def test_the_largest_text_fits_however_it_is_escaped(
        self, relay: RelayProc, pair: tuple[Dev, Dev]
    ) -> None:
        a, b = pair
        # 32 KiB of 4-byte characters, each escaped as two \uXXXX (json.dumps's
        # default): 12 bytes of JSON for 4 of UTF-8.
        text = "\U0001f600" * (8 * 1024)
        body = json.dumps({"to": b["pin"], "text": text, "client_id": "emoji"})
        assert len(body) > 3 * 32 * 1024
        headers = {**bearer(a), "Content-Type": "application/json"}
        with http(relay) as c:
            r = c.post(f"/v1/devices/{a['pin']}/chat", content=body, headers=headers)
            assert r.status_code == 201, r.text
            inbox = c.get(f"/v1/devices/{b['pin']}/inbox", headers=bearer(b)).json()
        assert [m["data"]["text"] for m in inbox["messages"] if m["kind"] == "chat"] == [text]

    @pytest.mark.parametrize(
        ("body", "status", "code"),
        [
            # The problem's type ends in the code an ``unsent`` would carry.
            ({"to": "STRANGER", "text": "hi", "client_id": "s"}, 403, "not_contact"),
            ({"to": "PEER", "text": "x" * 40_000, "client_id": "big"}, 413, "too_large"),
            # Past the body's own limit: the answer still names the text's.
            ({"to": "PEER", "text": "x" * 110_000, "client_id": "huge"}, 413, "too_large"),
            ({"to": "PEER", "text": "hi", "client_id": ""}, 422, "invalid"),
            ({"to": "PEER", "text": "a C1 control \x85", "client_id": "c1"}, 422, "invalid"),
            ({"to": "GABCDEFGHJKMN", "text": "hi", "client_id": "g"}, 404, "unknown_group"),
            ({"to": "PEER", "text": "hi"}, 422, "invalid"),
        ],
    )
    def test_refusals_are_problems(
        self, relay: RelayProc, pair: tuple[Dev, Dev], body: dict[str, Any], status: int, code: str
    ) -> None:
        a, b = pair
        stranger = relay.create_device()
        body = {
            k: (b["pin"] if v == "PEER" else stranger["pin"] if v == "STRANGER" else v)
            for k, v in body.items()
        }
        with http(relay) as c:
            r = c.post(f"/v1/devices/{a['pin']}/chat", json=body, headers=bearer(a))
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == f"https://pinrelay.dev/problems/{code}", r.text
        if status == 413:
            detail = r.json()["detail"]  # the text's limit, whatever the body's size
            assert "text" in detail and "32768" in detail, r.text
        with relay.client() as c:
            assert c.show_device(b["pin"])["backlog"] == 1
            assert c.show_device(stranger["pin"])["backlog"] == 0


async def test_a_chat_that_expires_undelivered_fails(
    relay_factory: RelayFactory, links: Links
) -> None:
    relay = relay_factory(extra=["--sweep-interval", "0.2"])
    a, b = relay.create_device(), relay.create_device()
    befriend(relay, a, b)
    ws_a, _ = await links(relay, a)
    await send(ws_a, chat_send(b["pin"], "into the void", "c1", ttl=1))
    sent = await answer(ws_a)
    assert isinstance(sent, frames.Sent)
    receipt = await next_msg(ws_a, "receipt")
    assert receipt.sender == b["pin"]
    assert msgspec.json.decode(receipt.data) == {"id": sent.id, "state": "failed"}
    ws_b, _ = await links(relay, b)
    got = await next_msg(ws_b)
    assert got.kind == "contact"  # never the expired chat
    with relay.client() as c:
        assert c.show_device(b["pin"])["backlog"] == 1  # the invitation notice, not acked
