"""The Store contract for relays' recorded figures (figures.py, issue 16).

Runs on every engine (tests/store/conftest.py, ``store``): readings of several
relays are kept and read back by window, oldest first, across relays; a reading
written again (a retry after an outage) is kept once; they survive a reopen.  The
cluster may show the newest a moment late (followers answer), so reads poll.
SQLite forgets readings 90 days older than the newest written, a batch at a time;
the cluster's stream keeps them 90 days (MaxAge).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nats

from pinrelay.core.readings import Readings
from pinrelay.delay_days import DAY_MS, day_delays, month_delays
from pinrelay.store.base import FIGURES_KEEP_MS, Store
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.sqlite import SqliteStore
from pinrelay.store.sqlite_figure_ops import FORGET_BATCH, READ_PAGE
from pinrelay.testing.wait import wait_until_async

from .conftest import Reopen
from .test_contract_tenants import elsewhere

#: Figures are stored near the time they were taken (the cluster reads by it).
NOW = int(time.time() * 1000)


def reading(node: str, at: int, links: int = 1, **kw: Any) -> Readings:
    region = "eu" if node.startswith("a") else "us"
    return Readings(at_ms=at, node=node, region=region, links=links, **kw)


async def read_back(store: Store, since: int, until: int, count: int) -> list[Readings]:
    """The window once it holds ``count`` readings (the cluster may lag a moment)."""

    async def enough() -> list[Readings] | None:
        found = await store.readings(since, until)
        return found if len(found) >= count else None

    return await wait_until_async(enough, 10, 0.05, f"{count} readings in the window")


async def test_readings_of_every_relay_read_back_by_window(store: Store, reopen: Reopen) -> None:
    assert await store.readings(NOW - 1000, NOW + 1000) == []
    a = [reading("a1", NOW + k * 10_000, delivered=k, delay_counts=(k, 0, 1)) for k in range(5)]
    b = [reading("b-2", NOW + k * 10_000 + 5, links=7, lag_ms=30) for k in range(5)]
    await store.put_readings(a[:3] + b)
    await store.put_readings(a[3:])
    await store.put_readings([])
    everything = await read_back(store, NOW, NOW + 40_005, 10)
    assert everything == sorted(a + b, key=lambda r: (r.at_ms, r.node))
    # Both ends count; outside them nothing.
    assert await read_back(store, NOW + 10_000, NOW + 20_000, 3) == [a[1], b[1], a[2]]
    assert await store.readings(NOW + 10_001, NOW + 10_004) == []
    assert await store.readings(NOW + 10_000, NOW + 20_005) == [a[1], b[1], a[2], b[2]]
    again = await elsewhere(store, reopen)
    assert await read_back(again, NOW, NOW + 40_005, 10) == everything


async def test_a_reading_written_again_is_kept_once(store: Store) -> None:
    first = [reading("a1", NOW + k, delivered=k) for k in range(3)]
    await store.put_readings(first)
    await store.put_readings(first[1:])  # a retry after the store came back
    assert await read_back(store, NOW, NOW + 10, 3) == first


async def test_old_readings_go_a_batch_at_a_time(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        old = [reading("a1", NOW - FIGURES_KEEP_MS - 1 - k) for k in range(FORGET_BATCH + 5)]
        await store.put_readings(old)
        kept = reading("a1", NOW - FIGURES_KEEP_MS)  # exactly 90 days: kept
        await store.put_readings([kept, reading("a1", NOW)])
        assert len(await store.readings(0, NOW)) == 5 + 2  # one batch went
        await store.put_readings([reading("b1", NOW)])  # the other 5 go
        assert await store.readings(0, NOW) == [kept, reading("a1", NOW), reading("b1", NOW)]
    finally:
        await store.close()


async def test_a_long_window_reads_in_pages(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        nodes = ["", "a", "b", "c"]  # "" sorts first: the first page starts with it
        many = [reading(n, NOW + k) for k in range(READ_PAGE // 2 + 1) for n in nodes]
        await store.put_readings(many[: len(many) // 2])
        await store.put_readings(many[len(many) // 2 :])
        assert len(many) > 2 * READ_PAGE
        assert await store.readings(NOW, NOW + len(many)) == many
        assert await store.readings(NOW + 1, NOW + 1) == many[4:8]
    finally:
        await store.close()


async def test_the_cluster_keeps_figures_90_days(store: Store) -> None:
    if not isinstance(store, JetStreamStore):
        return  # SQLite: test_old_readings_go_a_batch_at_a_time
    await store.put_readings([reading("a1", NOW)])
    nc = await nats.connect(store.servers)
    try:
        info = await nc.jetstream().stream_info(store.figures.stream)
    finally:
        await nc.close()
    assert info.config.max_age == FIGURES_KEEP_MS / 1000
    assert info.config.num_replicas == 3 and info.state.messages == 1


async def test_a_days_delays_per_tenant_are_kept_and_summed_once_settled(
    store: Store, reopen: Reopen
) -> None:
    """delay_days.py: a settled day is summed from its readings (both relays, only
    its own hours) and kept; a day not settled is summed but not kept; what is kept
    survives a reopen and is what a month's credits read."""
    day = NOW - NOW % DAY_MS - 3 * DAY_MS  # three days ago: settled
    today = NOW - NOW % DAY_MS
    per_tenant = [
        reading("a1", day + 1_000, tenant_delays={"T1": (5, 1), "T2": (0, 0, 3)}),
        reading("b-2", day + DAY_MS - 1, tenant_delays={"T1": (1, 0, 0, 2)}),
        reading("a1", day + DAY_MS, tenant_delays={"T1": (100,)}),  # the next day's
        reading("a1", today, tenant_delays={"T1": (7,)}),
    ]
    await store.put_readings(per_tenant)
    await read_back(store, day, today, 4)
    assert await store.delay_days([day, today]) == {}
    summed = await day_delays(store, day, NOW)
    assert summed == {"T1": (6, 1, 0, 2), "T2": (0, 0, 3)}
    assert await day_delays(store, today, NOW) == {"T1": (7,)}
    assert await store.delay_days([day, day + DAY_MS, today]) == {day: summed}
    store = await elsewhere(store, reopen)
    assert await store.delay_days([day]) == {day: summed}
    # Kept means read, not summed again: a later reading of that day is not counted.
    await store.put_readings([reading("a1", day + 5_000, tenant_delays={"T1": (1_000,)})])
    await read_back(store, day, day + DAY_MS - 1, 3)
    assert await day_delays(store, day, NOW) == summed
    month = time.strftime("%Y-%m", time.gmtime(day / 1000))
    total = await month_delays(store, month, NOW)
    if time.gmtime(NOW / 1000).tm_mon == time.gmtime(day / 1000).tm_mon:
        assert total["T1"][0] == 6 + 100 + 7 and total["T2"] == (0, 0, 3)
    else:  # the day fell in last month
        assert total["T2"] == (0, 0, 3)
    await store.put_delay_day(day, {"T9": (1,)})  # a repeat replaces (the same sums)
    assert (await store.delay_days([day]))[day] in ({"T9": (1,)}, summed)
