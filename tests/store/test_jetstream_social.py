"""Contacts and unread entries on the cluster engine (store/jetstream/contacts.py and
unread.py): what the contract suite cannot see (several relays, lost
acknowledgements, limits, TTLs, NATS requests per call), on real nats-server
processes (see conftest.nats_cluster)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.social import Action
from pinrelay.store.base import Contact, Unread
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.jetstream import contacts as contacts_module
from pinrelay.store.jetstream.unread import MAX_TTL_S, STALE_TTL_S, unread_ttl_s
from pinrelay.testing.wait import wait_until_async

from .test_contract import HOUR, NOW, UNKNOWN, A, B, C, add_devices, read_all
from .test_contract_social import act
from .test_jetstream import OpenStore, drop_answer, open_store, subject_counts

__all__ = ["OpenStore", "open_store"]  # test_jetstream's fixture, shared on

D = "0D0D0D0D"
ATOMIC = pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "one-by-one"])


class Requests:
    """Counts what a store's NATS connection sends: requests (a round trip each) and
    messages (requests included, and an atomic batch's messages before its commit)."""

    def __init__(self, store: JetStreamStore, monkeypatch: pytest.MonkeyPatch) -> None:
        nc, _ = store.connection
        self.counts: Counter[str] = Counter()
        request, publish = nc.request, nc.publish

        async def counted_request(*args: Any, **kwargs: Any) -> Any:
            self.counts["requests"] += 1
            return await request(*args, **kwargs)

        async def counted_publish(*args: Any, **kwargs: Any) -> Any:
            self.counts["messages"] += 1  # nats-py's request publishes too
            return await publish(*args, **kwargs)

        monkeypatch.setattr(nc, "request", counted_request)
        monkeypatch.setattr(nc, "publish", counted_publish)

    @property
    def taken(self) -> dict[str, int]:
        """What was counted since the last call, then start again."""
        out = {"requests": self.counts["requests"], "messages": self.counts["messages"]}
        self.counts.clear()
        return out


async def unread_keys(store: JetStreamStore) -> dict[str, int]:
    bucket = store.layout.buckets.unread
    return await subject_counts(store.servers, bucket.stream, f"{bucket.prefix}>")


class TestAcrossRelays:
    async def test_a_change_through_one_relay_reaches_anothers_cache(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A, B)
        assert await other.contact_state(B, A) is None  # cached there, as empty
        await act(one, A, B, Action.INVITE, NOW)

        async def state_there(want: str) -> bool:
            return await other.contact_state(B, A) == want

        await wait_until_async(
            lambda: state_there("pending"), 10, message="the invitation to reach the other"
        )
        await act(one, B, A, Action.ACCEPT, NOW + 1)
        await wait_until_async(
            lambda: state_there("accepted"), 10, message="the accept to reach the other"
        )
        assert await other.contacts(A) == [Contact(B, "accepted", NOW + 1)]

    async def test_a_device_deleted_through_one_relay_has_no_contacts_on_another(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A, B)
        await act(one, A, B, Action.INVITE, NOW)
        assert await other.contacts(B) == [Contact(A, "pending", NOW)]
        assert await one.delete_device(B)

        async def gone() -> bool:
            return await other.contacts(B) == []

        await wait_until_async(gone, 10, message="the deletion to reach the other relay")

    @ATOMIC
    async def test_concurrent_actions_through_two_relays_never_end_half_applied(
        self, open_store: OpenStore, atomic: bool
    ) -> None:
        one, other = await open_store(atomic=atomic), await open_store(atomic=atomic)
        assert one.contact_lists.atomic is atomic
        pairs = [(f"A{n:07X}", f"B{n:07X}") for n in range(12)]
        await add_devices(one, *(pin for pair in pairs for pin in pair))
        await asyncio.gather(
            *(act(one, a, b, Action.INVITE, NOW) for a, b in pairs),
            *(act(other, b, a, Action.INVITE, NOW) for a, b in pairs),
        )
        fresh = await open_store(atomic=atomic)  # empty caches: the leader's records
        ends = [
            (await fresh.contact_state(a, b), await fresh.contact_state(b, a)) for a, b in pairs
        ]
        allowed = {("accepted", "accepted"), ("invited", "pending"), ("pending", "invited")}
        assert set(ends) <= allowed, ends
        # Then a block and a remove on each pair, through both relays at once.
        results = await asyncio.gather(
            *(act(one, a, b, Action.BLOCK, NOW) for a, b in pairs[:6]),
            *(act(other, b, a, Action.REMOVE, NOW) for a, b in pairs[:6]),
            return_exceptions=True,
        )
        for r in results:  # a remove after the block finds no contact
            assert not isinstance(r, BaseException) or (
                isinstance(r, PinrelayError) and r.code is ErrorCode.NOT_FOUND
            ), r
        fresh = await open_store(atomic=atomic)
        for a, b in pairs[:6]:
            assert await fresh.contacts(a) == [Contact(b, "blocked", NOW)]
            assert await fresh.contact_state(b, a) is None


class TestLostAcknowledgement:
    @ATOMIC
    async def test_a_write_retried_after_a_lost_answer_counts_as_done(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, atomic: bool
    ) -> None:
        store = await open_store(atomic=atomic)
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        await act(store, B, A, Action.ACCEPT, NOW)
        last_write = store.layout.buckets.contacts.subject(A)  # A's record: written last
        lost = drop_answer(store, monkeypatch, last_write)
        # The watch lags (as under load): what the cache holds after the action is
        # what the action put there.
        monkeypatch.setattr(store.contact_lists.cache, "changed", lambda *_: None)
        # The retry's compare-and-set fails against the write itself: without
        # recognising it, the remove would answer "no such contact".
        step = await act(store, A, B, Action.REMOVE, NOW)
        assert lost and (step.mine, step.theirs) == (None, None)
        assert await store.contacts(A) == [] and await store.contacts(B) == []


class TestLimits:
    async def test_a_full_list_refuses_a_new_entry_and_takes_no_invitation(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(contacts_module, "MAX_CONTACTS", 2)
        store = await open_store()
        await add_devices(store, A, B, C, D)
        await act(store, A, B, Action.INVITE, NOW)
        await act(store, A, C, Action.INVITE, NOW)
        with pytest.raises(PinrelayError) as err:
            await act(store, A, D, Action.INVITE, NOW)
        assert err.value.code is ErrorCode.CONFLICT
        # A's list is full: D's invitation is kept on D's side alone, A is not told.
        step = await act(store, D, A, Action.INVITE, NOW)
        assert (step.mine, step.theirs, step.notify) == ("invited", None, None)
        assert [c.pin for c in await store.contacts(A)] == [B, C]
        # An entry already there still changes.
        step = await act(store, B, A, Action.ACCEPT, NOW)
        assert step.notify == "accepted"

    async def test_a_device_is_not_its_own_contact(self, open_store: OpenStore) -> None:
        store = await open_store()
        await add_devices(store, A)
        with pytest.raises(PinrelayError) as err:
            await act(store, A, A, Action.INVITE, NOW)
        assert err.value.code is ErrorCode.INVALID

    async def test_an_actor_without_a_device_changes_nothing(self, open_store: OpenStore) -> None:
        store = await open_store()
        await add_devices(store, A)
        with pytest.raises(PinrelayError) as err:
            await act(store, UNKNOWN, A, Action.INVITE, NOW)
        assert err.value.code is ErrorCode.NOT_FOUND
        assert await store.contacts(A) == []


class TestGenerations:
    async def test_a_record_left_by_an_earlier_device_counts_as_empty(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        await add_devices(store, A, B)
        await act(store, A, B, Action.INVITE, NOW)
        # As if delete_device stopped after the device record (a crash).
        assert await store.devices.remove(B)
        await add_devices(store, B)
        assert await store.contacts(B) == []
        step = await act(store, A, B, Action.INVITE, NOW + 1)
        assert step.notify == "invited"
        assert await store.contacts(B) == [Contact(A, "pending", NOW + 1)]
        # And only the new invitation's notice: the first one was the earlier device's.
        (notice,) = await read_all(store, B)
        assert (notice.kind, notice.sender) == ("contact", A)


class TestUnread:
    async def test_ids_unfit_for_a_key_are_refused_or_never_looked_up(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        await store.put_unread([Unread(B, "01ID1", A, NOW + HOUR)])
        assert await store.find_unread(B, ["*", ">", "01ID1.x", f"{B}.>"], NOW) == []
        with pytest.raises(PinrelayError) as err:
            await store.put_unread([Unread(B, "01.*", A, NOW + HOUR)])
        assert err.value.code is ErrorCode.INVALID

    async def test_entries_go_by_their_ttl_and_drops_leave_nothing(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store(ttl_grace_s=0)
        now_ms = int(time.time() * 1000)
        soon, later = Unread(B, "01SOON", A, now_ms + 500), Unread(B, "01LATER", A, now_ms + HOUR)
        dropped = Unread(B, "01DROP", A, now_ms + HOUR)
        await store.put_unread([soon, later, dropped])
        await store.drop_unread(B, [dropped.id])
        assert await store.find_unread(B, [soon.id, later.id, dropped.id], now_ms) == [soon, later]

        async def only_later_left() -> bool:
            return list(await unread_keys(store)) == [
                store.layout.buckets.unread.subject(f"{B}.01LATER")
            ]

        # soon: a TTL of 1 s; the drop's marker: 1 s.
        await wait_until_async(
            only_later_left, 10, message="the expired entry and the marker to go"
        )

    async def test_concurrent_puts_share_atomic_batches(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A group's members each ack on their own: 50 puts of one entry at once cost
        a batch or two, not 50 requests, and every entry is there."""
        store = await open_store()
        entries = [Unread(f"{n:08X}", f"01ID{n:03d}", A, NOW + HOUR) for n in range(0xC0, 0xF2)]
        requests = Requests(store, monkeypatch)
        await asyncio.gather(*(store.put_unread([e]) for e in entries))
        assert requests.taken["requests"] <= 2
        assert store.unread.shared is not None and store.unread.shared.grouped >= 49
        found = await asyncio.gather(*(store.find_unread(e.reader, [e.id], NOW) for e in entries))
        assert found == [[e] for e in entries]

    async def test_delete_device_removes_its_entries_only(self, open_store: OpenStore) -> None:
        store = await open_store()
        await add_devices(store, A, B)
        await store.put_unread(
            [Unread(B, "01ID1", A, NOW + HOUR), Unread(A, "01ID2", B, NOW + HOUR)]
        )
        assert await store.delete_device(B)
        assert await store.find_unread(B, ["01ID1"], NOW) == []
        assert len(await store.find_unread(A, ["01ID2"], NOW)) == 1

    def test_ttl_is_the_time_left_in_whole_seconds_plus_grace(self) -> None:
        assert unread_ttl_s(10_001, 0, 2) == 13
        assert unread_ttl_s(10_000, 0, 2) == 12
        assert unread_ttl_s(5, 10, 2) == STALE_TTL_S  # past by our clock: kept a day
        assert unread_ttl_s(10**15, 0, 2) == MAX_TTL_S


class TestRequests:
    """NATS requests per call: a chat send checks consent per message, a delivered
    chat batch puts its entries once (printed with ``pytest -s``)."""

    async def test_request_costs(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = await open_store()
        await add_devices(store, A, B)
        count = Requests(store, monkeypatch)
        costs: dict[str, dict[str, int]] = {}
        await act(store, A, B, Action.INVITE, NOW)
        costs["contact_action"] = count.taken
        await store.contact_state(B, A)
        costs["contact_state (first)"] = count.taken
        for _ in range(100):
            await store.contact_state(B, A)
            await store.contact_state(A, B)
        costs["contact_state x200 (cached)"] = count.taken
        await store.contacts(A)
        costs["contacts (cached)"] = count.taken
        ids = [f"01ID{n:04d}" for n in range(50)]
        await store.put_unread([Unread(B, i, A, NOW + HOUR) for i in ids])
        costs["put_unread x50"] = count.taken
        await store.find_unread(B, ids[:5], NOW)
        costs["find_unread 5 ids"] = count.taken
        await store.drop_unread(B, ids[:5])
        costs["drop_unread 5 ids"] = count.taken
        for what, taken in costs.items():
            print(f"{what}: {taken}")
        assert costs["contact_state x200 (cached)"] == {"requests": 0, "messages": 0}
        assert costs["contacts (cached)"] == {"requests": 0, "messages": 0}
        assert costs["put_unread x50"] == {"requests": 1, "messages": 50}  # one round trip
        assert costs["drop_unread 5 ids"] == {"requests": 1, "messages": 5}
        assert costs["find_unread 5 ids"]["requests"] == 5
        # Three leader reads (both contacts records, the other's device record), one
        # atomic batch of two records, the notice's publish (test_jetstream_invite_cost).
        assert costs["contact_action"] == {"requests": 5, "messages": 6}
