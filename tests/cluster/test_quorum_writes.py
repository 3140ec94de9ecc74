"""Writes a stream leader without its quorum refuses (DECISIONS 62): two of three
nats-servers are killed while the survivor leads the buckets.  A create or
compare-and-set that timed out is retried by the store, and the leader answers the
retry "wrong last sequence" for its own proposal, which it cannot commit.  No such
write may be taken as stored: an audit line is not answered written, a pairing
code is not answered "used", a broadcast is not stored without its unfinished
entry, a device's PIN or a tenant's id is not answered taken.  The nodes come
back: what was answered stored is there, and the writes retried are stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pinrelay.core.channels import AuditEntry, Broadcast
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.tenants import Tenant
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.jetstream.errors import ApiError
from pinrelay.testing.wait import wait_until_async
from tests.natsproc import NatsCluster
from tests.store.conftest import jetstream_names

T = TypeVar("T")
TENANT = "default"
ACME = "acmeacme2345"
PIN = "0A1B2C3D"
TOKEN = "ab" * 32


async def lead(store: JetStreamStore, stream: str, server: str) -> None:
    """Move ``stream``'s leader to ``server`` (a step down naming it preferred)."""

    async def leader() -> str | None:
        info = await store.api.ask(f"STREAM.INFO.{stream}", {})
        return str((info.get("cluster") or {}).get("leader") or "") or None

    async def there() -> bool:
        with contextlib.suppress(Exception):
            if await leader() == server:
                return True
            body = {"placement": {"preferred": server}}
            await store.api.ask(f"STREAM.LEADER.STEPDOWN.{stream}", body)
        return False

    await wait_until_async(there, 30.0, 0.5, f"{server} leading {stream}")


@pytest.fixture
async def cluster_store(tmp_path: Path) -> AsyncIterator[tuple[NatsCluster, JetStreamStore]]:
    (tmp_path / "nats").mkdir()
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        # Connected to the survivor only: no reconnect when the others die.
        store = JetStreamStore(
            [cluster.nodes[0].url],
            replicas=3,
            request_timeout=1.0,
            retry_for=2.5,
            **jetstream_names(tmp_path),
        )
        await store.open()
        try:
            yield cluster, store
        finally:
            await store.close()
    finally:
        cluster.stop()


async def attempts(call: Callable[..., Awaitable[object]], *args: Any) -> int:
    """``call`` retried on StoreClosed until it is answered: how many attempts."""
    deadline = time.monotonic() + 30.0
    for n in range(1, 1000):
        try:
            await call(*args)
        except StoreClosed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        else:
            return n
    raise AssertionError("never answered")


