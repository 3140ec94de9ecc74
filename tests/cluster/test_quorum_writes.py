"""Writes a stream leader without its quorum refuses (DECISIONS 62): two of three
nats-servers are killed while the survivor leads the buckets.  A create or
compare-and-set that timed out is retried by the store, and the leader answers the
retry "wrong last sequence" for its own proposal, which it cannot commit.  No such
write may be taken as stored: an audit line is not answered written, a pairing
code is not answered "used", a broadcast is not stored without its unfinished
entry.  The nodes come back: what was answered stored is there, and the writes
retried are stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pinrelay.core.channels import AuditEntry, Broadcast
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.wait import wait_until_async
from tests.natsproc import NatsCluster
from tests.store.conftest import jetstream_names

TENANT = "default"


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
    for bucket in (store.pairings.bucket, store.broadcasts.bucket):
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
        return_exceptions=True,
    )
    audit_answers, (redeemed, put) = answers[:3], answers[3:]
    # Nothing was committed, so nothing may be answered stored or "used".
    for answer in audit_answers:
        assert isinstance(answer, StoreClosed), answer
    assert isinstance(redeemed, StoreClosed), redeemed
    assert isinstance(put, StoreClosed), put

    for node in killed:
        node.start()
    await cluster.wait_ready_async(30.0)

    async def writable() -> bool:
        try:
            await store.append_audit(lines[0])  # the caller's retry of a refused line
        except StoreClosed:
            return False
        return True

    await wait_until_async(writable, 30.0, 0.5, "the store writable again")
    # Counts: a broadcast stored is listed unfinished (its entry came first).
    if await store.get_broadcast(bcast.id) is not None:
        assert bcast.id in {b.id for b in await store.unfinished_broadcasts()}
    for line in lines[1:]:
        await store.append_audit(line)
    await store.put_broadcast(bcast)
    assert bcast.id in {b.id for b in await store.unfinished_broadcasts()}
    stored = await store.audit(TENANT, None, 100)
    # Each line once, or twice where the survivor, elected again, committed its
    # proposal of the outage too (a refused write may still land; never a loss).
    assert {e.at_ms for e in stored} == {line.at_ms for line in lines}
    assert len(stored) <= 2 * len(lines)
    # The code: redeemed once by the retry, or used by the outage's proposal if
    # that landed; never both, and a second redemption finds it used.
    # (StoreClosed while that proposal is still in flight: the caller retries.)
    outcomes: list[str] = []

    async def redeemed() -> bool:
        with contextlib.suppress(StoreClosed):
            outcomes.append((await store.redeem_pairing(code, now_ms)).outcome)
            return True
        return False

    await wait_until_async(redeemed, 30.0, 0.5, "the code's redemption answered")
    assert outcomes[-1] in ("redeemed", "used"), outcomes
    assert (await store.redeem_pairing(code, now_ms)).outcome == "used"
