"""Groups on the cluster engine (store/jetstream/groups.py): what the contract suite
cannot see (several relays, the index, lost acknowledgements, atomic batches off,
NATS requests per call), on real nats-server processes (see conftest.nats_cluster)."""

from __future__ import annotations

import asyncio

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import MAX_GROUP, Group
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.jetstream.groups import index_key
from pinrelay.testing.wait import wait_until_async

from .test_contract import NOW, A, B, C, add_devices
from .test_jetstream import drop_answer
from .test_jetstream_social import ATOMIC, OpenStore, Requests, open_store

__all__ = ["open_store"]  # the fixture, shared with the contacts tests
G1, G2 = "G00000000000A", "G00000000000B"


async def members_there(store: JetStreamStore, group_id: str) -> list[str] | None:
    got = await store.get_group(group_id)
    return None if got is None else got.members


class TestAcrossRelays:
    async def test_a_group_made_through_one_relay_is_seen_and_followed_by_another(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A, B, C)
        assert await other.get_group(G1) is None  # cached there, as absent
        group = Group(G1, "team", A, [A, B], NOW)
        await one.create_group(group)

        async def seen(want: list[str] | None) -> bool:
            return await members_there(other, G1) == want

        await wait_until_async(lambda: seen([A, B]), 10, message="the group to reach the other")
        assert await other.get_group(G1) == group
        assert [g.id for g in await other.groups_of(B)] == [G1]
        await one.change_members(G1, [C], [B])
        await wait_until_async(lambda: seen([A, C]), 10, message="the change to reach the other")
        assert await other.groups_of(B) == []
        assert [g.id for g in await other.groups_of(C)] == [G1]
        # And back: a change through the other relay, the last member leaving.
        await other.change_members(G1, [], [A, C])
        assert await other.get_group(G1) is None

        async def gone() -> bool:
            return await one.get_group(G1) is None

        await wait_until_async(gone, 10, message="the deletion to reach the first relay")
        assert await one.groups_of(A) == []

    @ATOMIC
    async def test_concurrent_changes_through_two_relays_all_land(
        self, open_store: OpenStore, atomic: bool
    ) -> None:
        one, other = await open_store(atomic=atomic), await open_store(atomic=atomic)
        assert one.groups.atomic is atomic
        await one.create_group(Group(G1, "busy", A, [A], NOW))
        assert await other.get_group(G1) is not None  # both relays cache it
        pins = [f"{n:08X}" for n in range(1, 25)]
        await asyncio.gather(
            *(one.change_members(G1, [p], []) for p in pins[::2]),
            *(other.change_members(G1, [p], []) for p in pins[1::2]),
        )
        fresh = await open_store(atomic=atomic)  # empty caches: the leader's record
        assert await members_there(fresh, G1) == sorted([A, *pins])
        for p in pins:
            assert [g.id for g in await fresh.groups_of(p)] == [G1]

    async def test_a_device_deleted_through_one_relay_leaves_its_groups_on_another(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A, B)
        await one.create_group(Group(G1, "pair", A, [A, B], NOW))
        await one.create_group(Group(G2, "alone", B, [B], NOW))
        assert await members_there(other, G1) == [A, B]
        assert await other.delete_device(B)
        assert await members_there(other, G1) == [A]
        assert await other.get_group(G2) is None  # its last member: deleted
        fresh = await open_store()
        assert await fresh.groups_of(B) == []
        assert await members_there(fresh, G1) == [A]