async def retried(call: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T | None:
    """``call``, as a caller retries it: again on StoreClosed (a proposal of the
    outage still in flight), None on CONFLICT (that proposal landed)."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            return await call(*args, **kw)
        except StoreClosed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
        except PinrelayError as exc:
            assert exc.code == ErrorCode.CONFLICT, exc
            return None


def _broadcast(bid: str, now_ms: int) -> Broadcast:
    return Broadcast(
        id=bid,
        channel="news",
        tenant=TENANT,
        key_id=None,
        created_ms=now_ms,
        expires_ms=now_ms + 3_600_000,
        data=b'{"n":1}',
    )


async def test_a_leader_without_its_quorum_stores_nothing_taken_as_stored(
    cluster_store: tuple[NatsCluster, JetStreamStore],
) -> None:
    cluster, store = cluster_store
    survivor, killed = cluster.nodes[0], cluster.nodes[1:]
    now_ms = int(time.time() * 1000)
    code = "c0de" * 16
    await store.create_pairing(code, "PIN0001", now_ms + 600_000)
    b = store.broadcasts.bucket, store.pairings.bucket, store.devices.bucket, store.tenants.bucket
    for bucket in b:
        await lead(store, bucket.stream, survivor.name)

    for node in killed:
        node.kill()
    lines = [
        AuditEntry(at_ms=now_ms + n, tenant=TENANT, key_id=None, action="broadcast", channel="c")
        for n in range(3)
    ]
    bcast = _broadcast("b" * 20, now_ms)
    answers = await asyncio.gather(
        *(store.append_audit(line) for line in lines),
        store.redeem_pairing(code, now_ms),
        store.put_broadcast(bcast),
        store.create_device(PIN, TOKEN, None, now_ms, tenant=None),
        store.create_tenant(Tenant(id=ACME, name="Acme", created_ms=now_ms)),
        return_exceptions=True,
    )
    audit_answers, (redeemed, put, device, tenant) = answers[:3], answers[3:]
    # Nothing was committed, so nothing may be answered stored or "used".
    for answer in audit_answers:
        assert isinstance(answer, StoreClosed), answer
    assert isinstance(redeemed, StoreClosed), redeemed
    assert isinstance(put, StoreClosed), put
    assert isinstance(device, StoreClosed), device  # not None: "that PIN is taken"
    assert isinstance(tenant, StoreClosed), tenant  # not CONFLICT: "it exists"

    for node in killed:
        node.start()
    await cluster.wait_ready_async(30.0)

    async def writable() -> bool:
        try:
            await store.probe("quorum-test", now_ms)  # lands at most again: harmless
        except StoreClosed:
            return False
        return True

    await wait_until_async(writable, 30.0, 0.5, "the store writable again")
    # Counts: a broadcast stored is listed unfinished (its entry came first).
    if await store.get_broadcast(bcast.id) is not None:
        assert bcast.id in {b.id for b in await store.unfinished_broadcasts()}
    tries: Counter[int] = Counter()
    for line in lines:  # the callers' retries of the lines refused
        tries[line.at_ms] += 1 + await attempts(store.append_audit, line)
    await retried(store.put_broadcast, bcast)
    assert bcast.id in {b.id for b in await store.unfinished_broadcasts()}
    stored = Counter(e.at_ms for e in await store.audit(TENANT, None, 100))
    # Each line at least once; more only where a refused attempt landed after all
    # (the survivor, leading again, commits its proposal: a retry, never a loss).
    assert set(stored) == set(tries), (stored, tries)
    assert all(stored[at] <= tries[at] for at in stored), (stored, tries)
    # The code: redeemed once by the retry, or used by the outage's proposal if
    # that landed; never both, and a second redemption finds it used.
    first = await retried(store.redeem_pairing, code, now_ms)
    assert first is not None and first.outcome in ("redeemed", "used"), first
    assert (await store.redeem_pairing(code, now_ms)).outcome == "used"
    # The device and the tenant: made by the retry, or there from the outage.
    await retried(store.create_tenant, Tenant(id=ACME, name="Acme", created_ms=now_ms))
    assert (await store.get_tenant(ACME)) is not None
    await retried(store.create_device, PIN, TOKEN, None, now_ms, tenant=None)
    found = await store.get_device(PIN)
    assert found is not None and found.token_hash == TOKEN


async def test_what_a_leader_without_its_quorum_answers_a_retried_write(
    cluster_store: tuple[NatsCluster, JetStreamStore],
) -> None:
    """The server's answers DECISIONS 62 rests on (nats-server 2.15): a retried
    compare-and-set meets "wrong last sequence" for the leader's own proposal, a
    retried Nats-Msg-Id "in process" (409: StoreClosed), never ``duplicate: true``;
    a read on the leader shows nothing."""
    cluster, store = cluster_store
    api, bucket = store.api, store.broadcasts.bucket
    await lead(store, bucket.stream, cluster.nodes[0].name)
    await lead(store, store.incidents.bucket.stream, cluster.nodes[0].name)
    for node in cluster.nodes[1:]:
        node.kill()
    cas, once = {"Nats-Expected-Last-Subject-Sequence": "0"}, {"Nats-Msg-Id": "retried"}
    for subject, headers in ((bucket.subject("z.cas"), cas), (bucket.subject("z.id"), once)):
        with pytest.raises(TimeoutError):  # the proposal: no quorum commits it
            await api.publish(subject, b"x", headers)
    with pytest.raises(ApiError) as refused:
        await api.publish(bucket.subject("z.cas"), b"x", cas)
    assert refused.value.err_code == 10164 and refused.value.transient
    assert not refused.value.wrong_last_sequence  # not "moved on": retried, then 503
    with pytest.raises(StoreClosed):
        await api.unless_moved(lambda: api.publish(bucket.subject("z.cas"), b"x", cas), "cas")
    with pytest.raises(ApiError) as in_process:
        await api.publish(bucket.subject("z.id"), b"x", once)
    assert in_process.value.code == 409 and not in_process.value.batch_duplicate
    with pytest.raises(StoreClosed):  # as the store's retry loop sees it
        await api.call(lambda: api.publish(bucket.subject("z.id"), b"x", once), "publish")
    assert await store.broadcasts.kv.get(bucket, "z.cas") is None
    with pytest.raises(StoreClosed):  # the monitors' probe: StoreClosed, not nats-py's own
        await store.probe("quorum-test", 0)
