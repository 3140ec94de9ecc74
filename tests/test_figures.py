"""The figures recorder (figures.py): a relay keeps its readings in the store.

A relay on SQLite records a reading every ``--figures-every`` seconds; killed with
SIGKILL it loses at most the reading of the interval it was in (the rest are in
the store).  While the store cannot be written, readings wait in memory, bounded,
and are all written once it is back.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from pathlib import Path

import msgspec

from pinrelay.core.readings import Readings
from pinrelay.figures import FiguresRecorder, Folded, fold
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until
from tests.conftest import RelayFactory

EVERY_S = 1.0
#: The monitors read once a second: a recorded reading is at most that old.
MONITORS_S = 1.0


def stored(data: Path) -> list[Readings]:
    """The readings in a relay's database (read-only, as a report would)."""
    uri = f"file:{data / 'pinrelay.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT body FROM figures ORDER BY at_ms").fetchall()
    return [msgspec.json.decode(r[0], type=Readings) for r in rows]


def test_a_relay_killed_loses_at_most_the_last_interval(relay_factory: RelayFactory) -> None:
    relay = relay_factory(
        "fig", extra=["--figures-every", str(EVERY_S), "--node-id", "fig-1", "--region", "eu"]
    )
    wait_until(lambda: len(stored(relay.data)) >= 4, 20, 0.1, "four readings stored")
    relay.kill()
    killed_ms = time.time() * 1000
    kept = stored(relay.data)
    assert {(r.node, r.region) for r in kept} == {("fig-1", "eu")}
    gaps = [b.at_ms - a.at_ms for a, b in itertools.pairwise(kept)]
    assert all(EVERY_S * 1000 * 0.5 < g < EVERY_S * 1000 * 4 for g in gaps), gaps
    # Taken every interval and written at once: the last is at most one interval
    # (with the monitors' second, and the time the kill took to land) old.
    assert killed_ms - kept[-1].at_ms < (EVERY_S + MONITORS_S) * 1000 + 500
    assert all(r.links == 0 and r.delivered == 0 and r.expired == 0 for r in kept)


async def test_readings_wait_for_the_store_and_are_written_when_it_is_back(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "pinrelay.db")
    taken = iter(range(1, 1000))

    def read() -> Readings:
        return Readings(at_ms=next(taken), node="n", region="r", links=1)

    recorder = FiguresRecorder(store, read, every_s=10, hold_s=40)  # holds 4
    for _ in range(6):
        await recorder.tick()  # the store is not open: nothing can be written
    assert [r.at_ms for r in recorder.waiting] == [3, 4, 5, 6]  # the oldest went
    await store.open()
    try:
        await recorder.tick()
        assert not recorder.waiting
        # The bound holds with the new one too: 4 went.
        assert [r.at_ms for r in await store.readings(0, 100)] == [4, 5, 6, 7]
    finally:
        await store.close()


def test_readings_taken_each_second_are_folded_into_one_per_interval() -> None:
    folded = Folded()
    assert folded.take() is None
    first = Readings(
        at_ms=1000, node="n", region="r", links=5, backlog=9, lag_ms=300, delivered=3,
        delay_counts=(1, 2), expired=1, shed=0, store_ms=4, disk_free=100,
        tenant_delays={"T1": (1,), "T2": (0, 2)},
    )  # fmt: skip
    second = Readings(
        at_ms=2000, node="n", region="r", links=7, backlog=None, lag_ms=200, delivered=2,
        delay_counts=(0, 1, 1), expired=0, shed=2, store_ms=None, disk_free=90,
        tenant_delays={"T2": (0, 1, 1)},
    )  # fmt: skip
    folded.add(first)
    folded.add(second)
    assert folded.take() == Readings(
        at_ms=2000, node="n", region="r", links=7, backlog=None, lag_ms=300, delivered=5,
        delay_counts=(1, 3, 1), expired=1, shed=2, store_ms=None, disk_free=90,
        tenant_delays={"T1": (1,), "T2": (0, 3, 1)},
    )  # fmt: skip
    assert folded.take() is None
    folded.add(first)
    assert folded.take() == first
    assert fold(first, first).store_ms == 4
