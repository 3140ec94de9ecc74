"""JetStream engine specifics, on real nats-server processes (see conftest.nats_cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StorageType, StreamConfig
from nats.js.manager import JetStreamManager

from pinrelay.core.model import Accepted, NewMessage
from pinrelay.store.base import AppendResult, IdempotencyKey, Rejected, StoreClosed
from pinrelay.store.jetstream import JetStreamStore, ttl_seconds
from pinrelay.store.jetstream.appends import AUX, Outgoing, atomic_chunks
from pinrelay.testing.wait import wait_until_async
from tests.natsproc import NatsCluster

from .conftest import destroy_unopened, jetstream_names
from .test_contract import NOW, A, B, add_devices, append_ok, data_n, msg, read_all

OpenStore = Callable[..., Awaitable[JetStreamStore]]


@pytest.fixture
async def open_store(nats_cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Open JetStream stores on the session cluster, in this test's own namespace."""
    opened: list[JetStreamStore] = []

    async def _open(**options: Any) -> JetStreamStore:
        s = JetStreamStore(nats_cluster.urls, **jetstream_names(tmp_path), **options)
        opened.append(s)
        await s.open()
        return s

    try:
        yield _open
    finally:
        for s in opened:
            await s.close()
        # With the layout the test's first store made (a partition count is fixed).
        partitions = opened[0].partitions if opened else 1
        await destroy_unopened(
            JetStreamStore(nats_cluster.urls, partitions=partitions, **jetstream_names(tmp_path))
        )


async def subject_counts(servers: list[str], stream: str, subjects: str) -> dict[str, int]:
    nc = await nats.connect(servers)
    try:
        body = json.dumps({"subjects_filter": subjects}).encode()
        resp = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", body, 5)).data)
        counts: dict[str, int] = resp["state"].get("subjects") or {}
        return counts
    finally:
        await nc.close()