class TestIndex:
    async def test_a_stale_index_entry_never_puts_a_pin_in_a_group(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        await store.create_group(Group(G1, "team", A, [A, B], NOW))
        # As a crash between an entry and its record, or an older server's race, leaves.
        bucket = store.layout.buckets.groups
        assert await store.groups.kv.put(bucket, index_key(C, G1), b"", 0) is not None
        assert await store.groups.kv.put(bucket, index_key(C, G2), b"", 0) is not None
        assert await store.groups_of(C) == []
        assert [g.id for g in await store.groups_of(A)] == [G1]

    @ATOMIC
    async def test_a_full_group_is_made_and_refuses_one_more(
        self, open_store: OpenStore, atomic: bool
    ) -> None:
        store = await open_store(atomic=atomic)
        members = [f"{n:08X}" for n in range(1, MAX_GROUP + 1)]
        await store.create_group(Group(G1, "big", A, members, NOW))  # 1,001 messages
        with pytest.raises(PinrelayError) as err:
            await store.change_members(G1, ["FFFFFFFF"], [])
        assert err.value.code is ErrorCode.CONFLICT
        assert await store.groups_of("FFFFFFFF") == []
        assert [g.id for g in await store.groups_of(members[-1])] == [G1]
        # Everyone leaving at once: 1,000 index markers after the record's.
        assert await store.change_members(G1, [], members) is None
        assert await store.get_group(G1) is None
        assert await store.groups_of(members[0]) == []

    async def test_an_existing_id_is_a_conflict(self, open_store: OpenStore) -> None:
        store = await open_store()
        await store.create_group(Group(G1, "first", A, [A], NOW))
        with pytest.raises(PinrelayError) as err:
            await store.create_group(Group(G1, "second", B, [B], NOW))
        assert err.value.code is ErrorCode.CONFLICT
        assert await members_there(store, G1) == [A]


class TestLostAcknowledgement:
    @ATOMIC
    async def test_a_write_retried_after_a_lost_answer_counts_as_done(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, atomic: bool
    ) -> None:
        store = await open_store(atomic=atomic)
        lost = drop_answer(store, monkeypatch, store.layout.buckets.groups.subject(G1))
        await store.create_group(Group(G1, "team", A, [A, B], NOW))
        assert lost
        lost.clear()
        changed = await store.change_members(G1, [C], [])
        assert lost and changed is not None and changed.members == [A, B, C]
        assert [g.id for g in await store.groups_of(C)] == [G1]


class TestRequests:
    """NATS requests per call: a group send's membership check is a cached read
    (printed with ``pytest -s``)."""

    async def test_request_costs(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = await open_store()
        await add_devices(store, A, B, C)
        count = Requests(store, monkeypatch)
        costs: dict[str, dict[str, int]] = {}
        await store.create_group(Group(G1, "team", A, [A, B], NOW))
        costs["create_group (2 members)"] = count.taken
        for _ in range(100):
            await store.get_group(G1)
        costs["get_group x100 (cached)"] = count.taken
        await store.change_members(G1, [C], [B])
        costs["change_members +1 -1"] = count.taken
        await store.groups_of(C)
        costs["groups_of (records cached)"] = count.taken
        await store.get_group(G2)
        costs["get_group (absent, first)"] = count.taken
        await store.get_group(G2)
        costs["get_group (absent, again)"] = count.taken
        members = [f"{n:08X}" for n in range(1, MAX_GROUP + 1)]
        await store.create_group(Group(G2, "big", A, members, NOW))
        costs["create_group (1,000 members)"] = count.taken
        assert await store.delete_device(C)
        costs["delete_device (1 group)"] = count.taken
        for what, taken in costs.items():
            print(f"{what}: {taken}")
        assert costs["create_group (2 members)"] == {"requests": 1, "messages": 3}
        assert costs["get_group x100 (cached)"] == {"requests": 0, "messages": 0}
        # Three messages, one atomic batch: C's entry, the record, B's entry's marker.
        assert costs["change_members +1 -1"] == {"requests": 1, "messages": 3}
        assert costs["groups_of (records cached)"] == {"requests": 1, "messages": 1}
        assert costs["get_group (absent, again)"] == {"requests": 0, "messages": 0}
        # One batch of the 1,000 entries, then the record.
        assert costs["create_group (1,000 members)"] == {"requests": 2, "messages": 1001}
