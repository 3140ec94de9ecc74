"""Group commit (store/jetstream/group.py) on real nats-server processes.

To make a group deterministic, :class:`Gate` holds the store's stream publishes
(KV writes pass) while the appends queue behind the one in flight; the server and
the client are real.  A lost commit acknowledgement is a real publish whose answer
the client is told it never got.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from msgspec.structs import replace

from pinrelay.chat import Chat
from pinrelay.core.chat import Delivered, receipt_data
from pinrelay.core.model import Accepted, Limits, NewMessage
from pinrelay.ingest import Ingest
from pinrelay.metrics import Metrics
from pinrelay.router.local import LocalRouter
from pinrelay.store.base import (
    RECEIPT_STORED,
    UNKNOWN_DEVICE,
    IdempotencyKey,
    Rejected,
    StoreClosed,
    Unread,
)
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.jetstream.group import GroupCommit
from tests.natsproc import NatsCluster, running_cluster

from .conftest import destroy_jetstream, jetstream_names
from .test_contract import NOW, UNKNOWN, A, B, C, add_devices, data_n, msg, read_all
from .test_jetstream import stream_leader

Results = list[Accepted | Rejected]


@pytest.fixture
async def js_store(nats_cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[JetStreamStore]:
    """A store on the session cluster, in this test's own namespace."""
    store = JetStreamStore(nats_cluster.urls, **jetstream_names(tmp_path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await destroy_jetstream(nats_cluster.urls, tmp_path, "jetstream")


class Gate:
    """Holds the store's stream publishes until opened (KV writes pass), or with
    ``shared_only`` only the commits of batches shared by several appends.

    ``lose``: the next shared commit is stored, but its answer reported lost."""

    def __init__(
        self, store: JetStreamStore, monkeypatch: pytest.MonkeyPatch, *, shared_only: bool = False
    ) -> None:
        self.opened = asyncio.Event()
        self.held = 0
        self.lose = False
        self.lost = 0
        real = store.api.publish
        prefix = f"{store.prefix}."

        async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> Any:
            # A shared batch's id is a bare uuid; an append alone's is <nonce>-<start>.
            shared = "Nats-Batch-Commit" in headers and "-" not in headers["Nats-Batch-Id"]
            held = subject.startswith(prefix) and (shared or not shared_only)
            if held and not self.opened.is_set():
                self.held += 1
                await self.opened.wait()
            answer = await real(subject, payload, headers)
            if self.lose and shared:
                self.lose = False
                self.lost += 1
                raise nats.errors.TimeoutError
            return answer

        monkeypatch.setattr(store.api, "publish", publish)

    def open(self) -> None:
        self.opened.set()


def group_of(store: JetStreamStore) -> GroupCommit:
    assert store.group is not None
    return store.group


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def queued_behind_one(
    store: JetStreamStore, gate: Gate, batches: list[list[NewMessage]], queued: int = 0
) -> tuple[asyncio.Task[Any], list[asyncio.Task[tuple[Results, bool]]]]:
    """A first append held in flight, then ``batches`` appended, all queued behind it
    (or ``queued`` of them: the others have nothing to publish)."""
    first = asyncio.create_task(store.append([msg(C, -1)]))
    await until(lambda: gate.held == 1)
    tasks = [asyncio.create_task(store.append(b)) for b in batches]
    await until(lambda: group_of(store).waiting(0) == (queued or len(batches)))
    return first, tasks


async def stored_ids(store: JetStreamStore, *pins: str) -> dict[str, int]:
    """Every stored message: id -> cursor (an id stored twice fails)."""
    out: dict[str, int] = {}
    for pin in pins:
        for m in await read_all(store, pin):
            assert m.id not in out, f"{m.id} stored twice"
            out[m.id] = m.cursor
    return out


def accepted(results: Results) -> dict[str, int]:
    out = {}
    for r in results:
        assert isinstance(r, Accepted), r
        out[r.id] = r.cursor
    return out


class TestGroups:
    async def test_queued_appends_share_one_batch_each_with_its_own_results(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = js_store
        pins = [f"{n:08X}" for n in range(0xB0, 0xB8)]
        await add_devices(store, C, *pins)
        gate = Gate(store, monkeypatch)
        # Singles, and every fourth append three messages (one with a topic).
        batches = [
            [msg(pins[i % 8], i)]
            if i % 4
            else [msg(pins[i % 8], i), msg(pins[i % 8], i, topic=f"t{i}"), msg(pins[i % 8], i)]
            for i in range(32)
        ]
        first, tasks = await queued_behind_one(store, gate, batches)
        gate.open()
        await first
        outcomes = await asyncio.gather(*tasks)
        group = group_of(store)
        assert (group.batches, group.grouped, group.fallbacks) == (1, 32, 0)
        got: dict[str, int] = {}
        for batch, (results, replay) in zip(batches, outcomes, strict=True):
            assert replay is False
            assert [r.id for r in results] == [m.id for m in batch]
            cursors = list(accepted(results).values())
            assert cursors == sorted(set(cursors))  # in order, each its own
            got |= accepted(results)
        assert len(set(got.values())) == len(got) == 8 * 3 + 24
        assert await stored_ids(store, *pins) == got

    async def test_each_callers_sequence_stays_in_order_per_device(
        self, js_store: JetStreamStore
    ) -> None:
        store = js_store
        await add_devices(store, A, B)

        async def caller(c: int) -> None:
            for k in range(15):
                pin = A if k % 2 else B
                (r,), _ = await store.append([msg(pin, c * 100 + k)])
                assert isinstance(r, Accepted)

        await asyncio.gather(*(caller(c) for c in range(12)))
        assert group_of(store).grouped > 0
        for pin, parity in ((A, 1), (B, 0)):
            seen = [data_n(m) for m in await read_all(store, pin)]
            for c in range(12):
                mine = [n % 100 for n in seen if n // 100 == c]
                assert mine == [k for k in range(15) if k % 2 == parity]


class TestFailures:
    async def test_an_unknown_device_in_a_group_leaves_the_others_stored(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = js_store
        await add_devices(store, A, B, C)
        gate = Gate(store, monkeypatch)
        batches = [[msg(A, 1)], [msg(UNKNOWN, 2)], [msg(B, 3), msg(UNKNOWN, 4)], [msg(A, 5)]]
        first, tasks = await queued_behind_one(store, gate, batches, queued=3)
        gate.open()
        await first
        outcomes = [results for results, _ in await asyncio.gather(*tasks)]
        for results in (outcomes[1], outcomes[2][1:]):
            assert [(r.pin, r.reason) for r in results if isinstance(r, Rejected)] == [
                (UNKNOWN, UNKNOWN_DEVICE)
            ]
        assert [data_n(m) for m in await read_all(store, A)] == [1, 5]
        assert [data_n(m) for m in await read_all(store, B)] == [3]

    async def test_a_refused_takeover_fails_nobody_and_finds_its_sequences(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A takeover republishes stored messages under their ids: JetStream refuses
        # the whole atomic batch holding them ("contains duplicate message id").
        store = js_store
        await add_devices(store, A, B, C)
        owner = [msg(A, 0), msg(A, 1), msg(A, 2)]
        first_try = await store.appender.append(owner, "owner-nonce")
        gate = Gate(store, monkeypatch)
        first = asyncio.create_task(store.append([msg(C, -1)]))
        await until(lambda: gate.held == 1)
        takeover = asyncio.create_task(store.appender.append(owner, "owner-nonce"))
        others = [asyncio.create_task(store.append([msg(B, n)])) for n in range(5)]
        await until(lambda: group_of(store).waiting(0) == 6)
        gate.open()
        await first
        assert await takeover == first_try
        for task in others:
            (r,), _ = await task
            assert isinstance(r, Accepted)
        group = group_of(store)
        assert (group.batches, group.fallbacks) == (0, 1)
        assert [data_n(m) for m in await read_all(store, A)] == [0, 1, 2]
        assert [data_n(m) for m in await read_all(store, B)] == [0, 1, 2, 3, 4]

    async def test_a_message_too_large_fails_only_its_caller(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = js_store
        await add_devices(store, A, B, C)
        huge = msg(A, 0)
        huge = NewMessage(A, huge.id, b'"' + b"x" * 2_000_000 + b'"', None, "normal", NOW, NOW + 1)
        gate = Gate(store, monkeypatch)
        first, tasks = await queued_behind_one(store, gate, [[msg(B, 1)], [huge], [msg(B, 2)]])
        gate.open()
        await first
        ok1, failed, ok2 = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(failed, StoreClosed)
        assert not isinstance(ok1, BaseException) and not isinstance(ok2, BaseException)
        assert group_of(store).fallbacks == 1
        assert await read_all(store, A) == []
        assert [data_n(m) for m in await read_all(store, B)] == [1, 2]

    async def test_one_topic_rolled_up_by_two_callers_goes_in_two_batches(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = js_store
        await add_devices(store, A, B, C)
        gate = Gate(store, monkeypatch)
        batches = [[msg(A, 1, topic="t")], [msg(B, 2)], [msg(A, 3, topic="t")], [msg(B, 4)]]
        first, tasks = await queued_behind_one(store, gate, batches)
        gate.open()
        await first
        for results, _ in await asyncio.gather(*tasks):
            accepted(results)
        group = group_of(store)
        assert (group.batches, group.grouped, group.fallbacks) == (2, 4, 0)
        assert [data_n(m) for m in await read_all(store, A)] == [3]
        assert [data_n(m) for m in await read_all(store, B)] == [2, 4]

    async def test_a_lost_commit_acknowledgement_gives_every_caller_its_sequences(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = js_store
        await add_devices(store, A, B, C)
        gate = Gate(store, monkeypatch)
        batches = [[msg(A, 1)], [msg(B, 2), msg(B, 3), msg(A, 4)], [msg(A, 5)], [msg(B, 6)]]
        first, tasks = await queued_behind_one(store, gate, batches)
        gate.lose = True
        gate.open()
        await first
        got: dict[str, int] = {}
        for results, _ in await asyncio.gather(*tasks):
            got |= accepted(results)
        group = group_of(store)
        assert (gate.lost, group.batches, group.fallbacks) == (1, 0, 1)
        assert await stored_ids(store, A, B) == got
        assert [data_n(m) for m in await read_all(store, A)] == [1, 4, 5]

    async def test_a_cancelled_caller_does_not_break_its_group(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = js_store
        await add_devices(store, A, B, C)
        gate = Gate(store, monkeypatch)
        batches = [[msg(A, 1)], [msg(B, 2)], [msg(A, 3)]]
        first, tasks = await queued_behind_one(store, gate, batches)
        tasks[1].cancel()  # still queued: left out
        await until(lambda: group_of(store).waiting(0) == 2)
        gate.open()
        await first
        for task in (tasks[0], tasks[2]):
            (r,), _ = await task
            assert isinstance(r, Accepted)
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert await read_all(store, B) == []
        # Cancelled while its group is in flight: the others still get their answers.
        gate = Gate(store, monkeypatch)
        commit = Gate(store, monkeypatch, shared_only=True)
        first, tasks = await queued_behind_one(store, gate, batches)
        gate.open()
        await first
        await until(lambda: commit.held == 1)
        tasks[1].cancel()
        commit.open()
        for task in (tasks[0], tasks[2]):
            (r,), _ = await task
            assert isinstance(r, Accepted)
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert [data_n(m) for m in await read_all(store, A)] == [1, 3, 1, 3]
        assert [data_n(m) for m in await read_all(store, B)] == [2]  # it went out


def receipt(chat_id: str, n: int = 0) -> NewMessage:
    """B's delivered receipt to A for ``chat_id``, named as Chat makes it."""
    m = msg(A, n, kind="receipt", sender=B)
    data = receipt_data(chat_id, "delivered")
    return replace(m, data=data, dedup=f"receipt.{B}.{chat_id}.delivered")


class TestNamed:
    """A message with a ``dedup`` name (a receipt) is stored once per name, so the
    ack that comes again after a relay died between a receipt and its unread entry
    stores no second receipt (chat.py)."""

    async def test_appended_again_it_is_stored_before_alone_or_beside_new_ones(
        self, js_store: JetStreamStore
    ) -> None:
        store = js_store
        await add_devices(store, A, B)
        (first,), _ = await store.append([receipt("01CHAT1")])
        assert isinstance(first, Accepted)
        # Again alone (one publish), then beside a new one (one atomic batch, refused
        # for the name it holds, then each alone).
        repeat = receipt("01CHAT1")
        (alone,), _ = await store.append([repeat])
        again = [receipt("01CHAT1"), receipt("01CHAT2")]
        results, _ = await store.append(again)
        assert alone == Rejected(A, RECEIPT_STORED, repeat.id)
        assert results[0] == Rejected(A, RECEIPT_STORED, again[0].id)
        assert isinstance(results[1], Accepted), results
        stored = await read_all(store, A)
        assert [m.id for m in stored] == [first.id, again[1].id]

    async def test_redone_one_by_one_each_cancel_goes_before_the_receipts(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A delivered receipt's batch holds the cancel of its chat's expiry schedule.
        # Redone one by one, a crash between the two must cost a delivered receipt
        # (the ack comes again), never leave a delivered chat to be told "failed".
        store = js_store
        await add_devices(store, A, B)
        await store.append([receipt("01CHAT1")])
        alone: list[str] = []
        real = store.api.publish

        async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> Any:
            if "Nats-Batch-Id" not in headers:
                alone.append(headers["Nats-Msg-Id"])
            return await real(subject, payload, headers)

        monkeypatch.setattr(store.api, "publish", publish)
        results, _ = await store.append([receipt("01CHAT1"), receipt("01CHAT2")])
        assert [type(r) for r in results] == [Rejected, Accepted], results
        one, two = (f"receipt.{B}.01CHAT{n}.delivered" for n in (1, 2))
        assert alone == [f"{one}.x", f"{two}.x", one, two]

    async def test_one_in_a_group_leaves_the_others_stored(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = js_store
        await add_devices(store, A, B, C)
        await store.append([receipt("01CHAT1")])
        gate = Gate(store, monkeypatch)
        batches = [[msg(B, 1)], [receipt("01CHAT1")], [msg(B, 2), receipt("01CHAT3")]]
        first, tasks = await queued_behind_one(store, gate, batches)
        gate.open()
        await first
        (b1,), (again,), (b2, new) = [results for results, _ in await asyncio.gather(*tasks)]
        assert isinstance(again, Rejected) and again.reason == RECEIPT_STORED, again
        assert all(isinstance(r, Accepted) for r in (b1, b2, new))
        assert group_of(store).fallbacks == 1
        assert [data_n(m) for m in await read_all(store, B)] == [1, 2]
        assert len(await read_all(store, A)) == 2

    async def test_its_own_lost_acknowledgement_stores_it_once(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Its own batch committed, the answer lost: the retry finds each name stored
        # (answered as stored before: stored, and the feed tells the device).
        store = js_store
        await add_devices(store, A, B, C)
        gate = Gate(store, monkeypatch)
        batches = [[receipt("01CHAT1")], [receipt("01CHAT2"), receipt("01CHAT3")]]
        first, tasks = await queued_behind_one(store, gate, batches)
        gate.lose = True
        gate.open()
        await first
        for results, _ in await asyncio.gather(*tasks):
            assert all(isinstance(r, Rejected) and r.reason == RECEIPT_STORED for r in results)
        assert gate.lost == 1
        names = [receipt_id(m) for m in await read_all(store, A)]
        assert names == ["01CHAT1", "01CHAT2", "01CHAT3"]

    async def test_a_relay_that_died_before_the_entry_leaves_one_receipt(
        self, js_store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Chat.delivered stores the receipt, then its unread entry; the relay dies
        # between the two, and the reader's next hello acknowledges the chat again.
        store = js_store
        await add_devices(store, A, B)

        def now() -> float:
            return NOW / 1000

        chat = Chat(Ingest(store, LocalRouter(), now, Limits(), Metrics()), now)
        acked = [Delivered("01CHAT1", A, None, 1, again=True)]
        real_put = store.put_unread

        async def died(entries: Sequence[Unread]) -> None:
            raise StoreClosed("the relay died here")

        monkeypatch.setattr(store, "put_unread", died)
        with pytest.raises(StoreClosed):
            await chat.delivered(B, acked)
        monkeypatch.setattr(store, "put_unread", real_put)
        await chat.delivered(B, acked)
        assert [receipt_id(m) for m in await read_all(store, A)] == ["01CHAT1"]
        assert [u.id for u in await store.find_unread(B, ["01CHAT1"], NOW)] == ["01CHAT1"]


def receipt_id(m: NewMessage) -> str:
    chat_id = msgspec.json.decode(m.data)["id"]
    assert isinstance(chat_id, str)
    return chat_id


class TestLeaderLoss:
    async def test_concurrent_appends_across_a_leader_kill_are_stored_once(
        self, tmp_path: Path
    ) -> None:
        with running_cluster(tmp_path / "nats") as own_cluster:
            await self.appends_across_a_leader_kill(own_cluster, tmp_path)

    async def appends_across_a_leader_kill(self, own_cluster: NatsCluster, tmp_path: Path) -> None:
        names = jetstream_names(tmp_path)
        store = JetStreamStore(own_cluster.urls, retry_for=1.0, idem_lease_s=1.0, **names)
        await store.open()
        pins = [f"{n:08X}" for n in range(0xC0, 0xC4)]
        acked: dict[str, int] = {}
        sent = 0
        try:
            await add_devices(store, *pins)
            leader = await stream_leader(own_cluster.urls, names["stream"])
            killed = asyncio.Event()

            async def caller(c: int) -> None:
                nonlocal sent
                for k in range(40):
                    if c == 0 and k == 10:
                        own_cluster.node(leader).kill()
                        killed.set()
                    batch = [msg(pins[(c + k) % 4], c * 100 + k)]
                    idem = IdempotencyKey(f"kill-{c}-{k}", "fp", NOW)
                    while True:
                        try:
                            results, _ = await store.append(batch, idem)
                            break
                        except StoreClosed:
                            await asyncio.sleep(0.1)
                    acked.update(accepted(results))
                    sent += 1

            await asyncio.wait_for(asyncio.gather(*(caller(c) for c in range(12))), 90)
            assert killed.is_set()
            group = group_of(store)
            print(
                f"grouped {group.grouped} appends in {group.batches} batches, "
                f"{group.fallbacks} redone alone"
            )
            assert group.grouped > 0
            assert await stream_leader(own_cluster.urls, names["stream"]) != leader
            stored = await stored_ids(store, *pins)
            assert len(stored) == sent == 12 * 40
            assert stored == acked
        finally:
            with contextlib.suppress(Exception):
                await store.close()
