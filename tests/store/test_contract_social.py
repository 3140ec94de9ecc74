"""The Store contract for contacts and read-receipt bookkeeping (core/social.py).

Runs on every engine (tests/store/conftest.py, ``store``): the transitions are the
pure function's; these tests check that each engine applies them to both entries
of a pair, keeps them across a reopen, and reports what it holds.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from msgspec.structs import replace

from pinrelay.core.chat import contact_data, receipt_data
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import next_message_id
from pinrelay.core.model import Accepted, NewMessage
from pinrelay.core.social import Action, Transition
from pinrelay.store.base import (
    MAX_GROUP,
    RECEIPT_STORED,
    Contact,
    Group,
    Rejected,
    Store,
    Unread,
)

from .conftest import Reopen
from .test_contract import HOUR, NOW, UNKNOWN, A, B, C, add_devices, msg, read_all


async def act(store: Store, actor: str, other: str, action: Action, now_ms: int) -> Transition:
    """An action with its notice; the notice is stored exactly when there is news."""
    notice = msg(other, 0, kind="contact", sender=actor, sent_ms=now_ms)
    step, accepted = await store.contact_action(actor, other, action, now_ms, notice)
    assert (accepted is not None) == (step.notify is not None), (step, accepted)
    if accepted is not None:
        # The cluster's notice of a retry that tells something else has the next id.
        ids = [notice.id]
        for _ in range(3):
            ids.append(next_message_id(ids[-1]))
        assert accepted.pin == other and accepted.id in ids, (accepted, notice.id)
    return step


def delivered_receipt(chat_id: str) -> NewMessage:
    receipt = msg(A, 0, kind="receipt", sender=B)
    return replace(receipt, data=receipt_data(chat_id, "delivered"))


def read_receipt(chat_id: str) -> NewMessage:
    receipt = msg(A, 0, kind="receipt", sender=B)
    return replace(receipt, data=receipt_data(chat_id, "read"))


def by_id(entry: Unread) -> str:
    return entry.id


async def states(store: Store, owner: str) -> dict[str, str]:
    return {c.pin: c.state for c in await store.contacts(owner)}


class TestContacts:
    async def test_invite_then_accept(self, store: Store) -> None:
        await add_devices(store, A, B)
        step = await act(store, A, B, Action.INVITE, NOW)
        assert (step.mine, step.theirs, step.notify) == ("invited", "pending", "invited")
        assert await states(store, A) == {B: "invited"}
        assert await states(store, B) == {A: "pending"}
        assert await store.contact_state(B, A) == "pending"
        step = await act(store, B, A, Action.ACCEPT, NOW + 1)
        assert (step.mine, step.theirs, step.notify) == ("accepted", "accepted", "accepted")
        assert await states(store, A) == {B: "accepted"}
        assert await states(store, B) == {A: "accepted"}

    async def test_notices_are_stored_for_the_other_device(self, store: Store) -> None:
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        await act(store, B, A, Action.ACCEPT, NOW)
        (invited,) = await read_all(store, B)
        (accepted,) = await read_all(store, A)
        assert (invited.kind, invited.sender, invited.data) == (
            "contact",
            A,
            contact_data("invited"),
        )
        assert (accepted.kind, accepted.sender, accepted.data) == (
            "contact",
            B,
            contact_data("accepted"),
        )

    async def test_invite_back_accepts(self, store: Store) -> None:
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        step = await act(store, B, A, Action.INVITE, NOW)
        assert step.mine == "accepted" and step.notify == "accepted"
        assert await store.contact_state(A, B) == "accepted"

    async def test_invite_unknown_pin_keeps_inviters_side_only(self, store: Store) -> None:
        await add_devices(store, A)
        step = await act(store, A, UNKNOWN, Action.INVITE, NOW)
        assert (step.mine, step.theirs, step.notify) == ("invited", None, None)
        assert await states(store, A) == {UNKNOWN: "invited"}
        assert await states(store, UNKNOWN) == {}

    async def test_accept_without_invitation_changes_nothing(self, store: Store) -> None:
        await add_devices(store, A, B)
        with pytest.raises(PinrelayError) as err:
            await act(store, A, B, Action.ACCEPT, NOW)
        assert err.value.code is ErrorCode.NOT_FOUND
        assert await states(store, A) == {} and await states(store, B) == {}

    async def test_decline_tells_nothing_and_keeps_the_inviters_entry(self, store: Store) -> None:
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        step = await act(store, B, A, Action.DECLINE, NOW)
        assert step.notify is None and step.mine is None
        assert await states(store, B) == {}
        assert await states(store, A) == {B: "invited"}

    async def test_block_removes_and_hides(self, store: Store) -> None:
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        await act(store, B, A, Action.ACCEPT, NOW)
        step = await act(store, B, A, Action.BLOCK, NOW)
        assert step.mine == "blocked"
        assert await states(store, B) == {A: "blocked"}
        assert await states(store, A) == {}
        # A's invitation now reaches nothing, and is answered as any other.
        step = await act(store, A, B, Action.INVITE, NOW)
        assert (step.mine, step.notify) == ("invited", None)
        assert await store.contact_state(B, A) == "blocked"
        await act(store, B, A, Action.UNBLOCK, NOW)
        assert await store.contact_state(B, A) is None

    async def test_remove_removes_both_sides(self, store: Store) -> None:
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        await act(store, B, A, Action.ACCEPT, NOW)
        await act(store, A, B, Action.REMOVE, NOW)
        assert await states(store, A) == {} and await states(store, B) == {}
        with pytest.raises(PinrelayError):
            await act(store, A, B, Action.REMOVE, NOW)

    async def test_list_is_sorted_with_since(self, store: Store) -> None:
        await add_devices(store, A, B, C)
        await act(store, A, C, Action.INVITE, NOW)
        await act(store, A, B, Action.INVITE, NOW + 5)
        assert await store.contacts(A) == [
            Contact(B, "invited", NOW + 5),
            Contact(C, "invited", NOW),
        ]

    async def test_concurrent_invites_both_ways_end_accepted_or_crossed(self, store: Store) -> None:
        await add_devices(store, A, B)
        await asyncio.gather(
            act(store, A, B, Action.INVITE, NOW),
            act(store, B, A, Action.INVITE, NOW),
        )
        a, b = await store.contact_state(A, B), await store.contact_state(B, A)
        # Either one saw the other's invitation (both accepted) or they crossed into a
        # consistent invited/pending pair; never half of each.
        assert (a, b) in {
            ("accepted", "accepted"),
            ("invited", "pending"),
            ("pending", "invited"),
        }

    async def test_contacts_survive_reopen(self, store: Store, reopen: Reopen) -> None:
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        await store.close()
        again = await reopen()
        assert await states(again, B) == {A: "pending"}

    async def test_deleted_device_loses_its_contacts(self, store: Store) -> None:
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        assert await store.delete_device(A)
        assert await states(store, A) == {}


class TestUnread:
    async def test_find_then_drop(self, store: Store) -> None:
        await add_devices(store, A, B)
        one = Unread(B, "01ID1", A, NOW + HOUR)
        two = Unread(B, "01ID2", A, NOW + HOUR, group="G1")
        await store.put_unread([one, two])
        found = await store.find_unread(B, ["01ID1", "01ID2", "01NOPE"], NOW)
        assert sorted(found, key=lambda u: u.id) == [one, two]
        # Only the reader's own: another device naming the ids finds nothing.
        assert await store.find_unread(A, ["01ID1"], NOW) == []
        await store.drop_unread(B, ["01ID1"])
        assert await store.find_unread(B, ["01ID1", "01ID2"], NOW) == [two]

    async def test_a_receipt_is_stored_once_per_entry(self, store: Store, reopen: Reopen) -> None:
        """Chat.delivered's and Chat.read's writes, repeated as after a crash: where
        receipts are atomic, the entry says the receipt is stored; elsewhere it
        is stored again (and clients drop the repeat)."""
        await add_devices(store, A, B)
        entries = [Unread(B, f"01ID{n}", A, NOW + HOUR) for n in (1, 2)]
        told = [delivered_receipt(e.id) for e in entries]
        results, _ = await store.append(told, unread=entries)
        assert all(isinstance(r, Accepted) for r in results), results
        assert sorted(await store.find_unread(B, ["01ID1", "01ID2"], NOW), key=by_id) == entries
        read = [read_receipt(entries[0].id)]
        results, _ = await store.append(read, read=entries[:1])
        assert all(isinstance(r, Accepted) for r in results), results
        assert await store.find_unread(B, ["01ID1", "01ID2"], NOW) == entries[1:]
        # A read entry is still known (Chat.delivered asks, on the cluster).
        both = await store.find_unread(B, ["01ID1", "01ID2"], NOW, with_read=True)
        assert sorted(both, key=by_id) == entries
        await store.close()
        store = await reopen()
        # The ack and the read again: an ack lost in a crash, a read resent, or two
        # reads at once that both found the entry.
        again = [delivered_receipt(e.id) for e in entries] + [read_receipt(entries[0].id)]
        results, _ = await store.append(again[:2], unread=entries)
        results += (await store.append(again[2:], read=entries[:1]))[0]
        stored = [m.id for m in await read_all(store, A)]
        assert await store.find_unread(B, ["01ID1", "01ID2"], NOW) == entries[1:]
        if store.atomic_receipts:
            assert results == [Rejected(A, RECEIPT_STORED, m.id) for m in again]
            assert stored == [m.id for m in told + read]
            # A read entry is remembered until the expiry the read gave it, if sooner.
            shorter = replace(entries[1], expires_ms=NOW + 10)
            results, _ = await store.append([read_receipt(shorter.id)], read=[shorter])
            assert isinstance(results[0], Accepted), results
            await store.sweep(NOW + 11)
            later = [delivered_receipt(e.id) for e in entries]
            results, _ = await store.append(later, unread=entries)
            assert results[0] == Rejected(A, RECEIPT_STORED, later[0].id)
            assert isinstance(results[1], Accepted), results
        else:
            assert all(isinstance(r, Accepted) for r in results), results
            assert len(stored) == 6

    async def test_expired_are_not_found(self, store: Store) -> None:
        await add_devices(store, B)
        await store.put_unread([Unread(B, "01OLD", A, NOW + 10)])
        assert await store.find_unread(B, ["01OLD"], NOW + 10) == []

    async def test_put_twice_keeps_one(self, store: Store, reopen: Reopen) -> None:
        await add_devices(store, B)
        entry = Unread(B, "01ID1", A, NOW + HOUR)
        await store.put_unread([entry])
        await store.put_unread([entry])
        await store.close()
        again = await reopen()
        assert await again.find_unread(B, ["01ID1"], NOW) == [entry]


class TestExpiredChats:
    async def test_sweep_leaves_expired_chats_until_forgotten(
        self, store: Store, request: pytest.FixtureRequest
    ) -> None:
        await add_devices(store, A, B)
        chat = msg(B, 1, kind="chat", sender=A, ttl_ms=10)
        push = msg(B, 2, ttl_ms=10)
        await store.append([chat, push])
        later = NOW + 1000
        await store.sweep(later)
        # The cluster is told by a schedule that fired at once (its time has passed).
        expired = await store.expired_chats(later, 100)
        assert [(m.id, m.sender, m.pin) for m in expired] == [(chat.id, A, B)]
        assert await store.expired_chats(NOW, 100) == []  # not expired then
        await store.forget([(m.pin, m.cursor) for m in expired])
        assert await store.expired_chats(later, 100) == []
        # SQLite deleted it; the cluster's goes by its TTL, unread meanwhile.
        now = NOW if "sqlite" in request.node.name else later
        assert await store.read(B, 0, 10, now) == []

    async def test_a_delivered_chat_does_not_expire(self, store: Store) -> None:
        """On the wall clock: the cluster's schedules fire by it."""
        await add_devices(store, A, B)
        sent = int(time.time() * 1000)
        delivered, lost = (
            msg(B, n, kind="chat", sender=A, ttl_ms=1500, sent_ms=sent) for n in (1, 2)
        )
        await store.append([delivered])
        await store.append([lost])
        first, _ = await store.read(B, 0, 10, sent)
        assert first.id == delivered.id
        # Chat.delivered's receipt, then the ack (chat.py).
        receipt = msg(A, 3, kind="receipt", sender=B, sent_ms=sent)
        await store.append([replace(receipt, data=receipt_data(delivered.id, "delivered"))])
        await store.ack(B, first.cursor)
        found: list[str] = []
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            expired = await store.expired_chats(int(time.time() * 1000), 100)
            found += [m.id for m in expired]
            await store.forget([(m.pin, m.cursor) for m in expired])
            await asyncio.sleep(0.05)
        assert found == [lost.id]
        # Past the schedule's grace (expiry.FIRE_GRACE_MS): still nothing for the other.
        await asyncio.sleep(max(0.0, (sent + 3000) / 1000 - time.time()))
        assert await store.expired_chats(int(time.time() * 1000), 100) == []


