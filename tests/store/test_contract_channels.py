"""The Store contract for channels, consent and broadcasts (core/channels.py, issue 15).

Runs on every engine (tests/store/conftest.py, ``store``): channels are kept per
tenant with tombstones; a device's memberships and refusals are its own and go
with it; members page in PIN order; admission honours refusals and the daily
marketing cap, once per broadcast however often asked; a broadcast's record only
moves forward; relays' counts add up; the audit log pages newest first.
"""

from __future__ import annotations

import pytest

from pinrelay.core.channels import (
    MAX_MEMBERSHIPS,
    AuditEntry,
    Broadcast,
    BroadcastCounts,
    Channel,
)
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.makegood import MAKEGOOD_CHANNEL
from pinrelay.store.base import Store

from .conftest import Reopen
from .test_contract import NOW, A, B, C, add_devices
from .test_contract_tenants import T1, T2, elsewhere, tenant

CH1, CH2, CH3 = "C000000000001", "C000000000002", "C000000000003"


def channel(cid: str, owner: str = T1, klass: str = "service", **extra: object) -> Channel:
    fields: dict[str, object] = {"created_ms": NOW, **extra}
    return Channel(id=cid, tenant=owner, name=f"name-{cid}", klass=klass, **fields)  # type: ignore[arg-type]


def broadcast(bid: str = "B1", cid: str = CH1, **extra: object) -> Broadcast:
    fields: dict[str, object] = {
        "channel": cid,
        "tenant": T1,
        "key_id": "k1",
        "created_ms": NOW,
        "expires_ms": NOW + 3_600_000,
        "data": b'{"x":1}',
        **extra,
    }
    return Broadcast(id=bid, **fields)  # type: ignore[arg-type]


async def tenants(store: Store) -> None:
    await store.create_tenant(tenant(T1))
    await store.create_tenant(tenant(T2))


async def test_channels_are_kept_listed_and_deleted(store: Store, reopen: Reopen) -> None:
    await tenants(store)
    await store.create_channel(channel(CH1), 10)
    await store.create_channel(channel(CH2, klass="marketing"), 10)
    await store.create_channel(channel(CH3, owner=T2), 10)
    with pytest.raises(PinrelayError) as taken:
        await store.create_channel(channel(CH1), 10)
    assert taken.value.code is ErrorCode.CONFLICT
    assert await store.get_channel(CH2) == channel(CH2, klass="marketing")
    assert await store.get_channel("C0000000000ZZ") is None
    assert [c.id for c in await store.list_channels(T1)] == [CH1, CH2]
    assert [c.id for c in await store.list_channels(None)] == [CH1, CH2, CH3]

    assert await store.delete_channel(CH2, NOW + 5)
    assert not await store.delete_channel(CH2, NOW + 6)
    assert not await store.delete_channel("C0000000000ZZ", NOW)
    other = await elsewhere(store, reopen)
    assert await other.get_channel(CH2) == channel(CH2, klass="marketing", deleted_ms=NOW + 5)
    assert [c.id for c in await other.list_channels(T1)] == [CH1]


async def test_a_tenant_holds_at_most_its_channels(store: Store) -> None:
    await tenants(store)
    await store.create_channel(channel(CH1), 2)
    await store.create_channel(channel(CH2), 2)
    with pytest.raises(PinrelayError) as full:
        await store.create_channel(channel(CH3), 2)
    assert full.value.code is ErrorCode.CONFLICT
    assert await store.get_channel(CH3) is None
    # Another tenant's count is its own; a tombstone frees its place.
    await store.create_channel(channel("C000000000004", owner=T2), 1)
    assert await store.delete_channel(CH1, NOW)
    await store.create_channel(channel(CH3), 2)


async def test_members_join_and_leave_and_page_in_pin_order(store: Store, reopen: Reopen) -> None:
    await tenants(store)
    await store.create_channel(channel(CH1), 10)
    await store.create_channel(channel(CH2), 10)
    await add_devices(store, C, A, B)
    for pin in (C, A, B):
        assert await store.join_channel(pin, CH1, True)
    assert await store.join_channel(A, CH1, True)  # again: nothing changes
    assert await store.join_channel(A, CH2, True)
    assert not await store.join_channel("DEADBEEF", CH1, True)
    assert await store.channel_members(CH1, "", 10) == [A, B, C]
    assert await store.channel_members(CH1, "", 2) == [A, B]
    assert await store.channel_members(CH1, B, 2) == [C]
    assert await store.channel_members(CH1, C, 2) == []
    assert await store.channels_of(A) == [CH1, CH2]

    assert await store.join_channel(B, CH1, False)
    assert await store.join_channel(B, CH1, False)
    other = await elsewhere(store, reopen)
    assert await other.channel_members(CH1, "", 10) == [A, C]
    assert await other.channels_of(B) == []
    # Deleting the channel forgets its members; deleting a device, its memberships.
    assert await other.delete_channel(CH2, NOW)
    assert await other.channels_of(A) == [CH1]
    assert await other.delete_device(A)
    assert await other.channel_members(CH1, "", 10) == [C]
    assert await other.channels_of(A) == []


