"""Inline commits (store/sqlite.py, DECISIONS 67): while the writer process has
nothing in hand, a turn's few small writes are committed on the relay's loop, fsync
included; everything else still goes to the writer, in order."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pinrelay.core.model import NewMessage
from pinrelay.store import sqlite_link as sqlite_module
from pinrelay.store.sqlite import SqliteStore
from pinrelay.store.sqlite_link import INLINE_MAX_BYTES
from pinrelay.testing.wait import wait_until_async
from tests.relayproc import RelayProc

PIN = "0C0C0C0C"
NOW = 1_700_000_000_000
FAR = NOW + 365 * 24 * 3_600_000


def message(i: int, size: int = 10) -> NewMessage:
    body = b'{"n":%d,"pad":"%s"}' % (i, b"x" * size)
    return NewMessage(PIN, f"01X{i:023d}", body, None, "normal", NOW, FAR)


async def stored_ids(path: Path) -> list[str]:
    reopened = SqliteStore(path)
    await reopened.open()
    try:
        return [m.id for m in await reopened.read(PIN, 0, 10**6, NOW)]
    finally:
        await reopened.close()


@pytest.fixture(autouse=True)
def a_disk_stall_does_not_pause_inline_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counts below are of a quiet store's commits. On a loaded host one fdatasync
    may stall past INLINE_SLOW_S, which (rightly) sends the next second's writes to
    the writer and would change the count; the pause has its own test."""
    monkeypatch.setattr(sqlite_module, "INLINE_SLOW_S", float("inf"))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "data" / "pinrelay.db")
    await s.open()
    assert await s.create_device(PIN, "h", None, NOW) is not None
    yield s
    await s.close()


async def test_a_quiet_stores_small_writes_commit_on_the_loop_and_are_stored(
    store: SqliteStore,
) -> None:
    before = store.inline_committed
    for i in range(20):
        await store.append([message(i)])
    assert store.inline_committed - before == 20
    await store.close()
    assert await stored_ids(store.path) == [message(i).id for i in range(20)]


async def test_large_writes_and_writes_behind_the_writers_go_to_the_writer_in_order(
    store: SqliteStore,
) -> None:
    before = store.inline_committed
    # Larger than an inline group may be: the writer's.
    await store.append([message(0, INLINE_MAX_BYTES)])
    assert store.inline_committed == before
    # A small write asked while a large one is with the writer waits its turn there.
    big = asyncio.ensure_future(store.append([message(1, INLINE_MAX_BYTES)]))
    await asyncio.sleep(0)  # the large one is sent
    small = asyncio.ensure_future(store.append([message(2)]))
    first, second = await asyncio.gather(big, small)
    assert store.inline_committed == before
    assert first[0][0].cursor < second[0][0].cursor  # type: ignore[union-attr]
    # Nine small writes in one turn are more than an inline group: the writer's.
    await asyncio.gather(*(store.append([message(10 + i)]) for i in range(9)))
    assert store.inline_committed == before
    await store.close()
    expected = [message(i).id for i in (0, 1, 2, *range(10, 19))]
    assert await stored_ids(store.path) == expected


