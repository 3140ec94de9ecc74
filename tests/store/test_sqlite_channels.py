"""SQLite engine specifics of channels and broadcasts: each check runs in the
writer's transaction with the write it guards, so writes sent together (one
group commit) cannot all pass it; a deleted device leaves no rows behind."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pinrelay.core.channels import MAX_MEMBERSHIPS, Channel
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import Move
from pinrelay.store.sqlite import SqliteStore

NOW = 1_700_000_000_000
PIN, OTHER = "0A0A0A0A", "0B0B0B0B"
TENANT = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "pinrelay.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def channel(n: int) -> Channel:
    return Channel(id=f"C{n:012d}", tenant=TENANT, name=f"c{n}", klass="marketing", created_ms=NOW)


def rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, args).fetchall()


async def outcomes(*calls: asyncio.Future[object] | asyncio.Task[object]) -> list[str]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    out = []
    for r in results:
        if isinstance(r, PinrelayError):
            assert r.code is ErrorCode.CONFLICT
            out.append("conflict")
        else:
            assert not isinstance(r, BaseException), r
            out.append("ok")
    return out


async def test_channels_created_together_respect_the_tenants_most(store: SqliteStore) -> None:
    done = await outcomes(
        *(asyncio.ensure_future(store.create_channel(channel(n), 3)) for n in range(8))
    )
    assert done.count("ok") == 3
    assert len(await store.list_channels(TENANT)) == 3


async def test_joins_sent_together_respect_max_memberships(store: SqliteStore) -> None:
    assert await store.create_device(PIN, "h", None, NOW) is not None
    total = MAX_MEMBERSHIPS + 5
    await asyncio.gather(*(store.create_channel(channel(n), total) for n in range(total)))
    done = await outcomes(
        *(asyncio.ensure_future(store.join_channel(PIN, channel(n).id, True)) for n in range(total))
    )
    assert done.count("ok") == MAX_MEMBERSHIPS
    assert len(await store.channels_of(PIN)) == MAX_MEMBERSHIPS


async def test_admissions_sent_together_count_each_device_once_a_broadcast(
    store: SqliteStore,
) -> None:
    assert await store.create_device(PIN, "h", None, NOW) is not None
    day = 20_000
    # Three broadcasts asked at once, cap 2: two of them reach the device.
    admitted = await asyncio.gather(
        *(store.admit([PIN], "marketing", f"M{n}", day, 2) for n in range(3))
    )
    assert sum(len(a) for a in admitted) == 2
    assert rows(store.path, "SELECT day, count FROM marketing WHERE pin = ?", PIN) == [(day, 2)]


async def test_a_pin_with_no_device_is_not_admitted_nor_counted(store: SqliteStore) -> None:
    assert await store.create_device(PIN, "h", None, NOW) is not None
    assert await store.admit([OTHER, PIN], "marketing", "M1", 1, 1) == [PIN]
    assert rows(store.path, "SELECT pin FROM marketing") == [(PIN,)]


async def test_a_deleted_device_leaves_no_rows(store: SqliteStore) -> None:
    assert await store.create_device(PIN, "h", None, NOW) is not None
    await store.create_channel(channel(1), 10)
    assert await store.join_channel(PIN, channel(1).id, True)
    assert await store.set_refusal(PIN, "service", True)
    assert await store.admit([PIN], "marketing", "M1", 1, 1) == [PIN]
    assert await store.delete_device(PIN)
    assert rows(store.path, "SELECT pin FROM channel_members") == []
    assert rows(store.path, "SELECT pin FROM refusals") == []
    assert rows(store.path, "SELECT pin FROM marketing") == []


async def test_an_accepted_move_leaves_channels_and_keeps_refusals(store: SqliteStore) -> None:
    assert await store.create_device(PIN, "h", None, NOW) is not None
    await store.create_channel(channel(1), 10)
    assert await store.join_channel(PIN, channel(1).id, True)
    assert await store.set_refusal(PIN, "marketing", True)
    assert await store.request_move(PIN, Move("elsewhere", NOW + 60_000))
    assert await store.accept_move(PIN, "elsewhere", NOW)
    assert await store.channels_of(PIN) == []
    assert await store.channel_members(channel(1).id, "", 10) == []
    assert await store.refusals_of(PIN) == ["marketing"]
