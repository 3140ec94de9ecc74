"""Channels on the cluster engine (store/jetstream/channels.py, broadcasts.py): what the
contract suite cannot see (relays racing on a quota, a shard or a broadcast record;
members paged from a large channel, and NATS requests per call), on real nats-server
processes (see conftest.nats_cluster)."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from pinrelay.core.channels import FANOUT_PAGE, Broadcast, Channel
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.jetstream.channels import Memberships, Shard, shard_key

from .test_contract import NOW, add_devices
from .test_contract_tenants import T1, tenant
from .test_jetstream_social import OpenStore, Requests, open_store

__all__ = ["open_store"]
#: A page's PINs over many prefixes (each one's consent read), or one (listed).
SPREADS = pytest.mark.parametrize(
    "pins",
    [[f"{n:02X}0B0B0B" for n in range(30)], [f"0B{n:06X}" for n in range(30)]],
    ids=["read", "listed"],
)


def channel(n: int) -> Channel:
    return Channel(id=f"C{n:012d}", tenant=T1, name=f"c{n}", klass="marketing", created_ms=NOW)


async def big_channel(store: JetStreamStore, channel_id: str, pins: list[str]) -> None:
    """Members written straight into their shards (joining 5,000 devices one by one
    would be the test's whole time)."""
    shards: dict[str, list[str]] = {}
    for pin in pins:
        shards.setdefault(shard_key(channel_id, pin), []).append(pin)
    bucket = store.layout.buckets.channels
    for key, members in shards.items():

        def write(_: Shard | None, members: list[str] = members) -> Shard:
            return Shard(sorted(members))

        await store.channels.shards.change(key, write)
    assert len(await store.channels.kv.keys(bucket, f"m.{channel_id}.*")) == len(shards)


class TestAcrossRelays:
    async def test_creates_racing_on_two_relays_hold_the_channels_quota(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await one.create_tenant(tenant(T1))

        async def create(n: int) -> bool:
            store = one if n % 2 else other
            try:
                await store.create_channel(channel(n), 3)
            except PinrelayError as err:
                assert err.code is ErrorCode.CONFLICT
                return False
            return True

        made = await asyncio.gather(*(create(n) for n in range(8)))
        assert sum(made) == 3
        assert [c.id for c in await other.list_channels(T1)] == [
            channel(n).id for n in range(8) if made[n]
        ]

    async def test_joins_racing_on_one_shard_all_land(self, open_store: OpenStore) -> None:
        one, other = await open_store(), await open_store()
        await one.create_tenant(tenant(T1))
        await one.create_channel(channel(1), 10)
        pins = [f"0A{n:06X}" for n in range(20)]  # one shard: "0A"
        await add_devices(one, *pins)
        joined = await asyncio.gather(
            *(
                (one if n % 2 else other).join_channel(pin, channel(1).id, True)
                for n, pin in enumerate(pins)
            )
        )
        assert all(joined)
        assert await one.channel_members(channel(1).id, "", 100) == pins
        cid = channel(1).id
        assert all(await asyncio.gather(*(other.join_channel(p, cid, False) for p in pins[::2])))
        assert await one.channel_members(channel(1).id, "", 100) == pins[1::2]

    @SPREADS
    async def test_marketing_admissions_racing_count_each_device_once(
        self, open_store: OpenStore, pins: list[str]
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, *pins)
        day = 20_000
        first, second = await asyncio.gather(
            one.admit(pins, "marketing", "M1", day, 1),
            other.admit(pins, "marketing", "M2", day, 1),
        )
        assert sorted(first + second) == pins  # each device took one of the two
        # Resumed fan-outs admit the same devices again, counting nothing more.
        assert await other.admit(pins, "marketing", "M1", day, 1) == first
        assert await one.admit(pins, "marketing", "M2", day, 1) == second

    @SPREADS
    async def test_admission_honours_refusals_and_caps_however_it_reads(
        self, open_store: OpenStore, pins: list[str]
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, *pins)
        for pin in pins[::3]:
            assert await one.set_refusal(pin, "marketing", True)
        for pin in pins[1::3]:
            assert await one.set_refusal(pin, "service", True)
        willing = [p for n, p in enumerate(pins) if n % 3 == 2]
        assert await other.admit(pins, "service", "S1", 7, None) == [
            p for n, p in enumerate(pins) if n % 3 != 1
        ]
        assert await other.admit(pins, "marketing", "M1", 7, 2) == sorted(pins[1::3] + willing)
        assert await other.admit(pins, "marketing", "M2", 7, 2) == sorted(pins[1::3] + willing)
        assert await one.admit(pins, "marketing", "M3", 7, 2) == []
        assert await one.admit(pins, "marketing", "M2", 7, 2) == sorted(pins[1::3] + willing)
        assert await one.admit(pins, "marketing", "M3", 8, 2) == sorted(pins[1::3] + willing)

    async def test_progress_racing_on_two_relays_never_goes_back(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        base = Broadcast(
            id="B1",
            channel=channel(1).id,
            tenant=T1,
            key_id=None,
            created_ms=NOW,
            expires_ms=NOW + 60_000,
            data=b"{}",
        )
        assert await one.put_broadcast(base)
        steps = [msgspec.structs.replace(base, after=f"{n:08X}", members=n) for n in range(40)]
        random.Random(7).shuffle(steps)
        await asyncio.gather(
            *((one if n % 2 else other).put_broadcast(b) for n, b in enumerate(steps))
        )
        got = await other.get_broadcast("B1")
        assert got is not None and got.after == f"{39:08X}" and got.members == 39
        assert [b.id for b in await one.unfinished_broadcasts()] == ["B1"]


class TestLargeChannels:
    async def test_a_large_channel_pages_in_order_in_few_requests(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = await open_store()
        rand = random.Random(15)
        pins = sorted({f"{rand.getrandbits(32):08X}" for _ in range(5_000)})
        cid = channel(1).id
        await big_channel(store, cid, pins)
        count = Requests(store, monkeypatch)
        got: list[str] = []
        pages: list[dict[str, int]] = []
        while True:
            page = await store.channel_members(cid, got[-1] if got else "", FANOUT_PAGE)
            pages.append(count.taken)
            if not page:
                break
            got += page
        assert got == pins
        for taken in pages:
            print(taken)
        # Per page a listing of the shards, then reads in waves (each shard once,
        # and the one a page ends in again): about one request per 19 members.
        assert max(t["requests"] for t in pages) <= 1 + 2 * FANOUT_PAGE // 19
        assert sum(t["requests"] for t in pages) <= 256 + 8 * len(pages)

    async def test_deleting_a_large_channel_forgets_its_members_at_once(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = await open_store()
        await store.create_tenant(tenant(T1))
        await store.create_channel(channel(1), 10)
        rand = random.Random(16)
        pins = sorted({f"{rand.getrandbits(32):08X}" for _ in range(2_000)})
        await big_channel(store, channel(1).id, pins)
        count = Requests(store, monkeypatch)
        assert await store.delete_channel(channel(1).id, NOW + 1)
        taken = count.taken
        print(f"delete_channel (2,000 members): {taken}")
        assert taken["requests"] <= 8
        assert await store.channel_members(channel(1).id, "", 10) == []


class TestHalfDone:
    """No write spans two keys: a call that failed half-way is finished by its retry."""

    async def test_a_join_that_wrote_only_the_devices_list_is_finished_by_its_retry(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        await store.create_tenant(tenant(T1))
        await store.create_channel(channel(1), 10)
        pin = "0E0E0E0E"
        await add_devices(store, pin)
        cid = channel(1).id

        def listed(_: Memberships | None) -> Memberships:
            return Memberships([cid])

        await store.channels.memberships.change(f"d.{pin}", listed)  # the crash came here
        assert await store.channels_of(pin) == [cid]
        assert await store.channel_members(cid, "", 10) == []
        assert await store.join_channel(pin, cid, True)
        assert await store.channel_members(cid, "", 10) == [pin]

    async def test_a_deletion_retried_forgets_members_left_behind(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        await store.create_tenant(tenant(T1))
        await store.create_channel(channel(1), 10)
        cid = channel(1).id
        assert await store.delete_channel(cid, NOW)
        await big_channel(store, cid, ["0F0F0F0F"])  # a join that raced the deletion
        assert not await store.delete_channel(cid, NOW + 1)
        assert await store.channel_members(cid, "", 10) == []
        got = await store.get_channel(cid)
        assert got is not None and got.deleted_ms == NOW
