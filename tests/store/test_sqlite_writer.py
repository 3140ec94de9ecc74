"""The SQLite engine's writer process: its life tied to the relay's, and what a
killed writer does (nothing accepted lost, every later write refused)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from pathlib import Path

import httpx
import pytest

from pinrelay.core.model import NewMessage
from pinrelay.store.base import StoreClosed
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.relayproc import RelayProc

PIN = "0B0B0B0B"
NOW = 1_700_000_000_000
FAR = NOW + 365 * 24 * 3_600_000


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "pinrelay.db"


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.extend(int(x) for x in (task / "children").read_text().split())
    return out


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not alive(pid), timeout, 0.02)
    return not alive(pid)


def message(i: int) -> NewMessage:
    return NewMessage(PIN, f"01W{i:023d}", b'{"n":%d}' % i, None, "normal", NOW, FAR)


async def test_the_writer_dies_with_a_killed_relay(relay: RelayProc) -> None:
    (writer,) = children(relay.pid)
    assert alive(writer)
    relay.kill()  # SIGKILL: no shutdown code runs in the relay
    assert wait_dead(writer), "the writer outlived its relay"


async def test_the_writer_stops_with_a_terminated_relay(relay: RelayProc) -> None:
    (writer,) = children(relay.pid)
    assert relay.terminate() == 0
    assert wait_dead(writer)


async def test_a_relay_whose_writer_died_is_not_ready_and_refuses_pushes(
    relay: RelayProc,
) -> None:
    pin = relay.create_device()["pin"]
    (writer,) = children(relay.pid)
    os.kill(writer, signal.SIGKILL)
    async with httpx.AsyncClient(base_url=relay.url, headers=relay.admin_headers()) as http:

        async def not_ready() -> bool:
            return (await http.get("/readyz")).status_code != 200

        with contextlib.suppress(TimeoutError):
            await wait_until_async(not_ready, 10.0, 0.05)
        ready = await http.get("/readyz")
        push = await http.post(f"/v1/devices/{pin}/messages", json={"data": 1, "ttl": 60})
    assert ready.status_code == 503
    assert push.status_code == 503
    assert push.headers["content-type"].startswith("application/problem+json")
    assert push.json()["type"].endswith("/overloaded")
    assert "Retry-After" in push.headers


async def test_every_acknowledged_append_survives_a_writer_sigkill(db_path: Path) -> None:
    """Appends from many tasks at once; the writer is killed at a random moment. Every
    append that was answered is stored, and nothing that was not asked for."""
    rng = random.Random(os.getpid())
    store = SqliteStore(db_path)
    await store.open()
    assert await store.create_device(PIN, "h", None, NOW) is not None
    acknowledged: list[str] = []
    refused = 0
    counter = iter(range(1_000_000))

    async def appender() -> None:
        nonlocal refused
        while True:
            m = message(next(counter))
            try:
                await store.append([m])
            except StoreClosed:
                refused += 1
                return
            acknowledged.append(m.id)

    tasks = [asyncio.create_task(appender()) for _ in range(16)]
    # Some load answered first (a fixed 0.3 s held only a few group commits when an
    # fdatasync stalled), then a random while more, then the kill.
    await wait_until_async(lambda: len(acknowledged) > 50, 10, 0.01, "50 appends answered")
    await asyncio.sleep(rng.uniform(0.0, 0.7))  # a random moment under load
    writer = store.writer_pid
    assert writer is not None
    os.kill(writer, signal.SIGKILL)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert not store.healthy()
    with pytest.raises(StoreClosed):
        await store.append([message(10**9)])
    await store.close()

    reopened = SqliteStore(db_path)
    await reopened.open()
    try:
        stored = [m.id for m in await reopened.read(PIN, 0, 10**6, NOW)]
    finally:
        await reopened.close()
    assert len(acknowledged) > 50, "killed before the test had anything to check"
    assert refused == len(tasks)
    assert set(acknowledged) <= set(stored)
    # Answered or not, what is stored was asked for, once, in cursor order.
    assert stored == sorted(stored) and len(set(stored)) == len(stored)
    assert len(stored) <= len(acknowledged) + len(tasks)


async def test_close_answers_the_writes_in_flight(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.open()
    assert await store.create_device(PIN, "h", None, NOW) is not None
    pending = [asyncio.ensure_future(store.append([message(i)])) for i in range(300)]
    await asyncio.sleep(0)  # sent, not yet answered
    await store.close()
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes[:3]

    reopened = SqliteStore(db_path)
    await reopened.open()
    try:
        stored = await reopened.read(PIN, 0, 1000, NOW)
    finally:
        await reopened.close()
    assert [m.id for m in stored] == [message(i).id for i in range(300)]


async def test_a_writer_that_cannot_start_fails_open(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that exits at once (here: a Python that cannot import pinrelay).
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setattr("sys.executable", "/bin/false")
    store = SqliteStore(db_path)
    with pytest.raises(StoreClosed):
        await store.open()
    assert not store.healthy()
    with contextlib.suppress(StoreClosed):
        await store.close()