class TestGroups:
    async def test_create_get_change_list(self, store: Store) -> None:
        await add_devices(store, A, B, C)
        group = Group("G0000000000AB", "team", A, [A, B], NOW)
        await store.create_group(group)
        assert await store.get_group("G0000000000AB") == group
        assert await store.get_group("G0000000000ZZ") is None
        changed = await store.change_members("G0000000000AB", [C], [B])
        assert changed is not None and changed.members == [A, C]
        assert [g.id for g in await store.groups_of(C)] == ["G0000000000AB"]
        assert await store.groups_of(B) == []
        assert await store.change_members("G0000000000ZZ", [B], []) is None

    async def test_last_member_leaving_deletes_the_group(self, store: Store) -> None:
        await add_devices(store, A)
        await store.create_group(Group("G0000000000AC", "solo", A, [A], NOW))
        await store.change_members("G0000000000AC", [], [A])
        assert await store.get_group("G0000000000AC") is None

    async def test_more_than_max_members_is_refused(self, store: Store) -> None:
        await add_devices(store, A)
        members = [f"{n:08X}" for n in range(1, MAX_GROUP + 1)]
        await store.create_group(Group("G0000000000AD", "big", A, members, NOW))
        with pytest.raises(PinrelayError) as err:
            await store.change_members("G0000000000AD", ["FFFFFFFF"], [])
        assert err.value.code is ErrorCode.CONFLICT
        group = await store.get_group("G0000000000AD")
        assert group is not None and len(group.members) == MAX_GROUP

    async def test_deleted_device_leaves_its_groups(self, store: Store) -> None:
        await add_devices(store, A, B)
        await store.create_group(Group("G0000000000AE", "pair", A, [A, B], NOW))
        assert await store.delete_device(B)
        group = await store.get_group("G0000000000AE")
        assert group is not None and group.members == [A]
