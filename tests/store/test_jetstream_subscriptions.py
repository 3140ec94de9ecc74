"""Web Push subscriptions on the cluster engine (store/jetstream/subscriptions.py): what
the contract suite cannot see (several relays at once, the per-device index, device
deletions racing with creates, tombstone TTLs, older clusters, NATS requests per
call), on real nats-server processes (see conftest.nats_cluster)."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import msgspec
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import MAX_SUBSCRIPTIONS, SUBSCRIPTION_GONE_KEEP_MS, Subscription
from pinrelay.store.jetstream.subscriptions import IndexRec, index_key
from pinrelay.testing.wait import scaled, wait_until_async

from .test_contract import A, add_devices
from .test_jetstream import drop_answer
from .test_jetstream_social import ATOMIC, OpenStore, Requests, open_store

__all__ = ["open_store"]


def now_ms() -> int:
    # Real time, not the suite's fixed NOW: a tombstone older than 30 days by the
    # store's clock is read from the leader again (its TTL may have removed it).
    return int(time.time() * 1000)


#: When this module's subscriptions were made.
T0 = now_ms()


def sub(n: int, pin: str = A) -> Subscription:
    return Subscription(f"sub{n:019d}", pin, T0 + n)


async def outcome(call: Any) -> str:
    """ "ok", or the code of the PinrelayError ``call`` raised."""
    try:
        await call
    except PinrelayError as err:
        return err.code.name
    return "ok"


class TestAcrossRelays:
    @ATOMIC
    async def test_concurrent_creates_through_two_relays_keep_the_bound(
        self, open_store: OpenStore, atomic: bool
    ) -> None:
        one, other = await open_store(atomic=atomic), await open_store(atomic=atomic)
        assert one.subscriptions.atomic is atomic
        await add_devices(one, A)
        subs = [sub(n) for n in range(MAX_SUBSCRIPTIONS + 20)]
        results = await asyncio.gather(
            *(outcome(one.create_subscription(s)) for s in subs[::2]),
            *(outcome(other.create_subscription(s)) for s in subs[1::2]),
        )
        made = [s.id for s, r in zip([*subs[::2], *subs[1::2]], results, strict=True) if r == "ok"]
        assert sorted(set(results)) == ["CONFLICT", "ok"]
        assert len(made) == MAX_SUBSCRIPTIONS
        fresh = await open_store(atomic=atomic)  # empty caches: the leader's records
        assert sorted(s.id for s in await fresh.subscriptions_of(A)) == sorted(made)

    async def test_a_delete_reaches_another_relays_cache_with_no_request(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A)
        first = sub(1)
        await one.create_subscription(first)
        assert await other.get_subscription(first.id) == first  # now cached there
        count = Requests(other, monkeypatch)
        deleted = now_ms()
        started = time.monotonic()
        assert await one.delete_subscription(A, first.id, deleted)
        answered = time.monotonic()
        answered_ms = (answered - started) * 1000
        polls = 0
        while True:  # the watch, not a read, brings the tombstone
            got = await other.get_subscription(first.id)
            polls += 1
            if got is not None and got.deleted_ms == deleted:
                break
            # Counted from the answer, not from the three-node write a loaded host may
            # slow: without the watch the cache would hold the live record for good.
            assert time.monotonic() - answered < scaled(2.0), "still live on the other relay"
            await asyncio.sleep(0.002)
        lag_ms = (time.monotonic() - started) * 1000
        print(
            f"delete answered in {answered_ms:.1f} ms, seen by the other relay's cache"
            f" {lag_ms:.1f} ms after it began ({polls} gets)"
        )
        assert count.taken == {"requests": 0, "messages": 0}

    async def test_a_device_deleted_through_one_relay_ends_its_subscriptions_on_another(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A)
        await one.create_subscription(sub(1))
        await one.create_subscription(sub(2))
        assert [s.id for s in await other.subscriptions_of(A)] == [sub(1).id, sub(2).id]
        before = now_ms()
        assert await other.delete_device(A)

        async def ended() -> bool:
            got = [await one.get_subscription(s.id) for s in (sub(1), sub(2))]
            return all(g is not None and (g.deleted_ms or 0) >= before for g in got)

        await wait_until_async(ended, 1, message="the tombstones to reach the first relay")
        assert await one.subscriptions_of(A) == []


class TestDeletedDevices:
    async def test_a_deletion_that_stopped_half_way_is_finished_by_its_retry(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        await add_devices(store, A)
        await store.create_subscription(sub(1))
        assert await store.devices.remove(A)  # as a crash right after the record went
        live = await store.get_subscription(sub(1).id)
        assert live is not None and live.deleted_ms is None
        assert not await store.delete_device(A)  # no device, but its retry ends them
        gone = await store.get_subscription(sub(1).id)
        assert gone is not None and gone.deleted_ms is not None
        assert await store.subscriptions_of(A) == []

    @ATOMIC
    async def test_a_create_racing_with_the_devices_deletion_leaves_nothing_live(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, atomic: bool
    ) -> None:
        one, other = await open_store(atomic=atomic), await open_store(atomic=atomic)
        await add_devices(one, A)
        await one.create_subscription(sub(1))
        racing = sub(2)
        record = one.layout.buckets.subscriptions.subject(racing.id)
        publish = one.api.publish
        deleted: list[bool] = []

        async def deleted_meanwhile(subject: str, payload: bytes, headers: dict[str, str]) -> Any:
            # The index is written (or its batch sent); the device goes before the record.
            if subject == record and not deleted:
                deleted.append(await other.delete_device(A))
            return await publish(subject, payload, headers)

        monkeypatch.setattr(one.api, "publish", deleted_meanwhile)
        result = await outcome(one.create_subscription(racing))
        assert deleted == [True]
        # One by one, the deletion claimed the id before the record was written: the
        # create lost it.  In a batch, the create wrote after the deletion, then found
        # the device gone and ended its subscription itself.
        assert result == ("ok" if atomic else "CONFLICT")
        for s in (sub(1), racing):
            # ``one`` reads its cache, which its watch brings up to date with what
            # ``other`` wrote within moments (slower on a busy machine).
            async def ended(sub_id: str = s.id) -> bool:
                got = await one.get_subscription(sub_id)
                assert got is not None, sub_id
                return got.deleted_ms is not None

            await wait_until_async(ended, 10, 0.05, f"{s.id} ended as seen by the other store")

        async def none_live() -> bool:
            return await one.subscriptions_of(A) == []

        await wait_until_async(none_live, 10, 0.05, "no live subscription of the device")
        # The index names nothing (a racing create may leave it behind, empty).
        index = await one.subscriptions.kv.get(one.subscriptions.bucket, index_key(A))
        assert index is None or msgspec.json.decode(index.value, type=IndexRec) == IndexRec()


class TestIndex:
    @ATOMIC
    async def test_ids_without_records_are_claimed_when_the_index_is_full(
        self, open_store: OpenStore, atomic: bool
    ) -> None:
        store = await open_store(atomic=atomic)
        await add_devices(store, A)
        # As creates that crashed between the index and the record (one by one) leave.
        ghosts = [f"ghost{n:017d}" for n in range(MAX_SUBSCRIPTIONS)]
        raw = msgspec.json.encode(IndexRec(ghosts))
        bucket = store.subscriptions.bucket
        assert await store.subscriptions.kv.put(bucket, index_key(A), raw, 0) is not None
        assert await store.subscriptions_of(A) == []
        await store.create_subscription(sub(1))
        assert await store.subscriptions_of(A) == [sub(1)]
        claimed = await store.get_subscription(ghosts[0])
        assert claimed is not None and claimed.pin == A and claimed.deleted_ms is not None
        got = await store.subscriptions.kv.get(bucket, index_key(A))
        assert got is not None and msgspec.json.decode(got.value, type=IndexRec) == IndexRec(
            [sub(1).id]
        )

    async def test_another_devices_id_is_a_conflict(self, open_store: OpenStore) -> None:
        store = await open_store()
        await store.create_subscription(sub(1))
        with pytest.raises(PinrelayError) as err:
            await store.create_subscription(Subscription(sub(1).id, "0B0B0B0B", now_ms()))
        assert err.value.code is ErrorCode.CONFLICT
        assert await store.subscriptions_of("0B0B0B0B") == []


class TestLostAcknowledgement:
    @ATOMIC
    async def test_a_write_retried_after_a_lost_answer_counts_as_done(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, atomic: bool
    ) -> None:
        store = await open_store(atomic=atomic)
        await add_devices(store, A)
        record = store.layout.buckets.subscriptions.subject(sub(1).id)
        lost = drop_answer(store, monkeypatch, record)
        await store.create_subscription(sub(1))
        assert lost and await store.subscriptions_of(A) == [sub(1)]
        lost.clear()
        assert await store.delete_subscription(A, sub(1).id, now_ms())
        assert lost and await store.subscriptions_of(A) == []


class TestTombstones:
    async def test_a_tombstone_carries_its_ttl(self, open_store: OpenStore) -> None:
        store = await open_store()
        await add_devices(store, A)
        await store.create_subscription(sub(1))
        await store.create_subscription(sub(2))
        assert await store.delete_subscription(A, sub(1).id, now_ms())
        assert await store.delete_device(A)
        bucket = store.subscriptions.bucket
        ttl = f"Nats-TTL: {SUBSCRIPTION_GONE_KEEP_MS // 1000}".encode()
        for s in (sub(1), sub(2)):
            body = {"last_by_subj": bucket.subject(s.id)}
            resp = await store.api.request(f"STREAM.MSG.GET.{bucket.stream}", body, "read")
            assert ttl in base64.b64decode(resp["message"]["hdrs"]), s.id


class TestSetup:
    async def test_an_older_cluster_gets_the_bucket_on_open(self, open_store: OpenStore) -> None:
        store = await open_store(atomic=False)
        await add_devices(store, A)
        stream = store.layout.buckets.subscriptions.stream
        _, js = store.connection
        await js.delete_stream(stream)  # as a cluster made before subscriptions
        again = await open_store(atomic=False)
        await again.create_subscription(sub(1))
        assert await again.delete_subscription(A, sub(1).id, now_ms())
        # A bucket made without per-message TTLs (by hand, say) gets them switched on.
        await js.delete_stream(stream)
        prefix = store.layout.buckets.subscriptions.prefix
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"{prefix}>"],
                storage=StorageType.FILE,
                num_replicas=3,
                max_msgs_per_subject=1,
                discard=DiscardPolicy.NEW,
                allow_rollup_hdrs=True,
                deny_delete=True,
            )
        )
        assert not (await js.stream_info(stream)).config.allow_msg_ttl
        third = await open_store(atomic=False)
        assert (await js.stream_info(stream)).config.allow_msg_ttl
        await third.create_subscription(sub(2))
        assert await third.delete_subscription(A, sub(2).id, now_ms())


class TestRequests:
    """NATS requests per call: a push's lookup is a cached read (printed with ``-s``)."""

    async def test_request_costs(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = await open_store()
        await add_devices(store, A)
        count = Requests(store, monkeypatch)
        costs: dict[str, dict[str, int]] = {}
        await store.create_subscription(sub(1))
        costs["create_subscription"] = count.taken
        for _ in range(100):
            await store.get_subscription(sub(1).id)
        costs["get_subscription x100 (cached)"] = count.taken
        await store.get_subscription(sub(2).id)
        costs["get_subscription (unknown, first)"] = count.taken
        await store.get_subscription(sub(2).id)
        costs["get_subscription (unknown, again)"] = count.taken
        await store.subscriptions_of(A)
        costs["subscriptions_of (records cached)"] = count.taken
        assert await store.delete_subscription(A, sub(1).id, now_ms())
        costs["delete_subscription"] = count.taken
        for _ in range(100):
            await store.get_subscription(sub(1).id)
        costs["get_subscription x100 (tombstone, cached)"] = count.taken
        for what, taken in costs.items():
            print(f"{what}: {taken}")
        # Reads of the record and the index, one atomic batch, the device read again.
        assert costs["create_subscription"] == {"requests": 4, "messages": 5}
        assert costs["get_subscription x100 (cached)"] == {"requests": 0, "messages": 0}
        assert costs["get_subscription (unknown, first)"] == {"requests": 1, "messages": 1}
        assert costs["get_subscription (unknown, again)"] == {"requests": 0, "messages": 0}
        assert costs["subscriptions_of (records cached)"] == {"requests": 1, "messages": 1}
        assert costs["delete_subscription"] == {"requests": 3, "messages": 4}
        assert costs["get_subscription x100 (tombstone, cached)"] == {
            "requests": 0,
            "messages": 0,
        }
