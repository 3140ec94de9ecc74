"""The relay's AckWriter on a real SQLite store: acks held briefly, written together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from pinrelay.core.model import NewMessage
from pinrelay.delivery import AckWriter
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until_async

NOW = 1_700_000_000_000
FAR = NOW + 365 * 24 * 3_600_000
PINS = [f"0A0A0A{i:02X}" for i in range(4)]
DELAY = 0.05


class CountingStore(SqliteStore):
    """The real engine; it also remembers each ack_many it was given."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.ack_calls: list[list[tuple[str, int]]] = []

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        self.ack_calls.append(list(acks))
        await super().ack_many(acks)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    s = CountingStore(tmp_path / "pinrelay.db")
    await s.open()
    try:
        for pin in PINS:
            await s.create_device(pin, "h", None, NOW)
            await s.append(
                [
                    NewMessage(pin, f"01{pin}{i:04d}", b"{}", None, "normal", NOW, FAR)
                    for i in range(10)
                ]
            )
        yield s
    finally:
        await s.close()


async def acked(store: SqliteStore, pin: str) -> int:
    device = await store.get_device(pin)
    assert device is not None
    return device.acked_cursor


async def test_acks_within_the_delay_become_one_write(store: CountingStore) -> None:
    acks = AckWriter(store, delay=DELAY)
    for cursor in range(1, 6):
        for pin in PINS:
            acks.submit(pin, cursor)
    acks.submit(PINS[0], 3)  # older than what is pending: no effect
    assert store.ack_calls == []  # nothing before the delay
    assert [await acked(store, pin) for pin in PINS] == [0, 0, 0, 0]

    async def all_acked() -> bool:
        return [await acked(store, pin) for pin in PINS] == [5, 5, 5, 5]

    await wait_until_async(all_acked, 5.0, DELAY / 5, "every ack written")
    assert store.ack_calls == [[(pin, 5) for pin in PINS]]
    assert [await acked(store, pin) for pin in PINS] == [5, 5, 5, 5]
    assert await store.backlog(PINS[0], NOW) == 5


async def test_a_steady_trickle_is_not_a_write_per_ack(store: CountingStore) -> None:
    acks = AckWriter(store, delay=DELAY)
    for cursor in range(1, 11):
        acks.submit(PINS[cursor % 2], cursor)
        await asyncio.sleep(DELAY / 5)  # pacing: a trickle, five acks per delay
    await acks.flush()
    # Ten acks over about two delays: a handful of writes, not ten.
    assert 1 <= len(store.ack_calls) <= 4, store.ack_calls
    assert await acked(store, PINS[0]) == 10
    assert await acked(store, PINS[1]) == 9


async def test_flush_writes_what_is_pending_at_once(store: CountingStore) -> None:
    acks = AckWriter(store, delay=3600)  # the timer would never fire within the test
    acks.submit(PINS[2], 7)
    await acks.flush()
    assert store.ack_calls == [[(PINS[2], 7)]]
    assert await acked(store, PINS[2]) == 7
    await acks.flush()  # nothing pending: no write
    assert len(store.ack_calls) == 1


async def test_cursor_is_the_ack_held_until_it_is_stored(store: CountingStore) -> None:
    """A device that links again before its ack is stored is not handed again what it
    acknowledged: the link asks the writer (LinkProtocol._check_hello)."""
    acks = AckWriter(store, delay=3600)
    assert acks.cursor(PINS[3]) == 0
    acks.submit(PINS[3], 4)
    assert acks.cursor(PINS[3]) == 4 and await acked(store, PINS[3]) == 0
    flushing = asyncio.ensure_future(acks.flush())
    await asyncio.sleep(0)  # being written (SQLite holds it for the next write)
    assert acks.cursor(PINS[3]) == 4
    await flushing
    assert await acked(store, PINS[3]) == 4
    assert acks.cursor(PINS[3]) == 0