async def test_a_slow_inline_commit_sends_writes_to_the_writer_for_a_while(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalling disk holds the loop once, not at every write."""
    monkeypatch.setattr(sqlite_module, "INLINE_SLOW_S", 0.0)  # every commit is "slow"
    before = store.inline_committed
    await store.append([message(0)])
    assert store.inline_committed == before + 1
    for i in range(1, 5):
        await store.append([message(i)])
    assert store.inline_committed == before + 1
    await store.close()
    assert await stored_ids(store.path) == [message(i).id for i in range(5)]


async def test_a_probe_is_always_the_writer_processs(store: SqliteStore) -> None:
    """The store monitor's write check judges the writer process: it never commits
    inline, and while the writer holds it, nothing else does either."""
    before = store.inline_committed
    await store.probe("node-1", NOW)
    assert store.inline_committed == before
    writer = store.writer_pid
    assert writer is not None
    os.kill(writer, signal.SIGSTOP)
    try:
        probe = asyncio.ensure_future(store.probe("node-1", NOW + 1))
        await asyncio.sleep(0)  # the probe is with the (stopped) writer
        push = asyncio.ensure_future(store.append([message(0)]))
        done, _ = await asyncio.wait([probe, push], timeout=0.3)
        assert not done  # both wait for the writer
        assert store.inline_committed == before
    finally:
        os.kill(writer, signal.SIGCONT)
    await asyncio.wait_for(asyncio.gather(probe, push), 10)
    assert store.inline_committed == before


async def test_only_the_small_writes_of_chat_and_pushes_commit_inline(store: SqliteStore) -> None:
    before = store.inline_committed
    await store.touch_device(PIN, NOW)
    assert store.inline_committed == before + 1
    # A device's creation, a sweep: the writer's (not on the chat path; a sweep may
    # delete a thousand rows).
    assert await store.create_device("0D0D0D0D", "h", None, NOW) is not None
    await store.sweep(NOW, 1000)
    assert store.inline_committed == before + 1


def wal_generation(store: SqliteStore) -> int:
    """The WAL header's checkpoint sequence number: it grows each time the WAL
    starts over at its beginning (after a checkpoint copied all of it)."""
    with open(f"{store.path}-wal", "rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


async def test_the_writer_checkpoints_beside_inline_commits_and_the_wal_starts_over(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline connection never checkpoints and every write here is committed
    inline: the writer process copies the WAL on its own, without a write of its own
    to commit, and the next inline commit starts the WAL over."""
    monkeypatch.setattr(sqlite_module, "INLINE_WRITER_EVERY", 10**9)
    await store.append([message(0)])
    first = wal_generation(store)
    before = store.inline_committed
    sent = 1

    async def started_over() -> bool:
        nonlocal sent
        await store.append([message(sent)])
        sent += 1
        return wal_generation(store) != first

    await wait_until_async(started_over, 10, 0.05, "the WAL started over")
    assert store.inline_committed == before + sent - 1
    await store.close()
    assert await stored_ids(store.path) == [message(i).id for i in range(sent)]


async def test_the_writer_commits_now_and_then_so_that_it_checkpoints(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline connection never checkpoints; after INLINE_WRITER_EVERY inline
    commits in a row a group goes to the writer, whose commits do (a safety net:
    the writer also checkpoints on its own, above)."""
    monkeypatch.setattr(sqlite_module, "INLINE_WRITER_EVERY", 3)
    before = store.inline_committed
    counts = []
    for i in range(8):
        await store.append([message(i)])
        counts.append(store.inline_committed - before)
    assert counts == [1, 2, 3, 3, 4, 5, 6, 6]
    await store.close()
    assert await stored_ids(store.path) == [message(i).id for i in range(8)]


async def test_an_inline_commit_that_raises_hands_its_writes_to_the_writer(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = store._link
    assert link is not None and link.inline is not None

    def broken(*_: object) -> None:
        raise sqlite3.DatabaseError("file is not a database")

    monkeypatch.setattr(link.inline, "try_commit", broken)
    before = store.inline_committed
    await asyncio.wait_for(store.append([message(0)]), 10)  # answered, by the writer
    assert link.inline is None and store.inline_committed == before
    await store.append([message(1)])
    await store.close()
    assert await stored_ids(store.path) == [message(0).id, message(1).id]


async def test_inline_commits_can_be_turned_off(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "pinrelay.db", inline_commits=False)
    await store.open()
    try:
        assert await store.create_device(PIN, "h", None, NOW) is not None
        for i in range(5):
            await store.append([message(i)])
        assert store.inline_committed == 0
    finally:
        await store.close()


def inline_metric(relay: RelayProc) -> float:
    text = httpx.get(f"{relay.url}/metrics", headers=relay.admin_headers(), timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("pinrelay_store_inline_commits "))
    return float(line.split()[1])


def inbox_ids(relay: RelayProc, pin: str, token: str) -> list[str]:
    ids: list[str] = []
    after = 0
    with httpx.Client(base_url=relay.url, timeout=10) as c:
        while True:
            r = c.get(
                f"/v1/devices/{pin}/inbox",
                params={"after": after, "limit": 100},
                headers={"Authorization": f"Bearer {token}"},
            )
            r.raise_for_status()
            page = r.json()["messages"]
            if not page:
                return ids
            ids.extend(m["id"] for m in page)
            after = page[-1]["cursor"]


async def test_pushes_committed_inline_survive_a_sigkill_of_the_relay(relay: RelayProc) -> None:
    """One push at a time (a quiet relay: each committed on its loop); the relay is
    SIGKILLed at a random moment; every push answered 201 is there after a restart,
    once."""
    device = relay.create_device()
    pin, token = device["pin"], device["token"]
    answered: list[str] = []
    kill_after = random.Random(os.getpid()).uniform(0.5, 1.5)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(
        base_url=relay.url, headers=relay.admin_headers(), timeout=10
    ) as http:
        started = loop.time()
        while loop.time() - started < kill_after or len(answered) < 20:
            r = await http.post(
                f"/v1/devices/{pin}/messages", json={"data": {"n": len(answered)}, "ttl": 3600}
            )
            assert r.status_code == 201, r.text
            answered.append(r.json()["id"])
        assert inline_metric(relay) > 0, "the pushes were not committed inline"
        # The kill lands while pushes are in flight, not between them.
        pushes = [
            asyncio.ensure_future(
                http.post(f"/v1/devices/{pin}/messages", json={"data": {"n": -i}, "ttl": 3600})
            )
            for i in range(5)
        ]
        await asyncio.sleep(0.002)
        os.kill(relay.pid, signal.SIGKILL)
        for outcome in await asyncio.gather(*pushes, return_exceptions=True):
            if isinstance(outcome, httpx.Response) and outcome.status_code == 201:
                answered.append(outcome.json()["id"])
    relay.kill()  # reaps it
    relay.start()
    ids = inbox_ids(relay, pin, token)
    assert set(answered) <= set(ids)
    assert len(ids) == len(set(ids))
    assert len(ids) <= len(answered) + 5
