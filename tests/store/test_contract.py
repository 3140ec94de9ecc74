"""The Store contract: every engine must pass this suite (see conftest.store).

Cursors: a message's cursor is positive and strictly greater than every cursor its
device was given before (across batches, relays and restarts).  Cursors are not
dense and not counted per device: the JetStream engine uses the stream sequence,
so another device's message leaves a gap.  The SQLite engine's per-device 1, 2, 3...
is its own guarantee (tests/store/test_sqlite.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Accepted, ApiKey, NewMessage, Scope, StoredMessage
from pinrelay.store.base import IdempotencyKey, Rejected, Store, StoreClosed, StoreStats

from .conftest import Reopen

NOW = 1_700_000_000_000
HOUR = 3_600_000
A, B, C = "0A0A0A0A", "0B0B0B0B", "0C0C0C0C"
UNKNOWN = "DEADBEEF"

_ids = iter(range(1, 10**9))


def msg(
    pin: str,
    n: int,
    *,
    topic: str | None = None,
    ttl_ms: int = HOUR,
    sent_ms: int = NOW,
    urgency: str = "normal",
    kind: str = "push",
    sender: str | None = None,
) -> NewMessage:
    return NewMessage(
        pin=pin,
        id=f"01TEST{next(_ids):020d}",
        data=json.dumps({"n": n}, separators=(",", ":")).encode(),
        topic=topic,
        urgency=urgency,
        sent_at_ms=sent_ms,
        expires_at_ms=sent_ms + ttl_ms,
        kind=kind,
        sender=sender,
    )


def data_n(m: StoredMessage) -> int:
    n = json.loads(m.data)["n"]
    assert isinstance(n, int)
    return n


async def last_cursor(store: Store, pin: str) -> int:
    """The device's last cursor; the cheap one on its record is never above it, nor it
    above the limit a client may name."""
    exact = await store.last_cursor(pin)
    dev = await store.get_device(pin)
    assert dev is None or dev.last_cursor <= exact
    assert exact <= await store.cursor_limit(pin)
    return exact


async def add_devices(store: Store, *pins: str) -> None:
    for pin in pins:
        assert await store.create_device(pin, f"hash-{pin}", None, NOW) is not None


async def append_ok(store: Store, *messages: NewMessage) -> list[Accepted]:
    results, replay = await store.append(list(messages))
    assert replay is False
    accepted = [r for r in results if isinstance(r, Accepted)]
    assert len(accepted) == len(messages), results
    return accepted


def increasing(cursors: list[int]) -> bool:
    """Positive and strictly increasing."""
    return all(c > 0 for c in cursors) and all(a < b for a, b in itertools.pairwise(cursors))


def per_pin(results: list[Accepted]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in results:
        out.setdefault(r.pin, []).append(r.cursor)
    return out


async def read_all(store: Store, pin: str, now_ms: int = NOW) -> list[StoredMessage]:
    return await store.read(pin, 0, 10_000, now_ms)


def key(key_id: str, *, scope: Scope = Scope.PUSH, created_ms: int = NOW) -> ApiKey:
    return ApiKey(
        id=key_id,
        name=f"name-{key_id}",
        scope=scope,
        key_hash=f"hash-{key_id}",
        created_ms=created_ms,
        revoked=False,
    )


# --- devices -------------------------------------------------------------------


class TestDevices:
    async def test_create_and_get(self, store: Store) -> None:
        dev = await store.create_device(A, "th", "kitchen", NOW)
        assert dev is not None
        assert (dev.pin, dev.token_hash, dev.label, dev.created_ms) == (A, "th", "kitchen", NOW)
        assert (dev.last_seen_ms, dev.last_cursor, dev.acked_cursor) == (None, 0, 0)
        assert await store.get_device(A) == dev

    async def test_label_may_be_none(self, store: Store) -> None:
        dev = await store.create_device(A, "th", None, NOW)
        assert dev is not None
        got = await store.get_device(A)
        assert got is not None
        assert got.label is None

    async def test_get_unknown(self, store: Store) -> None:
        assert await store.get_device(UNKNOWN) is None

    async def test_duplicate_pin_returns_none_and_keeps_first(self, store: Store) -> None:
        first = await store.create_device(A, "first", "one", NOW)
        assert await store.create_device(A, "second", "two", NOW + 1) is None
        assert await store.get_device(A) == first

    async def test_delete_device(self, store: Store) -> None:
        await add_devices(store, A)
        assert await store.delete_device(A) is True
        assert await store.get_device(A) is None
        assert await store.delete_device(A) is False
        assert await store.delete_device(UNKNOWN) is False

    async def test_delete_removes_its_messages_only(self, store: Store) -> None:
        await add_devices(store, A, B)
        await append_ok(store, msg(A, 1), msg(A, 2), msg(B, 3))
        assert await store.delete_device(A) is True
        assert await read_all(store, A) == []
        assert await store.backlog(A, NOW) == 0
        assert [data_n(m) for m in await read_all(store, B)] == [3]

    async def test_recreated_device_starts_fresh(self, store: Store) -> None:
        await add_devices(store, A)
        await append_ok(store, msg(A, 1), msg(A, 2))
        await store.delete_device(A)
        await add_devices(store, A)
        assert await read_all(store, A) == []
        assert await last_cursor(store, A) == 0

    async def test_set_token(self, store: Store) -> None:
        await add_devices(store, A)
        assert await store.set_token(A, "new-hash") is True
        dev = await store.get_device(A)
        assert dev is not None
        assert dev.token_hash == "new-hash"
        assert await store.set_token(UNKNOWN, "x") is False
        assert await store.get_device(UNKNOWN) is None

    async def test_touch_device(self, store: Store) -> None:
        await add_devices(store, A, B)
        await store.touch_device(A, NOW + 5)
        a, b = await store.get_device(A), await store.get_device(B)
        assert a is not None
        assert b is not None
        assert a.last_seen_ms == NOW + 5
        assert b.last_seen_ms is None
        await store.touch_device(A, NOW + 9)
        a = await store.get_device(A)
        assert a is not None
        assert a.last_seen_ms == NOW + 9

    async def test_touch_unknown_is_harmless(self, store: Store) -> None:
        await store.touch_device(UNKNOWN, NOW)
        assert await store.get_device(UNKNOWN) is None


# --- keys ----------------------------------------------------------------------


class TestKeys:
    async def test_create_and_find(self, store: Store) -> None:
        k = key("k1", scope=Scope.ADMIN)
        await store.create_key(k)
        assert await store.find_key("hash-k1") == k
        assert await store.find_key("hash-nope") is None

    async def test_every_scope_round_trips(self, store: Store) -> None:
        for i, scope in enumerate(Scope):
            await store.create_key(key(f"k{i}", scope=scope))
            found = await store.find_key(f"hash-k{i}")
            assert found is not None
            assert found.scope is scope

    async def test_list_keys(self, store: Store) -> None:
        assert await store.list_keys() == []
        keys = [key("k2", created_ms=NOW + 1), key("k1", created_ms=NOW), key("k3")]
        for k in keys:
            await store.create_key(k)
        listed = await store.list_keys()
        assert sorted(listed, key=lambda k: k.id) == sorted(keys, key=lambda k: k.id)
        # Oldest first.
        assert [k.created_ms for k in listed] == sorted(k.created_ms for k in listed)

    async def test_revoke(self, store: Store) -> None:
        await store.create_key(key("k1"))
        await store.create_key(key("k2"))
        assert await store.revoke_key("k1") is True
        k1 = await store.find_key("hash-k1")
        k2 = await store.find_key("hash-k2")
        assert k1 is not None
        assert k2 is not None
        assert k1.revoked is True
        assert k2.revoked is False
        assert {k.id: k.revoked for k in await store.list_keys()} == {"k1": True, "k2": False}

    async def test_revoke_twice_or_unknown_is_false(self, store: Store) -> None:
        await store.create_key(key("k1"))
        assert await store.revoke_key("k1") is True
        assert await store.revoke_key("k1") is False
        assert await store.revoke_key("nope") is False


# --- append ----------------------------------------------------------------------


class TestAppend:
    async def test_cursors_increase(self, store: Store) -> None:
        await add_devices(store, A)
        first = await append_ok(store, msg(A, 1), msg(A, 2), msg(A, 3))
        second = await append_ok(store, msg(A, 4))
        cursors = [r.cursor for r in first + second]
        assert increasing(cursors)
        assert await last_cursor(store, A) == cursors[-1]
        assert [m.cursor for m in await read_all(store, A)] == cursors

    async def test_cursors_increase_per_device(self, store: Store) -> None:
        await add_devices(store, A, B)
        results = await append_ok(store, msg(A, 1), msg(B, 2), msg(A, 3), msg(B, 4), msg(A, 5))
        assert [r.pin for r in results] == [A, B, A, B, A]
        cursors = per_pin(results)
        assert all(increasing(c) for c in cursors.values())
        for pin in (A, B):
            assert [m.cursor for m in await read_all(store, pin)] == cursors[pin]
            assert await last_cursor(store, pin) == cursors[pin][-1]

    async def test_accepted_echoes_message(self, store: Store) -> None:
        await add_devices(store, A)
        m = msg(A, 1, ttl_ms=123)
        (result,) = await append_ok(store, m)
        assert result.cursor >= 1
        assert result == Accepted(id=m.id, pin=A, cursor=result.cursor, expires_at_ms=NOW + 123)

    async def test_stored_message_keeps_every_field(self, store: Store) -> None:
        await add_devices(store, A)
        m = msg(A, 7, topic="t", urgency="high", kind="message", sender=B)
        (accepted,) = await append_ok(store, m)
        (stored,) = await read_all(store, A)
        assert stored == StoredMessage(
            pin=A,
            cursor=accepted.cursor,
            id=m.id,
            data=b'{"n":7}',
            topic="t",
            urgency="high",
            sent_at_ms=m.sent_at_ms,
            expires_at_ms=m.expires_at_ms,
            kind="message",
            sender=B,
        )
        assert isinstance(stored.data, bytes)

    async def test_unknown_pin_rejected_rest_stored(self, store: Store) -> None:
        await add_devices(store, A, B)
        results, replay = await store.append([msg(A, 1), msg(UNKNOWN, 2), msg(B, 3), msg(A, 4)])
        assert replay is False
        assert len(results) == 4
        rejected = results[1]
        assert isinstance(rejected, Rejected)
        assert rejected.pin == UNKNOWN
        assert rejected.reason
        accepted = [r for r in results if isinstance(r, Accepted)]
        assert [r.pin for r in accepted] == [A, B, A]
        assert increasing(per_pin(accepted)[A])
        assert [data_n(m) for m in await read_all(store, A)] == [1, 4]
        assert [data_n(m) for m in await read_all(store, B)] == [3]
        assert await read_all(store, UNKNOWN) == []
        assert await store.get_device(UNKNOWN) is None

    async def test_all_rejected(self, store: Store) -> None:
        results, replay = await store.append([msg(UNKNOWN, 1)])
        assert replay is False
        assert [type(r) for r in results] == [Rejected]

    async def test_empty_batch(self, store: Store) -> None:
        assert await store.append([]) == ([], False)

    async def test_results_in_order(self, store: Store) -> None:
        await add_devices(store, A, B)
        batch = [msg(A if i % 3 else B, i) for i in range(50)]
        results = await append_ok(store, *batch)
        assert [r.id for r in results] == [m.id for m in batch]
        assert [r.pin for r in results] == [m.pin for m in batch]


class TestTopics:
    async def test_topic_replaces_same_topic_same_device(self, store: Store) -> None:
        await add_devices(store, A)
        _, second = await append_ok(store, msg(A, 1, topic="score"), msg(A, 2))
        (new,) = await append_ok(store, msg(A, 3, topic="score"))
        assert new.cursor > second.cursor
        stored = await read_all(store, A)
        assert [(m.cursor, data_n(m)) for m in stored] == [(second.cursor, 2), (new.cursor, 3)]
        assert await store.backlog(A, NOW) == 2

    async def test_topic_leaves_other_topics_and_devices(self, store: Store) -> None:
        await add_devices(store, A, B)
        first = await append_ok(
            store,
            msg(A, 1, topic="score"),
            msg(A, 2, topic="weather"),
            msg(B, 3, topic="score"),
            msg(A, 4),
        )
        (last,) = await append_ok(store, msg(A, 5, topic="score"))
        assert [(m.cursor, data_n(m), m.topic) for m in await read_all(store, A)] == [
            (first[1].cursor, 2, "weather"),
            (first[3].cursor, 4, None),
            (last.cursor, 5, "score"),
        ]
        assert [(m.cursor, data_n(m)) for m in await read_all(store, B)] == [(first[2].cursor, 3)]

    async def test_replacement_within_one_batch(self, store: Store) -> None:
        await add_devices(store, A)
        results = await append_ok(
            store, msg(A, 1, topic="t"), msg(A, 2, topic="t"), msg(A, 3, topic="t")
        )
        assert increasing([r.cursor for r in results])
        assert [(m.cursor, data_n(m)) for m in await read_all(store, A)] == [(results[2].cursor, 3)]

    async def test_untopiced_messages_never_collapse(self, store: Store) -> None:
        await add_devices(store, A)
        await append_ok(store, msg(A, 1), msg(A, 2), msg(A, 3))
        assert len(await read_all(store, A)) == 3


# --- read / ack / expiry -----------------------------------------------------------


class TestRead:
    async def test_after_and_limit(self, store: Store) -> None:
        await add_devices(store, A)
        c = [r.cursor for r in await append_ok(store, *(msg(A, i) for i in range(1, 11)))]
        assert [m.cursor for m in await store.read(A, 0, 3, NOW)] == c[0:3]
        assert [m.cursor for m in await store.read(A, c[2], 3, NOW)] == c[3:6]
        assert [m.cursor for m in await store.read(A, c[7], 100, NOW)] == c[8:10]
        assert await store.read(A, c[9], 100, NOW) == []
        assert await store.read(A, 0, 0, NOW) == []
        assert [data_n(m) for m in await read_all(store, A)] == list(range(1, 11))

    async def test_read_pages_cover_everything_once(self, store: Store) -> None:
        await add_devices(store, A)
        c = [r.cursor for r in await append_ok(store, *(msg(A, i) for i in range(25)))]
        seen: list[int] = []
        after = 0
        while page := await store.read(A, after, 7, NOW):
            seen += [m.cursor for m in page]
            after = page[-1].cursor
        assert seen == c

    async def test_read_unknown_device(self, store: Store) -> None:
        assert await store.read(UNKNOWN, 0, 10, NOW) == []

    async def test_read_skips_expired(self, store: Store) -> None:
        await add_devices(store, A)
        await append_ok(store, msg(A, 1, ttl_ms=10), msg(A, 2, ttl_ms=1000), msg(A, 3, ttl_ms=20))
        assert [data_n(m) for m in await read_all(store, A, NOW + 9)] == [1, 2, 3]
        assert [data_n(m) for m in await read_all(store, A, NOW + 15)] == [2, 3]
        assert [data_n(m) for m in await read_all(store, A, NOW + 500)] == [2]
        assert await read_all(store, A, NOW + 5000) == []

    async def test_expires_exactly_at_expires_at(self, store: Store) -> None:
        await add_devices(store, A)
        await append_ok(store, msg(A, 1, ttl_ms=10))
        assert len(await read_all(store, A, NOW + 9)) == 1
        assert await read_all(store, A, NOW + 10) == []
        assert await store.backlog(A, NOW + 10) == 0

    async def test_limit_counts_only_unexpired(self, store: Store) -> None:
        await add_devices(store, A)
        c = await append_ok(store, msg(A, 1, ttl_ms=1), msg(A, 2, ttl_ms=1), msg(A, 3), msg(A, 4))
        assert [m.cursor for m in await store.read(A, 0, 2, NOW + 5)] == [c[2].cursor, c[3].cursor]


class TestForget:
    async def test_forget_deletes_and_says_how_many_were_there(self, store: Store) -> None:
        await add_devices(store, A)
        c = [r.cursor for r in await append_ok(store, *(msg(A, i) for i in range(1, 4)))]
        assert await store.forget([(A, c[0]), (A, c[2])]) == 2
        assert [m.cursor for m in await read_all(store, A)] == [c[1]]
        # Forgotten before: none of these is there (two DELETEs of one Web Push
        # message: the second is 404, whatever a lagging follower still shows).
        assert await store.forget([(A, c[0]), (A, c[2])]) == 0
        assert await store.forget([]) == 0
        assert await store.forget([(A, c[1]), (A, c[0])]) == 1
        assert await read_all(store, A) == []


class TestAck:
    async def test_ack_forgets_up_to_cursor(self, store: Store) -> None:
        await add_devices(store, A, B)
        *c, _ = await append_ok(store, *(msg(A, i) for i in range(1, 6)), msg(B, 100))
        await store.ack(A, c[2].cursor)
        assert [m.cursor for m in await read_all(store, A)] == [c[3].cursor, c[4].cursor]
        assert await store.backlog(A, NOW) == 2
        assert len(await read_all(store, B)) == 1
        dev = await store.get_device(A)
        assert dev is not None
        assert dev.acked_cursor == c[2].cursor
        assert await last_cursor(store, A) == c[4].cursor

    async def test_ack_never_moves_backwards(self, store: Store) -> None:
        await add_devices(store, A)
        c = [r.cursor for r in await append_ok(store, *(msg(A, i) for i in range(1, 6)))]
        await store.ack(A, c[3])
        await store.ack(A, c[1])
        dev = await store.get_device(A)
        assert dev is not None
        assert dev.acked_cursor == c[3]
        assert [m.cursor for m in await read_all(store, A)] == [c[4]]

    async def test_ack_then_append_continues_cursor(self, store: Store) -> None:
        await add_devices(store, A)
        _, second = await append_ok(store, msg(A, 1), msg(A, 2))
        await store.ack(A, second.cursor)
        (r,) = await append_ok(store, msg(A, 3))
        assert r.cursor > second.cursor
        assert [m.cursor for m in await read_all(store, A)] == [r.cursor]

    async def test_ack_unknown_device_is_harmless(self, store: Store) -> None:
        await store.ack(UNKNOWN, 5)
        assert await store.get_device(UNKNOWN) is None


class TestAckMany:
    async def test_acks_many_devices_at_once(self, store: Store) -> None:
        await add_devices(store, A, B, C)
        c = await append_ok(store, msg(A, 1), msg(A, 2), msg(B, 3), msg(B, 4), msg(C, 5))
        await store.ack_many([(A, c[0].cursor), (B, c[3].cursor), (UNKNOWN, 9)])
        assert [data_n(m) for m in await read_all(store, A)] == [2]
        assert await read_all(store, B) == []
        assert [data_n(m) for m in await read_all(store, C)] == [5]
        a, b = await store.get_device(A), await store.get_device(B)
        assert a is not None and b is not None
        assert (a.acked_cursor, b.acked_cursor) == (c[0].cursor, c[3].cursor)
        await store.ack_many([(A, 0)])  # never moves an acked cursor back
        a = await store.get_device(A)
        assert a is not None and a.acked_cursor == c[0].cursor


class TestBacklogAndSweep:
    async def test_backlog_counts_unexpired(self, store: Store) -> None:
        await add_devices(store, A, B)
        assert await store.backlog(A, NOW) == 0
        await append_ok(store, msg(A, 1, ttl_ms=10), msg(A, 2), msg(A, 3), msg(B, 4))
        assert await store.backlog(A, NOW) == 3
        assert await store.backlog(A, NOW + 10) == 2
        assert await store.backlog(B, NOW + 10) == 1
        assert await store.backlog(UNKNOWN, NOW) == 0

    async def test_sweep_deletes_expired(self, store: Store) -> None:
        await add_devices(store, A, B)
        await append_ok(
            store,
            msg(A, 1, ttl_ms=10),
            msg(A, 2),
            msg(B, 3, ttl_ms=5),
            msg(B, 4, ttl_ms=20),
        )
        assert await store.sweep(NOW) == 0
        assert await store.sweep(NOW + 10) == 2
        assert await store.sweep(NOW + 10) == 0
        # Swept messages are gone even for a reader asking about the past.
        assert [data_n(m) for m in await read_all(store, A, NOW)] == [2]
        assert [data_n(m) for m in await read_all(store, B, NOW)] == [4]
        assert await store.sweep(NOW + 2 * HOUR) == 2
        assert await read_all(store, A, 0) == []

    async def test_stats_count_devices_and_stored_messages(self, store: Store) -> None:
        assert await store.stats() == StoreStats(devices=0, messages=0)
        await add_devices(store, A, B)
        first, *_ = await append_ok(store, msg(A, 1), msg(A, 2), msg(B, 3))
        assert await store.stats() == StoreStats(devices=2, messages=3)
        await store.ack(A, first.cursor)
        await store.delete_device(B)
        assert await store.stats() == StoreStats(devices=1, messages=1)

    async def test_a_cursor_handed_out_stays_nameable_once_its_message_is_swept(
        self, store: Store
    ) -> None:
        await add_devices(store, A)
        (r,) = await append_ok(store, msg(A, 1, ttl_ms=10))
        (m,) = await read_all(store, A)
        assert await store.sweep(NOW + 10) == 1
        assert await store.cursor_limit(A) >= m.cursor == r.cursor
        assert await store.cursor_limit(UNKNOWN) == 0

    async def test_sweep_limit(self, store: Store) -> None:
        await add_devices(store, A)
        await append_ok(store, *(msg(A, i, ttl_ms=1) for i in range(10)), msg(A, 99))
        assert await store.sweep(NOW + 1, limit=4) == 4
        assert await store.sweep(NOW + 1, limit=4) == 4
        assert await store.sweep(NOW + 1, limit=4) == 2
        assert await store.sweep(NOW + 1, limit=4) == 0
        assert [data_n(m) for m in await read_all(store, A, 0)] == [99]


class TestRejectedPassThrough:
    """A Rejected given to append (e.g. a ttl=0 drop) comes back as is, unstored."""

    async def test_rejected_passes_through_in_place(self, store: Store) -> None:
        await add_devices(store, A, B)
        dropped = Rejected(B, "dropped: offline", "01DROPPED")
        results, replay = await store.append([msg(A, 1), dropped, msg(A, 2)])
        assert replay is False
        assert results[1] == dropped
        accepted = [r for r in results if isinstance(r, Accepted)]
        assert [r.pin for r in accepted] == [A, A]
        assert increasing([r.cursor for r in accepted])
        assert await read_all(store, B) == []
        assert await last_cursor(store, B) == 0  # a rejection takes no cursor

    async def test_rejected_for_unknown_device_passes_through(self, store: Store) -> None:
        dropped = Rejected(UNKNOWN, "dropped", None)
        assert await store.append([dropped]) == ([dropped], False)

    async def test_replay_repeats_rejected(self, store: Store) -> None:
        await add_devices(store, A)
        idem = IdempotencyKey("key-r", "fp", NOW)
        dropped = Rejected(A, "dropped: offline", "01DROPPED")
        first, _ = await store.append([dropped, msg(A, 1)], idem)
        again, replay = await store.append([dropped, msg(A, 1)], idem)
        assert replay is True
        assert again == first
        assert again[0] == dropped


# --- idempotency -------------------------------------------------------------------


class TestIdempotency:
    async def test_replay_returns_first_results_and_stores_nothing(self, store: Store) -> None:
        await add_devices(store, A)
        idem = IdempotencyKey("key-1", "fp-1", NOW)
        first, replay = await store.append([msg(A, 1), msg(UNKNOWN, 2), msg(A, 3)], idem)
        assert replay is False
        again, replay = await store.append([msg(A, 1), msg(UNKNOWN, 2), msg(A, 3)], idem)
        assert replay is True
        assert again == first
        assert [data_n(m) for m in await read_all(store, A)] == [1, 3]
        assert await last_cursor(store, A) == max(
            r.cursor for r in first if isinstance(r, Accepted)
        )

    async def test_replay_even_with_different_messages(self, store: Store) -> None:
        # The fingerprint, not the messages, decides whether it is the same request.
        await add_devices(store, A)
        idem = IdempotencyKey("key-1", "fp-1", NOW)
        first, _ = await store.append([msg(A, 1)], idem)
        again, replay = await store.append([msg(A, 2), msg(A, 3)], idem)
        assert (again, replay) == (first, True)
        assert [data_n(m) for m in await read_all(store, A)] == [1]

    async def test_different_fingerprint_conflicts(self, store: Store) -> None:
        await add_devices(store, A)
        await store.append([msg(A, 1)], IdempotencyKey("key-1", "fp-1", NOW))
        with pytest.raises(PinrelayError) as info:
            await store.append([msg(A, 2)], IdempotencyKey("key-1", "fp-2", NOW))
        assert info.value.code is ErrorCode.CONFLICT
        assert [data_n(m) for m in await read_all(store, A)] == [1]
        # The original is still replayable.
        _, replay = await store.append([msg(A, 1)], IdempotencyKey("key-1", "fp-1", NOW))
        assert replay is True

    async def test_key_survives_a_sweep(self, store: Store) -> None:
        await add_devices(store, A)
        idem = IdempotencyKey("key-s", "fp", NOW)
        first, _ = await store.append([msg(A, 1)], idem)
        await store.sweep(NOW + 1)
        again, replay = await store.append([msg(A, 1)], idem)
        assert (again, replay) == (first, True)

    async def test_key_of_all_rejected_batch_survives_a_sweep(self, store: Store) -> None:
        await add_devices(store, A)
        idem = IdempotencyKey("key-d", "fp", NOW)
        dropped = Rejected(A, "dropped: offline", "01DROPPED")
        await store.append([dropped], idem)
        await store.sweep(NOW + 1)
        _, replay = await store.append([dropped], idem)
        assert replay is True

    async def test_keys_are_independent(self, store: Store) -> None:
        await add_devices(store, A)
        r1, p1 = await store.append([msg(A, 1)], IdempotencyKey("key-1", "fp", NOW))
        r2, p2 = await store.append([msg(A, 2)], IdempotencyKey("key-2", "fp", NOW))
        assert (p1, p2) == (False, False)
        assert increasing([r.cursor for r in r1 + r2 if isinstance(r, Accepted)])

    async def test_without_key_never_replays(self, store: Store) -> None:
        await add_devices(store, A)
        m = msg(A, 1)
        (r1,) = await append_ok(store, m)
        (r2,) = await append_ok(store, m)
        assert r1.cursor < r2.cursor
        assert [x.cursor for x in await read_all(store, A)] == [r1.cursor, r2.cursor]

    async def test_concurrent_same_key_stores_once(self, store: Store) -> None:
        await add_devices(store, A)
        idem = IdempotencyKey("key-c", "fp", NOW)
        outcomes = await asyncio.gather(*(store.append([msg(A, i)], idem) for i in range(20)))
        assert sum(1 for _, replay in outcomes if not replay) == 1
        assert len({tuple(results) for results, _ in outcomes}) == 1
        assert len(await read_all(store, A)) == 1


# --- concurrency and durability ---------------------------------------------------


class TestConcurrency:
    async def test_200_concurrent_appends_get_distinct_cursors(self, store: Store) -> None:
        await add_devices(store, A)
        outcomes = await asyncio.gather(*(store.append([msg(A, i)]) for i in range(200)))
        cursors = []
        for results, replay in outcomes:
            assert replay is False
            (r,) = results
            assert isinstance(r, Accepted)
            cursors.append(r.cursor)
        assert len(set(cursors)) == 200
        assert increasing(sorted(cursors))
        stored = await read_all(store, A)
        assert [m.cursor for m in stored] == sorted(cursors)
        assert await last_cursor(store, A) == max(cursors)
        by_id = {m.id: m.cursor for m in stored}
        for results, _ in outcomes:
            (r,) = results
            assert isinstance(r, Accepted)
            assert by_id[r.id] == r.cursor

    async def test_concurrent_appends_to_many_devices(self, store: Store) -> None:
        await add_devices(store, A, B, C)
        pins = [A, B, C]
        outcomes = await asyncio.gather(*(store.append([msg(pins[i % 3], i)]) for i in range(90)))
        per_pin: dict[str, list[int]] = {A: [], B: [], C: []}
        for results, _ in outcomes:
            (r,) = results
            assert isinstance(r, Accepted)
            per_pin[r.pin].append(r.cursor)
        for pin, cursors in per_pin.items():
            assert len(set(cursors)) == 30
            assert [m.cursor for m in await read_all(store, pin)] == sorted(cursors)

    async def test_concurrent_mixed_writes(self, store: Store) -> None:
        await add_devices(store, A)
        await asyncio.gather(
            *(store.append([msg(A, i)]) for i in range(50)),
            *(store.touch_device(A, NOW + i) for i in range(50)),
            store.create_device(B, "h", None, NOW),
        )
        assert len(await read_all(store, A)) == 50
        assert await store.get_device(B) is not None


class TestLifecycle:
    async def test_durable_across_reopen(self, store: Store, reopen: Reopen) -> None:
        await add_devices(store, A, B)
        await store.touch_device(A, NOW + 7)
        await store.set_token(B, "rotated")
        await store.create_key(key("k1"))
        await store.create_key(key("k2"))
        await store.revoke_key("k2")
        idem = IdempotencyKey("key-1", "fp", NOW)
        first, _ = await store.append([msg(A, 1, topic="t"), msg(A, 2), msg(B, 3)], idem)
        await append_ok(store, msg(A, 4, topic="t"), msg(A, 5))
        second_a = first[1]
        assert isinstance(second_a, Accepted)
        await store.ack(A, second_a.cursor)
        before_a, before_b = await store.get_device(A), await store.get_device(B)
        last_a = await last_cursor(store, A)
        msgs_a, msgs_b = await read_all(store, A), await read_all(store, B)
        keys = await store.list_keys()
        await store.close()

        again = await reopen()
        assert await last_cursor(again, A) == last_a
        assert await again.get_device(A) == before_a
        assert await again.get_device(B) == before_b
        assert before_a is not None
        assert before_a.acked_cursor == second_a.cursor
        assert before_a.last_seen_ms == NOW + 7
        assert await read_all(again, A) == msgs_a
        assert [data_n(m) for m in msgs_a] == [4, 5]
        assert await read_all(again, B) == msgs_b
        assert await again.list_keys() == keys
        assert await again.find_key("hash-k1") == key("k1")
        replayed, replay = await again.append([msg(A, 1)], idem)
        assert (replayed, replay) == (first, True)
        (r,) = await append_ok(again, msg(A, 6))
        assert last_a == msgs_a[-1].cursor
        assert r.cursor > last_a

    async def test_close_is_idempotent(self, store: Store) -> None:
        await store.close()
        await store.close()

    async def test_closed_store_refuses(self, store: Store) -> None:
        await add_devices(store, A)
        await store.close()
        with pytest.raises(StoreClosed):
            await store.append([msg(A, 1)])
        with pytest.raises(StoreClosed):
            await store.create_device(B, "h", None, NOW)
        with pytest.raises(StoreClosed):
            await store.read(A, 0, 10, NOW)
        with pytest.raises(StoreClosed):
            await store.get_device(A)