async def test_a_device_moved_to_another_tenant_leaves_its_channels(store: Store) -> None:
    await tenants(store)
    await store.create_channel(channel(CH1), 10)
    await add_devices(store, A)
    assert await store.join_channel(A, CH1, True)
    assert await store.set_refusal(A, "marketing", True)
    assert await store.set_device_tenant(A, T2)
    assert await store.channels_of(A) == []
    assert await store.channel_members(CH1, "", 10) == []
    assert await store.refusals_of(A) == ["marketing"]  # the owner's wish, kept


async def test_a_device_is_a_member_of_at_most_max_memberships(store: Store) -> None:
    await tenants(store)
    await add_devices(store, A)
    ids = [f"C{n:012d}" for n in range(MAX_MEMBERSHIPS + 1)]
    for cid in ids[:-1]:
        await store.create_channel(channel(cid), MAX_MEMBERSHIPS + 1)
        assert await store.join_channel(A, cid, True)
    await store.create_channel(channel(ids[-1]), MAX_MEMBERSHIPS + 1)
    with pytest.raises(PinrelayError) as full:
        await store.join_channel(A, ids[-1], True)
    assert full.value.code is ErrorCode.CONFLICT
    assert len(await store.channels_of(A)) == MAX_MEMBERSHIPS
    assert await store.channel_members(ids[-1], "", 10) == []


async def test_refusals_and_the_daily_marketing_cap(store: Store, reopen: Reopen) -> None:
    await tenants(store)
    await add_devices(store, A, B, C)
    assert await store.set_refusal(B, "marketing", True)
    assert await store.set_refusal(C, "service", True)
    assert not await store.set_refusal("DEADBEEF", "marketing", True)
    assert await store.refusals_of(B) == ["marketing"]
    assert await store.refusals_of("DEADBEEF") == []
    day = 20_000
    assert await store.admit([A, B, C], "service", "S1", day, None) == [A, B]
    assert await store.admit([A, B, C], "marketing", "M1", day, 2) == [A, C]
    # The same broadcast again (a resumed fan-out): the same devices, counted once.
    assert await store.admit([A, B, C], "marketing", "M1", day, 2) == [A, C]
    assert await store.admit([A, C], "marketing", "M2", day, 2) == [A, C]
    other = await elsewhere(store, reopen)
    assert await other.admit([A, C], "marketing", "M3", day, 2) == []
    assert await other.admit([A, C], "marketing", "M3", day + 1, 2) == [A, C]
    # A refusal taken back; deleting the device forgets it.
    assert await other.set_refusal(C, "service", False)
    assert await other.refusals_of(C) == []
    assert await other.admit([C], "service", "S2", day, None) == [C]
    assert await other.delete_device(B)
    assert await other.refusals_of(B) == []


async def test_a_broadcast_record_only_moves_forward(store: Store, reopen: Reopen) -> None:
    await tenants(store)
    first = broadcast()
    assert await store.put_broadcast(first)
    assert await store.put_broadcast(broadcast("B2", created_ms=NOW + 1))
    page1 = broadcast(after=B, members=2, stored=1, skipped=1, updated_ms=NOW + 10, pending=(C,))
    assert await store.put_broadcast(page1)
    assert await store.get_broadcast("B1") == page1
    # A second relay resuming from an older point changes nothing.
    assert not await store.put_broadcast(broadcast(after=A, members=1, stored=1))
    done = broadcast(after=C, members=3, stored=2, skipped=1, done_ms=NOW + 20)
    assert await store.put_broadcast(done)
    assert not await store.put_broadcast(broadcast(after=C, members=3, stored=2, skipped=1))
    other = await elsewhere(store, reopen)
    assert await other.get_broadcast("B1") == done
    assert await other.get_broadcast("B9") is None
    assert [b.id for b in await other.unfinished_broadcasts()] == ["B2"]


async def test_counts_of_every_relay_add_up(store: Store, reopen: Reopen) -> None:
    assert await store.broadcast_counts("B1") == BroadcastCounts()
    await store.count_broadcasts("n1", {"B1": BroadcastCounts(3, 1), "B2": BroadcastCounts(1, 0)})
    await store.count_broadcasts("n2", {"B1": BroadcastCounts(2, 2)})
    await store.count_broadcasts("n1", {"B1": BroadcastCounts(0, 2)})
    other = await elsewhere(store, reopen)
    assert await other.broadcast_counts("B1") == BroadcastCounts(5, 5)
    assert await other.broadcast_counts("B2") == BroadcastCounts(1, 0)


