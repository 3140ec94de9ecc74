"""Tenants on the cluster engine (store/jetstream/tenants.py): what the contract suite
cannot see, on real nats-server processes (see conftest.nats_cluster).

- the migration of an older cluster's data into the default tenant: records written
  as the relay before tenants wrote them (no ``tenant``) read as the default's, and
  the data layout version is recorded (layout 1 → 2), or a newer one refused;
- relays opening together make one default tenant;
- tenant reads are cached, and a change through one relay reaches another's cache
  with no request;
- a push restricted to a tenant costs what an unrestricted one does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Accepted
from pinrelay.core.tenants import DEFAULT_TENANT, Tenant
from pinrelay.store.base import UNKNOWN_DEVICE, Rejected, StoreClosed
from pinrelay.store.jetstream import JetStreamStore, ensure_bucket
from pinrelay.store.jetstream.layout import (
    LAYOUT_META,
    LAYOUT_VERSION,
    PARTITIONS_META,
    Layout,
)
from pinrelay.testing.wait import wait_until_async
from tests.natsproc import NatsCluster

from .conftest import jetstream_names
from .test_contract import NOW, A, B, add_devices, msg, read_all
from .test_jetstream import OpenStore, open_store
from .test_jetstream_social import Requests

__all__ = ["open_store"]

T1, T2 = "aaaaaaaaaaaa", "bbbbbbbbbbbb"


def tenant(tenant_id: str, *, suspended: bool = False, deleted_ms: int | None = None) -> Tenant:
    return Tenant(
        id=tenant_id,
        name=f"name-{tenant_id}",
        created_ms=NOW,
        suspended=suspended,
        deleted_ms=deleted_ms,
    )


async def publish_when_ready(js: JetStreamContext, subject: str, payload: bytes) -> None:
    """Publish to a bucket just made: until its stream's interest reaches the node
    this connection is on, a publish meets no responders (it raced in one run)."""
    await wait_until_async(
        lambda: js.publish(subject, payload),
        10,
        message=f"a publish to {subject}",
        ignore=(nats.js.errors.NoStreamResponseError,),
    )


async def make_layout_1(servers: list[str], tmp_path: Path, partitions: int) -> Layout:
    """A cluster as the relay before tenants left it: its streams (no layout in their
    metadata), its device, key and key-hash buckets (no tenants bucket), and records
    in the shape it wrote them (no ``tenant``): device A and key k1."""
    names = jetstream_names(tmp_path)
    layout = Layout(names["stream"], names["subject_prefix"], partitions, names["bucket_prefix"])
    buckets = layout.buckets
    nc = await nats.connect(servers)
    try:
        js = nc.jetstream()
        for part in range(partitions):
            await js.add_stream(
                StreamConfig(
                    name=layout.stream_name(part),
                    subjects=layout.stream_subjects(part),
                    storage=StorageType.FILE,
                    num_replicas=3,
                    allow_rollup_hdrs=True,
                    allow_msg_ttl=True,
                    allow_direct=True,
                    allow_atomic=True,
                    allow_msg_schedules=True,
                    duplicate_window=120.0,
                    metadata={PARTITIONS_META: str(partitions)},
                )
            )
        for bucket in (buckets.devices, buckets.keys, buckets.keyhash):
            await ensure_bucket(js, bucket.name, 3, None)
        device = {"token_hash": "hash-A", "created_ms": NOW, "gen": "0123abcd"}
        await publish_when_ready(js, buckets.devices.subject(A), json.dumps(device).encode())
        key = {
            "id": "k1",
            "name": "old key",
            "scope": "push",
            "key_hash": "hash-k1",
            "created_ms": NOW,
            "revoked": False,
        }
        await publish_when_ready(js, buckets.keys.subject("k1"), json.dumps(key).encode())
        hashed = hashlib.sha256(b"hash-k1").hexdigest()
        await publish_when_ready(js, buckets.keyhash.subject(hashed), b"k1")
    finally:
        await nc.close()
    return layout


async def stream_layouts(servers: list[str], layout: Layout) -> list[str | None]:
    """What each message stream records as its data layout."""
    nc = await nats.connect(servers)
    try:
        js = nc.jetstream()
        infos = [await js.stream_info(name) for name in layout.streams]
        return [(i.config.metadata or {}).get(LAYOUT_META) for i in infos]
    finally:
        await nc.close()


class TestMigration:
    @pytest.mark.parametrize("partitions", [1, 3])
    async def test_an_older_clusters_records_open_as_the_default_tenants(
        self, open_store: OpenStore, nats_cluster: NatsCluster, tmp_path: Path, partitions: int
    ) -> None:
        layout = await make_layout_1(nats_cluster.urls, tmp_path, partitions)
        assert await stream_layouts(nats_cluster.urls, layout) == [None] * partitions

        store = await open_store(partitions=partitions)
        assert await stream_layouts(nats_cluster.urls, layout) == [str(LAYOUT_VERSION)] * partitions
        default = await store.get_tenant(DEFAULT_TENANT)
        assert default is not None and default.live and not default.suspended
        assert [t.id for t in await store.list_tenants()] == [DEFAULT_TENANT]
        device = await store.get_device(A)
        assert device is not None and device.tenant == DEFAULT_TENANT
        assert await store.grants_of(A) == []
        key = await store.find_key("hash-k1")
        assert key is not None and key.tenant == DEFAULT_TENANT and key.name == "old key"
        # The default tenant's pushes reach the old device; another tenant's do not.
        await store.create_tenant(tenant(T1))
        results, _ = await store.append([msg(A, 1)], tenant=DEFAULT_TENANT)
        assert isinstance(results[0], Accepted)
        results, _ = await store.append([msg(A, 2)], tenant=T1)
        assert isinstance(results[0], Rejected) and results[0].reason == UNKNOWN_DEVICE
        assert [m.data for m in await read_all(store, A)] == [b'{"n":1}']

        # Opened again: nothing to do, nothing changed (the default tenant is the same).
        again = await open_store(partitions=partitions)
        assert await again.get_tenant(DEFAULT_TENANT) == default
        assert await stream_layouts(nats_cluster.urls, layout) == [str(LAYOUT_VERSION)] * partitions

    async def test_a_lost_stamp_runs_the_steps_again(
        self, open_store: OpenStore, nats_cluster: NatsCluster, tmp_path: Path
    ) -> None:
        """One stream of three stamped, the default tenant gone (as a crash between the
        steps and the stamps could leave it, or an operator's hand): the lowest layout
        counts, so the next open makes the tenant and stamps every stream."""
        store = await open_store(partitions=3)
        layout = store.layout
        await store.close()  # its watch follows the bucket removed here
        nc = await nats.connect(nats_cluster.urls)
        try:
            js = nc.jetstream()
            await js.delete_stream(layout.buckets.tenants.stream)
            for name in layout.streams[1:]:
                config = (await js.stream_info(name)).config
                config.metadata = {PARTITIONS_META: "3"}
                await js.update_stream(config)
        finally:
            await nc.close()
        assert await stream_layouts(nats_cluster.urls, layout) == ["2", None, None]
        again = await open_store(partitions=3)
        assert await stream_layouts(nats_cluster.urls, layout) == ["2", "2", "2"]
        assert [t.id for t in await again.list_tenants()] == [DEFAULT_TENANT]

    async def test_a_newer_layout_is_refused(self, open_store: OpenStore) -> None:
        store = await open_store()
        _, js = store.connection
        config = (await js.stream_info(store.stream)).config
        config.metadata = {**(config.metadata or {}), LAYOUT_META: str(LAYOUT_VERSION + 1)}
        await js.update_stream(config)
        try:
            with pytest.raises(StoreClosed, match=f"layout {LAYOUT_VERSION + 1}"):
                await open_store()
        finally:  # as it was, so that the fixture's cleanup can open the store
            config.metadata = {**config.metadata, LAYOUT_META: str(LAYOUT_VERSION)}
            await js.update_stream(config)

    async def test_relays_opening_together_make_one_default_tenant(
        self, open_store: OpenStore
    ) -> None:
        stores = await asyncio.gather(*(open_store() for _ in range(3)))
        for s in stores:
            assert [t.id for t in await s.list_tenants()] == [DEFAULT_TENANT]
        bucket = stores[0].layout.buckets.tenants
        info = await stores[0].api.request(f"STREAM.INFO.{bucket.stream}", {}, "info")
        assert info["state"]["last_seq"] == 1  # one write, ever


class TestAcrossRelays:
    async def test_a_tenant_is_read_once_and_changes_reach_another_relay(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        one, other = await open_store(), await open_store()
        await one.create_tenant(tenant(T1))
        assert await other.get_tenant(T1) == tenant(T1)  # read from the leader, cached
        assert await other.get_tenant(T2) is None  # no such tenant: cached as absent
        count = Requests(other, monkeypatch)
        for _ in range(100):
            assert await other.get_tenant(T1) == tenant(T1)
            assert await other.get_tenant(T2) is None
        assert count.taken == {"requests": 0, "messages": 0}

        # A suspension, a deletion and a creation through one relay are in the other's
        # cache within the watch's lag, with no request of its own.
        assert await one.update_tenant(tenant(T1, suspended=True))

        async def seen(expected: Tenant, tenant_id: str = T1) -> bool:
            return await other.get_tenant(tenant_id) == expected

        await wait_until_async(lambda: seen(tenant(T1, suspended=True)), 5.0)
        assert await one.update_tenant(tenant(T1, deleted_ms=NOW + 1))
        await wait_until_async(lambda: seen(tenant(T1, deleted_ms=NOW + 1)), 5.0)
        await one.create_tenant(tenant(T2))
        await wait_until_async(lambda: seen(tenant(T2), T2), 5.0)
        assert count.taken["requests"] == 0

    async def test_many_creates_of_one_tenant_at_once_all_succeed_and_count(
        self, open_store: OpenStore
    ) -> None:
        """200 creates of one tenant's devices in flight on one relay and 50 on
        another: all made (a relay's own count updates take turns; the two relays
        race by compare-and-set), the quota then sees all 250."""
        one, other = await open_store(), await open_store()
        await one.create_tenant(tenant(T1))
        pins = [f"{n:08X}" for n in range(250)]

        async def create(store: JetStreamStore, pin: str) -> bool:
            made = await store.create_device(pin, "h", None, NOW, tenant=T1, max_devices=250)
            return made is not None

        made = await asyncio.gather(
            *(create(one if n < 200 else other, pin) for n, pin in enumerate(pins))
        )
        assert all(made)
        with pytest.raises(PinrelayError) as full:
            await one.create_device("FFFFFFFF", "h", None, NOW, tenant=T1, max_devices=250)
        assert full.value.code is ErrorCode.RATE_LIMITED

    async def test_a_move_and_a_grant_reach_another_relays_pushes(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await one.create_device(A, "hash-A", None, NOW, tenant=T1)
        assert (await other.get_device(A)).tenant == T1  # type: ignore[union-attr]
        assert await one.set_grant(A, T2, True)
        await wait_until_async(lambda: grants(other, A, [T2]), 5.0)
        results, _ = await other.append([msg(A, 1)], tenant=T2)
        assert isinstance(results[0], Accepted)
        assert await one.set_device_tenant(A, T2)
        await wait_until_async(lambda: grants(other, A, []), 5.0)
        results, _ = await other.append([msg(A, 2)], tenant=T1)
        assert isinstance(results[0], Rejected) and results[0].reason == UNKNOWN_DEVICE
        assert (await other.get_device(A)).tenant == T2  # type: ignore[union-attr]


async def grants(store: JetStreamStore, pin: str, expected: list[str]) -> bool:
    return await store.grants_of(pin) == expected


class TestPushCost:
    @pytest.mark.parametrize("group_commit", [True, False], ids=["grouped", "alone"])
    async def test_a_push_for_a_tenant_costs_what_any_push_does(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, group_commit: bool
    ) -> None:
        """Requests per push, device record cached: 1 (the publish) with or without a
        tenant; a push the tenant may not make costs none (the record said no)."""
        store = await open_store(group_commit=group_commit)
        await store.create_tenant(tenant(T1))
        await store.create_device(A, "hash-A", None, NOW, tenant=T1)
        await add_devices(store, B)  # the default tenant's
        await store.append([msg(A, 0), msg(B, 0)])  # both records cached
        count = Requests(store, monkeypatch)
        costs: dict[str, list[dict[str, int]]] = {"none": [], "T1": [], "refused": []}
        for n in range(20):
            await store.append([msg(A, n)])
            costs["none"].append(count.taken)
            results, _ = await store.append([msg(A, n)], tenant=T1)
            assert isinstance(results[0], Accepted)
            costs["T1"].append(count.taken)
            results, _ = await store.append([msg(B, n)], tenant=T1)
            assert isinstance(results[0], Rejected)
            costs["refused"].append(count.taken)
        one = {"requests": 1, "messages": 1}
        assert costs == {
            "none": [one] * 20,
            "T1": [one] * 20,
            "refused": [{"requests": 0, "messages": 0}] * 20,
        }