class TestReadYourWrite:
    @pytest.mark.parametrize("direct_reads", [False, True], ids=["leader", "direct"])
    async def test_read_right_after_append_sees_it(
        self, open_store: OpenStore, direct_reads: bool
    ) -> None:
        store = await open_store(direct_reads=direct_reads)
        await add_devices(store, A)
        after = 0
        for i in range(200):
            results, _ = await store.append([msg(A, i)])
            (r,) = results
            assert isinstance(r, Accepted)
            page = await store.read(A, after, 10, NOW)
            assert [m.cursor for m in page] == [r.cursor], f"append {i} not read back"
            after = r.cursor
        assert await store.backlog(A, NOW) == 200
        print(f"direct_reads={direct_reads}: {store.direct_fallbacks} reads went to the leader")

    async def test_a_lagging_followers_batch_never_brings_back_a_replaced_message(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A follower that has not applied a topic's rollup still holds the message it
        replaced: its answer (taken before the rollup, as such a follower gives it)
        is not used; the leader reads the range (a failure under two test workers)."""
        store = await open_store(direct_reads=True)
        await add_devices(store, A)
        await store.append([msg(A, 1, topic="score")])
        reader = store.reader
        stream, subject = store.layout.stream_of(A), store.layout.filter(A)
        stale = await reader._direct_batch(stream, subject, 1, 10)  # the follower's view
        assert [seq for seq, _ in stale[0]] == [1] and stale[1]
        await store.append([msg(A, 2, topic="score")])  # replaces the first
        real = reader._direct_batch

        async def lagging(*args: Any) -> tuple[list[tuple[int, Any]], bool]:
            return stale if args[2] == 1 else await real(*args)

        monkeypatch.setattr(reader, "_direct_batch", lagging)
        fallbacks = reader.direct_fallbacks
        assert [data_n(m) for m in await store.read(A, 0, 10, NOW)] == [2]
        assert reader.direct_fallbacks == fallbacks + 1

    async def test_direct_reads_pass_a_backlog_page_by_page(self, open_store: OpenStore) -> None:
        store = await open_store(direct_reads=True)
        await add_devices(store, A)
        batch = [msg(A, i) for i in range(1001)]  # more than one atomic batch
        results, _ = await store.append(batch)
        cursors = [r.cursor for r in results if isinstance(r, Accepted)]
        assert len(cursors) == 1001
        seen: list[int] = []
        after = 0
        while page := await store.read(A, after, 128, NOW):
            seen += [m.cursor for m in page]
            after = page[-1].cursor
        assert seen == cursors


class TestLastCursor:
    async def test_no_record_write_per_message_yet_last_cursor_is_exact(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        await add_devices(store, A)
        got = await store.devices.get_fresh(A)
        assert got is not None
        results, _ = await store.append([msg(A, 1), msg(A, 2)])
        after = await store.devices.get_fresh(A)
        assert after is not None
        assert after.revision == got.revision  # the append wrote no device record
        top = max(r.cursor for r in results if isinstance(r, Accepted))
        assert await store.last_cursor(A) == top
        # Once every message is acked and purged, the record keeps the figure.
        await store.ack(A, top)
        assert await read_all(store, A) == []
        assert await store.last_cursor(A) == top
        dev = await store.get_device(A)
        assert dev is not None
        assert (dev.last_cursor, dev.acked_cursor) == (top, top)


class TestCachesAcrossRelays:
    async def test_a_device_deleted_through_one_store_is_gone_from_anothers_cache(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A)
        assert await other.get_device(A) is not None  # now cached there
        assert await one.delete_device(A)

        async def gone() -> bool:
            return await other.get_device(A) is None

        await wait_until_async(gone, 10, message="the deletion to reach the other cache")

    async def test_a_token_changed_through_one_store_reaches_anothers_cache(
        self, open_store: OpenStore
    ) -> None:
        one, other = await open_store(), await open_store()
        await add_devices(one, A)
        assert await other.get_device(A) is not None
        assert await one.set_token(A, "rotated")

        async def rotated() -> bool:
            dev = await other.get_device(A)
            return dev is not None and dev.token_hash == "rotated"

        await wait_until_async(rotated, 10, message="the new token to reach the other cache")


class TestHeldAcks:
    """A link's acks (ack_many): read at once, written later, messages left to their TTL."""

    async def test_a_followed_devices_ack_is_held_then_written_and_purges_nothing(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        store.acker.flush_s = 0.3
        await add_devices(store, A)
        store.feed.follow(A)  # a link here: its acks are held
        c = [r.cursor for r in await append_ok(store, msg(A, 1), msg(A, 2), msg(A, 3))]
        await store.ack_many([(A, c[1])])
        assert [m.cursor for m in await read_all(store, A)] == [c[2]]  # seen at once
        assert await store.backlog(A, NOW) == 1
        written = await store.devices.get_fresh(A)
        assert written is not None and written.rec.acked_cursor == 0  # not yet

        async def stored_ack() -> int:
            got = await store.devices.get_fresh(A)
            return got.rec.acked_cursor if got else -1

        await wait_until_async(lambda: stored_ack(), 10, message="the held ack to be written")
        assert await stored_ack() == c[1]
        # Nothing was purged: the acked messages wait for their TTL, unreadable.
        counts = await subject_counts(store.servers, store.stream, f"{store.prefix}.>")
        assert sum(counts.values()) == 3
        assert [m.cursor for m in await read_all(store, A)] == [c[2]]

    async def test_a_device_no_longer_followed_is_written_at_once(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store()
        store.acker.flush_s = 3600.0  # "later" is never, within this test
        await add_devices(store, A)
        store.feed.follow(A)
        (r,) = await append_ok(store, msg(A, 1))
        await store.ack_many([(A, r.cursor)])
        store.feed.unfollow(A)  # the link closed

        async def written() -> bool:
            got = await store.devices.get_fresh(A)
            return got is not None and got.rec.acked_cursor == r.cursor

        await wait_until_async(written, 10, message="the ack to be written on unfollow")

    async def test_purge_acked_purges_when_the_ack_is_written(self, open_store: OpenStore) -> None:
        store = await open_store(purge_acked=True)
        await add_devices(store, A)
        c = [r.cursor for r in await append_ok(store, msg(A, 1), msg(A, 2))]
        await store.ack_many([(A, c[0])])  # not followed: written at once

        async def purged() -> bool:
            counts = await subject_counts(store.servers, store.stream, f"{store.prefix}.>")
            return sum(counts.values()) == 1

        await wait_until_async(purged, 10, message="the acked message to be purged")
        assert [m.cursor for m in await read_all(store, A)] == [c[1]]


def fail_after_publish(store: JetStreamStore, monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    """The next appends are stored, then fail (as if the publish's answer were lost)."""
    original = store.appender.append

    async def fails(
        messages: Sequence[NewMessage | Rejected], nonce: str, tenant: str | None = None
    ) -> list[AppendResult]:
        await original(messages, nonce, tenant)
        raise StoreClosed(why)

    monkeypatch.setattr(store.appender, "append", fails)


def drop_answer(store: JetStreamStore, monkeypatch: pytest.MonkeyPatch, subject: str) -> list[str]:
    """The next publish to ``subject`` is stored and its answer lost (a timeout, as a
    lost acknowledgement is): the list gets ``subject`` when it happens; clear it to
    lose the next one's too."""
    publish = store.api.publish
    lost: list[str] = []

    async def answer_lost(to: str, payload: bytes, headers: dict[str, str]) -> Any:
        answer = await publish(to, payload, headers)
        if to == subject and not lost:  # stored; its answer never arrives
            lost.append(to)
            raise nats.errors.TimeoutError
        return answer

    monkeypatch.setattr(store.api, "publish", answer_lost)
    return lost


class TestIdempotentRetry:
    @pytest.mark.parametrize("size", [1, 3], ids=["single", "atomic-batch"])
    async def test_retry_after_a_failure_past_the_publish_stores_nothing_twice(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, size: int
    ) -> None:
        # The publish was stored, then the relay failed (as if its ack were lost).
        store = await open_store()
        await add_devices(store, A)
        idem = IdempotencyKey("retry-1", "fp", NOW)
        batch = [msg(A, i) for i in range(size)]

        fail_after_publish(store, monkeypatch, "cluster went away")
        with pytest.raises(StoreClosed):
            await store.append(batch, idem)
        monkeypatch.undo()
        results, replay = await store.append(batch, idem)
        assert replay is False  # the first attempt never finished: this one did
        stored = await read_all(store, A)
        assert [m.id for m in stored] == [m.id for m in batch]
        assert [m.cursor for m in stored] == [r.cursor for r in results if isinstance(r, Accepted)]
        again, replay = await store.append(batch, idem)
        assert (again, replay) == (results, True)

    @pytest.mark.parametrize("size", [1, 3], ids=["single", "atomic-batch"])
    async def test_takeover_answers_with_the_first_attempts_ids_even_once_acked(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, size: int
    ) -> None:
        # The relay answering the first attempt died after the publish; the device
        # received and acked the messages; the client's retry (through another relay,
        # so with fresh ids) must be answered with the ids the device got.
        store = await open_store()
        await add_devices(store, A)
        idem = IdempotencyKey("retry-2", "fp", NOW)
        first = [msg(A, i) for i in range(size)]

        fail_after_publish(store, monkeypatch, "relay died")
        with pytest.raises(StoreClosed):
            await store.append(first, idem)
        monkeypatch.undo()
        delivered = await read_all(store, A)
        assert [m.id for m in delivered] == [m.id for m in first]
        await store.ack(A, delivered[-1].cursor)
        retry = [msg(A, i) for i in range(size)]  # same request, ids chosen anew
        results, replay = await store.append(retry, idem)
        assert replay is False
        assert [(r.id, r.cursor) for r in results if isinstance(r, Accepted)] == [
            (m.id, m.cursor) for m in delivered
        ]
        assert await read_all(store, A) == []  # nothing stored twice

    async def test_a_key_neither_created_nor_readable_is_503_not_a_spin(
        self, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A create refused while the key reads as absent (a write the cluster cannot
        commit, DECISIONS 62): retried with a growing pause for the lease, then
        StoreClosed; nothing published."""
        store = await open_store(idem_lease_s=1.0)
        await add_devices(store, A)
        creates: list[float] = []

        async def refused(*_: object) -> bool:
            creates.append(time.monotonic())
            return False

        monkeypatch.setattr(store.leases.kv, "create", refused)
        with pytest.raises(StoreClosed, match="neither created nor readable"):
            await store.append([msg(A, 1)], IdempotencyKey("absent-1", "fp", NOW))
        assert creates[-1] - creates[0] >= max(store.leases.lease_s, 1.0)
        assert len(creates) < 100, len(creates)  # a pause that grows, not every 10 ms
        monkeypatch.undo()
        assert await read_all(store, A) == []


def lose_consumer_creates(monkeypatch: pytest.MonkeyPatch, stream: str, times: int) -> list[str]:
    """The next ``times`` creates of a push consumer (a watch's, the feed's) on
    ``stream`` are made and their answers lost (a timeout, as on a cluster too busy to
    answer in time); the list gets the stream's name at each, lost or not."""
    add_consumer = JetStreamManager.add_consumer
    creates: list[str] = []

    async def answer_lost(self: JetStreamManager, name: str, *args: Any, **kw: Any) -> Any:
        info = await add_consumer(self, name, *args, **kw)
        config = kw.get("config") or (args[0] if args else None)
        if name == stream and config is not None and config.deliver_subject:
            creates.append(name)
            if len(creates) <= times:
                raise nats.errors.TimeoutError
        return info

    monkeypatch.setattr(JetStreamManager, "add_consumer", answer_lost)
    return creates


async def push_consumers(servers: list[str], stream: str) -> int:
    """How many push consumers ``stream`` has (relays' feeds and watches)."""
    nc = await nats.connect(servers)
    try:
        found = await nc.jetstream().consumers_info(stream)
        return sum(1 for c in found if c.config.deliver_subject)
    finally:
        await nc.close()


class TestHeaders:
    async def test_topic_rollup_touches_only_its_subject(self, open_store: OpenStore) -> None:
        store = await open_store()
        await add_devices(store, A, B)
        await store.append(
            [
                msg(A, 1),
                msg(A, 2, topic="score"),
                msg(A, 3, topic="weather"),
                msg(B, 4, topic="score"),
            ]
        )
        await store.append([msg(A, 5, topic="score")])
        p = store.prefix
        counts = await subject_counts(store.servers, store.stream, f"{p}.>")
        assert counts == {
            f"{p}.{A}.m": 1,
            f"{p}.{A}.t.score": 1,
            f"{p}.{A}.t.weather": 1,
            f"{p}.{B}.t.score": 1,
        }
        assert [data_n(m) for m in await read_all(store, A)] == [1, 3, 5]
        assert [data_n(m) for m in await read_all(store, B)] == [4]

    async def test_no_caller_header_ever_reaches_a_publish(self, open_store: OpenStore) -> None:
        store = await open_store()
        await add_devices(store, A, B)
        await store.append([msg(B, 0)])
        nc, _ = store.connection
        sent: list[tuple[str, dict[str, str]]] = []
        real_request, real_publish = nc.request, nc.publish

        async def request(subject: str, payload: bytes = b"", *args: Any, **kw: Any) -> Any:
            sent.append((subject, dict(kw.get("headers") or {})))
            return await real_request(subject, payload, *args, **kw)

        async def publish(subject: str, payload: bytes = b"", *args: Any, **kw: Any) -> None:
            sent.append((subject, dict(kw.get("headers") or {})))
            await real_publish(subject, payload, *args, **kw)

        nc.request = request  # type: ignore[method-assign]
        nc.publish = publish  # type: ignore[method-assign]
        hostile = b'{"Nats-Rollup":"all"}'
        evil_topic = NewMessage(A, "01EVIL", hostile, "x\r\nNats-Rollup: all", "high", NOW, NOW + 1)
        results, _ = await store.append(
            [
                msg(A, 1, topic="t", sender="Nats-Rollup: all"),
                msg(A, 2, kind="Nats-Rollup: all"),
                evil_topic,
                msg(A, 3, topic="t"),
            ]
        )
        assert isinstance(results[2], Rejected)
        allowed = {
            "Nats-Msg-Id",
            "Nats-TTL",
            "Nats-Rollup",
            "Nats-Batch-Id",
            "Nats-Batch-Sequence",
            "Nats-Batch-Commit",
            "Nats-Expected-Last-Subject-Sequence",
        }
        published = [(s, h) for s, h in sent if s.startswith(f"{store.prefix}.")]
        assert published
        for subject, headers in published:
            assert set(headers) <= allowed, headers
            if "Nats-Rollup" in headers:
                assert headers["Nats-Rollup"] == "sub"
                assert ".t." in subject
        # B's message is still there: nothing rolled up the stream.
        assert [data_n(m) for m in await read_all(store, B)] == [0]

    def test_ttl_is_whole_seconds_at_least_one(self) -> None:
        def life(ms: int) -> NewMessage:
            return NewMessage(A, "x", b"", None, "normal", NOW, NOW + ms)

        assert ttl_seconds(life(0), 0) == 1
        assert ttl_seconds(life(1), 0) == 1
        assert ttl_seconds(life(1000), 0) == 1
        assert ttl_seconds(life(1001), 0) == 2
        assert ttl_seconds(life(1001), 2) == 4

    def test_atomic_chunks_split_repeated_topics(self) -> None:
        def item(i: int, subject: str, rollup: bool) -> Outgoing:
            return Outgoing(i, subject, b"", {"Nats-Rollup": "sub"} if rollup else {})

        items = [
            item(0, "d.A.t.x", True),
            item(1, "d.A.m", False),
            item(2, "d.B.t.x", True),
            item(3, "d.A.t.x", True),
            item(4, "d.A.m", False),
        ]
        chunks = atomic_chunks(items)
        got = [(start, [i.position for i in c]) for start, c in chunks]
        assert got == [(0, [0, 1, 2]), (3, [3, 4])]
        many = [item(i, "d.A.m", False) for i in range(2500)]
        assert [len(c) for _, c in atomic_chunks(many)] == [1000, 1000, 500]

    def test_atomic_chunks_keep_a_chats_schedule_with_it(self) -> None:
        # A push, then chats each followed by its expiry schedule (.expiry): the
        # 1,000th item would be a schedule, so its chat moves to the next batch too.
        items = [Outgoing(0, "d.A.m", b"", {})]
        for i in range(1, 1001):
            items += [Outgoing(i, "d.A.m", b"", {}), Outgoing(AUX, f"d-expiry.s.A.{i}", b"", {})]
        chunks = atomic_chunks(items)
        assert [len(c) for _, c in chunks] == [999, 1000, 2]
        for _, chunk in chunks:
            assert chunk[0].position != AUX


class TestOpen:
    async def test_open_adopts_an_existing_stream(
        self, open_store: OpenStore, nats_cluster: NatsCluster, tmp_path: Path
    ) -> None:
        names = jetstream_names(tmp_path)
        nc = await nats.connect(nats_cluster.urls)
        try:
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(
                    name=names["stream"],
                    subjects=[f"{names['subject_prefix']}.>"],
                    storage=StorageType.FILE,
                    num_replicas=3,
                )
            )
        finally:
            await nc.close()
        store = await open_store()
        await add_devices(store, A)
        await store.append([msg(A, 1, topic="t"), msg(A, 2, topic="t")])
        assert [data_n(m) for m in await read_all(store, A)] == [2]
        # Opening again is harmless.
        again = await open_store()
        assert [data_n(m) for m in await read_all(again, A)] == [2]

    async def test_an_older_relays_stream_gets_chat_expiry(
        self, open_store: OpenStore, nats_cluster: NatsCluster, tmp_path: Path
    ) -> None:
        """The stream as the version before chat expiry made it, with a message in it:
        opened, it takes schedules, and a chat expiring on it is reported."""
        names = jetstream_names(tmp_path)
        prefix = names["subject_prefix"]
        nc = await nats.connect(nats_cluster.urls)
        try:
            js = nc.jetstream()
            old = StreamConfig(
                name=names["stream"],
                subjects=[f"{prefix}.>"],
                storage=StorageType.FILE,
                num_replicas=3,
                allow_rollup_hdrs=True,
                allow_msg_ttl=True,
                allow_direct=True,
                allow_atomic=True,
                duplicate_window=120.0,
                metadata={"pinrelay.partitions": "1"},
            )

            async def added() -> bool:
                try:  # a busy cluster may fail to create it (10049): as a relay would, again
                    await js.add_stream(old)
                except nats.js.errors.ServerError as exc:
                    if exc.err_code != 10049:
                        raise
                    return False
                return True

            await wait_until_async(added, 20, 0.5, "the older relay's stream created")

            async def published() -> bool:
                try:  # a new R3 stream may not have its leader yet: no responders
                    headers = {"Nats-TTL": "60", "Nats-Msg-Id": "old-1"}  # a retry: once
                    await js.publish(f"{prefix}.{A}.m", b"not ours", headers=headers)
                except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                    return False
                return True

            await wait_until_async(published, 10, 0.1, "the new stream accepting a publish")
            store = await open_store()
            config = (await js.stream_info(names["stream"])).config
            assert config.subjects == [f"{prefix}.>", f"{prefix}-expiry.>"]
            assert config.allow_msg_schedules
        finally:
            await nc.close()
        await add_devices(store, A, B)
        chat = msg(B, 1, kind="chat", sender=A, ttl_ms=10)  # expired long ago: fires now
        await store.append([chat])
        expired = await store.expired_chats(NOW + 1000, 10)
        assert [(m.id, m.pin, m.sender) for m in expired] == [(chat.id, B, A)]
        await store.forget([(m.pin, m.cursor) for m in expired])

    async def test_a_chat_expiring_during_a_long_poll_is_reported_without_delay(
        self, open_store: OpenStore
    ) -> None:
        """Two relays long-poll for expired chats (as relays do, 30 s there): a chat
        that expires while a poll waits is reported within a couple of seconds of its
        expiry, not put back for the rest of the wait (the poll's clock was read before)."""
        relays = [await open_store(expiry_wait_s=10.0) for _ in range(2)]
        await add_devices(relays[0], A, B)
        now = int(time.time() * 1000)
        chat = msg(B, 1, kind="chat", sender=A, ttl_ms=4000, sent_ms=now)
        (accepted,) = await append_ok(relays[0], chat)
        got: list[tuple[int, str]] = []

        async def poll(store: JetStreamStore) -> None:
            while not got:
                for m in await store.expired_chats(int(time.time() * 1000), 10):
                    got.append((int(time.time() * 1000), m.id))
                    await store.forget([(m.pin, m.cursor)])

        polls = [asyncio.create_task(poll(s)) for s in relays]
        try:
            await asyncio.wait_for(asyncio.wait(polls), timeout=20)
        finally:
            for p in polls:
                p.cancel()
        (at_ms, chat_id) = got[0]
        assert chat_id == chat.id
        # The schedule fires on whole seconds: allow that and the poll's turnaround.
        assert at_ms - accepted.expires_at_ms < 3000, (at_ms, accepted.expires_at_ms)

    async def test_a_lost_consumer_create_answer_is_tried_again(
        self,
        open_store: OpenStore,
        nats_cluster: NatsCluster,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The CI run of 973ddae: a watch's consumer create timed out on a busy cluster
        # and the store's open failed.  Now the follow step starts over.  Lost here:
        # the feed's consumer of the second partition, after every watch and the
        # first partition's consumer were made (all stopped, then made again).
        second = f"{jetstream_names(tmp_path)['stream']}_1"
        other = await open_store(partitions=3)
        e = "0E0E0E0E"  # in the third partition (A is in the first)
        await add_devices(other, A, B, e)
        await append_ok(other, msg(e, 1), msg(e, 2))  # so the partitions' heads differ
        creates = lose_consumer_creates(monkeypatch, second, times=1)
        one = await open_store(partitions=3)
        assert creates == [second, second]  # lost, then made again
        assert await one.get_device(B) is not None  # cached in one
        assert await other.delete_device(B)

        async def gone() -> bool:  # one's watches follow
            return await one.get_device(B) is None

        await wait_until_async(gone, 10, message="the deletion to reach the retried store")
        # One's feed follows each partition from its own head once: not behind later.
        t0 = int(time.time() * 1000)
        await one.feed.check(t0)
        await one.feed.check(t0 + 5_000)
        assert one.feed.lag_ms(t0 + 5_000) == 0
        one.feed.follow(A)
        one.feed.follow(e)
        [to_a, to_e] = await append_ok(other, msg(A, 1), msg(e, 3))
        await wait_until_async(
            lambda: (one.feed.known(A), one.feed.known(e)) == (to_a.cursor, to_e.cursor), 10, 0.02
        )

        # The consumer whose answer was lost has no subscriber: the server drops it,
        # leaving one per store.
        async def orphan_gone() -> bool:
            return await push_consumers(nats_cluster.urls, second) == 2

        await wait_until_async(orphan_gone, 30, message="the orphan consumer to go")

    async def test_a_consumer_never_created_is_store_closed_and_disconnected(
        self,
        open_store: OpenStore,
        nats_cluster: NatsCluster,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        contacts = f"KV_{jetstream_names(tmp_path)['bucket_prefix']}_contacts"
        creates = lose_consumer_creates(monkeypatch, contacts, times=1000)
        store = JetStreamStore(nats_cluster.urls, connect_timeout=1.0, **jetstream_names(tmp_path))
        with pytest.raises(StoreClosed, match="cannot follow the streams and buckets"):
            await store.open()
        assert len(creates) >= 2  # tried again until the deadline
        assert not store.healthy()
        # (open_store: its namespace, made by this open, is deleted at the end.)

    async def test_unreachable_cluster_is_store_closed(self) -> None:
        store = JetStreamStore("nats://127.0.0.1:1", connect_timeout=1.0)
        with pytest.raises(StoreClosed):
            await store.open()


class TestPartitions:
    async def test_devices_spread_over_the_streams_and_a_batch_reaches_all(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store(partitions=3)
        pins = [f"{n:08X}" for n in range(0xA0, 0xA0 + 30)]
        await add_devices(store, *pins)
        # One batch for every device, twice each, one of them with a topic.
        batch = [msg(pin, n, topic="t" if n else None) for n in range(2) for pin in pins]
        await append_ok(store, *batch)
        for pin in pins:
            assert [data_n(m) for m in await read_all(store, pin)] == [0, 1]
        counts = {
            name: sum((await subject_counts(store.servers, name, ">")).values())
            for name in store.streams
        }
        assert set(counts) == {f"{store.stream}_{p}" for p in range(3)}
        assert all(c > 0 for c in counts.values()), counts
        assert sum(counts.values()) == 60
        assert (await store.stats()).messages == 60
        # Cursors are per stream, so only the device's own order holds.
        first = pins[0]
        got = await read_all(store, first)
        await store.ack(first, got[0].cursor)
        assert [data_n(m) for m in await read_all(store, first)] == [1]

    async def test_another_partition_count_on_the_same_subjects_is_refused(
        self, open_store: OpenStore
    ) -> None:
        store = await open_store(partitions=3)
        await add_devices(store, A)
        await append_ok(store, msg(A, 1))
        for other in (1, 2, 4):
            with pytest.raises(StoreClosed, match="migration"):
                await open_store(partitions=other)
        assert [data_n(m) for m in await read_all(store, A)] == [1]  # nothing changed

    def test_partitions_are_bounded(self) -> None:
        for bad in (0, 65):
            with pytest.raises(ValueError, match="partitions"):
                JetStreamStore("nats://127.0.0.1:1", partitions=bad)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Any:
    """A cluster of its own, for a test that kills nodes."""
    cluster = NatsCluster(tmp_path / "nats")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def stream_leader(servers: list[str], stream: str) -> str:
    nc = await nats.connect(servers)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None
        return str(info.cluster.leader or "")
    finally:
        await nc.close()


class TestLeaderLoss:
    async def test_sigkill_of_the_stream_leader_loses_no_acknowledged_append(
        self, own_cluster: NatsCluster, tmp_path: Path
    ) -> None:
        names = jetstream_names(tmp_path)
        store = JetStreamStore(own_cluster.urls, retry_for=1.0, idem_lease_s=1.0, **names)
        await store.open()
        try:
            await add_devices(store, A, B)
            acked: dict[str, int] = {}  # message id -> cursor
            retried = 0
            killed_at: float | None = None
            after_kill = 0
            i = 0
            leader = await stream_leader(own_cluster.urls, names["stream"])
            deadline = time.monotonic() + 60
            while after_kill < 30 and time.monotonic() < deadline:
                if i == 40:
                    own_cluster.node(leader).kill()
                    killed_at = time.monotonic()
                batch = [msg(A, i), msg(B, i)]
                idem = IdempotencyKey(f"kill-{i}", "fp", NOW)
                while True:
                    try:
                        results, _ = await store.append(batch, idem)
                        break
                    except StoreClosed:
                        retried += 1
                        await asyncio.sleep(0.1)  # retry interval while the stream elects
                for r in results:
                    assert isinstance(r, Accepted)
                    acked[r.id] = r.cursor
                if killed_at is not None:
                    after_kill += 1
                i += 1
            assert after_kill == 30, "appends did not resume after the leader was killed"
            print(f"killed {leader}: {retried} appends raised StoreClosed and were retried")
            new_leader = await stream_leader(own_cluster.urls, names["stream"])
            assert new_leader
            assert new_leader != leader
            stored = {m.id: m.cursor for pin in (A, B) for m in await read_all(store, pin)}
            assert stored == acked  # every acknowledged append, each exactly once
            counts = {pin: len(await read_all(store, pin)) for pin in (A, B)}
            assert counts == {A: i, B: i}
        finally:
            with contextlib.suppress(Exception):
                await store.close()