async def test_a_batch_of_counts_sent_again_adds_nothing(store: Store, reopen: Reopen) -> None:
    """A relay whose count write failed (its answer lost: it may be stored) sends the
    same batch again before any other; where it landed, it adds nothing."""
    first = {"B1": BroadcastCounts(3, 1), "B2": BroadcastCounts(1, 0)}
    await store.count_broadcasts("n1", first, batch="b-1")
    await store.count_broadcasts("n1", first, batch="b-1")  # the answer was lost
    await store.count_broadcasts("n2", {"B1": BroadcastCounts(1, 1)}, batch="b-1")  # n2's own
    await store.count_broadcasts("n1", {"B1": BroadcastCounts(2, 2)}, batch="b-2")
    # Landed for B1 only, then sent again whole: B2 takes it now.
    await store.count_broadcasts("n1", {"B1": BroadcastCounts(1, 0)}, batch="b-3")
    await store.count_broadcasts(
        "n1", {"B1": BroadcastCounts(1, 0), "B2": BroadcastCounts(0, 1)}, batch="b-3"
    )
    # Unnamed calls always add.
    await store.count_broadcasts("n1", {"B2": BroadcastCounts(1, 0)})
    await store.count_broadcasts("n1", {"B2": BroadcastCounts(1, 0)})
    other = await elsewhere(store, reopen)
    assert await other.broadcast_counts("B1") == BroadcastCounts(7, 4)
    assert await other.broadcast_counts("B2") == BroadcastCounts(3, 1)


async def test_the_audit_log_pages_newest_first_per_tenant(store: Store, reopen: Reopen) -> None:
    entries = [
        AuditEntry(
            at_ms=NOW + i,
            tenant=T1 if i % 3 else T2,
            key_id=f"k{i}",
            action="broadcast",
            channel=CH1,
            broadcast=f"B{i}",
        )
        for i in range(10)
    ]
    for e in entries:
        await store.append_audit(e)
    other = await elsewhere(store, reopen)
    mine = [e for e in reversed(entries) if e.tenant == T1]
    assert await other.audit(T1, None, 100) == mine
    assert await other.audit(T1, None, 2) == mine[:2]
    assert await other.audit(T1, mine[1].at_ms, 3) == mine[2:5]
    assert await other.audit(None, None, 100) == list(reversed(entries))
    assert await other.audit("cccccccccccc", None, 100) == []


async def test_each_relays_ledger_is_kept_and_replaced(store: Store, reopen: Reopen) -> None:
    assert await store.ledgers() == {}
    await store.put_ledger("n1", {T1: {100: 40, 101: -5}})
    await store.put_ledger("n2", {T2: {100: 7}})
    await store.put_ledger("n1", {T1: {101: 10}})
    other = await elsewhere(store, reopen)
    assert await other.ledgers() == {"n1": {T1: {101: 10}}, "n2": {T2: {100: 7}}}


async def test_old_broadcasts_and_audit_lines_are_forgotten(store: Store, reopen: Reopen) -> None:
    """Store.prune_broadcasts forgets broadcasts both done and expired before the
    cut (with their counts), not one still running or live, not a make-good;
    Store.prune_audit forgets lines before the cut, oldest first, ``limit`` a call."""
    await tenants(store)
    cut = NOW + 1_000
    kept = {
        "B1": broadcast("B1", done_ms=NOW + 2_000, expires_ms=NOW),  # done after the cut
        "B2": broadcast("B2", done_ms=NOW, expires_ms=NOW + 5_000),  # messages still live
        "B3": broadcast("B3", expires_ms=NOW),  # not done
        "B4": broadcast("B4", cid=MAKEGOOD_CHANNEL, done_ms=NOW, expires_ms=NOW),
    }
    gone = {f"B{n}": broadcast(f"B{n}", done_ms=NOW, expires_ms=NOW) for n in range(5, 8)}
    for b in (*kept.values(), *gone.values()):
        assert await store.put_broadcast(b)
    await store.count_broadcasts("n1", {b: BroadcastCounts(2, 1) for b in (*kept, *gone)})
    assert await store.prune_broadcasts(cut, 2) == 2
    assert await store.prune_broadcasts(cut, 10) == 1
    assert await store.prune_broadcasts(cut, 10) == 0
    other = await elsewhere(store, reopen)
    for bid in gone:
        assert await other.get_broadcast(bid) is None
        assert await other.broadcast_counts(bid) == BroadcastCounts()
    for bid, b in kept.items():
        assert await other.get_broadcast(bid) == b
        assert await other.broadcast_counts(bid) == BroadcastCounts(2, 1)
    lines = [
        AuditEntry(at_ms=NOW + i * 500, tenant=T1 if i % 2 else T2, key_id=None,
                   action="broadcast", channel=CH1, broadcast=f"B{i}")
        for i in range(6)
    ]  # fmt: skip
    for line in lines:
        await other.append_audit(line)
    assert await other.prune_audit(cut, 1) == 1  # the oldest first
    assert await other.audit(None, None, 100) == list(reversed(lines[1:]))
    assert await other.prune_audit(cut, 10) == 1  # at NOW + 500; NOW + 1000 is not before
    assert await other.audit(None, None, 100) == list(reversed(lines[2:]))
