"""What a month's delay figures cost the credits call (delay_days.py; DECISIONS 64).

Each relay records a reading every 10 s with its delay counts per tenant; a day of
three relays is 25,920 readings.  Measured on both stores: writing a day's readings
(as the relays would over the day), summing that day once (``day_delays``: every
reading of the day read back, then one record kept), and a month's credits read
once the days are kept (``month_delays``: about 30 small records).  ``--tenants``
tenants per reading.  Seconds; the first sum of a month without kept days costs
one day's sum per day.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    add_common_args,
    console,
    fmt,
    md_table,
    print_table,
    progress,
    publish,
    run_main,
    wait_if_asked,
)
from pinrelay.core.credits import month_of
from pinrelay.core.readings import Readings
from pinrelay.delay_days import DAY_MS, SETTLED_MS, day_delays, month_delays
from pinrelay.store.base import Store
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.natsproc import NatsCluster

MODULE = "bench.delay_days"


def day_of_readings(day: int, nodes: int, tenants: int) -> list[Readings]:
    one: tuple[int, ...] = (40, 5, 1, 1, 0, 0, 1)
    counts = {f"T{t:03d}": one for t in range(tenants)}
    return [
        Readings(at_ms=at, node=f"n{n}", region="r", links=100, tenant_delays=counts)
        for at in range(day, day + DAY_MS, 10_000)
        for n in range(nodes)
    ]


async def one_store(store: Store, args: argparse.Namespace, today: int) -> list[float]:
    # Today's readings (a cluster reads figures by when they were stored), summed as
    # if it were settled: the clock the sums are given is tomorrow's.
    day, now_ms = today, today + DAY_MS + SETTLED_MS + 1
    readings = day_of_readings(day, args.nodes, args.tenants)
    t0 = time.perf_counter()
    for n in range(0, len(readings), 500):
        await store.put_readings(readings[n : n + 500])
    t1 = time.perf_counter()
    summed = await day_delays(store, day, now_ms)
    t2 = time.perf_counter()
    assert sum(summed["T000"]) == 48 * len(readings)
    for back in range(3, 33):  # a month of kept days
        await store.put_delay_day(day - back * DAY_MS, summed)
    t3 = time.perf_counter()
    await month_delays(store, month_of(day), now_ms)
    t4 = time.perf_counter()
    return [t1 - t0, t2 - t1, t4 - t3]


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-days-"))
    cluster = NatsCluster(directory / "nats", 3, cluster_name="days")
    results: dict[str, list[float]] = {}
    now_ms = int(time.time() * 1000)
    today = now_ms - now_ms % DAY_MS
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        tag = uuid.uuid4().hex[:12]
        js = JetStreamStore(
            cluster.urls, stream=f"DD_{tag}", subject_prefix=f"d{tag}", bucket_prefix=f"dd_{tag}"
        )
        sqlite = SqliteStore(directory / "pinrelay.db")
        await js.open()
        await sqlite.open()
        try:
            with progress() as bar:
                task = bar.add_task("stores", total=2)
                results["SQLite"] = await one_store(sqlite, args, today)
                bar.advance(task)
                results["JetStream R3"] = await one_store(js, args, today)
                bar.advance(task)
        finally:
            await sqlite.close()
            await js.destroy()
            await js.close()
        return results
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, list[float]]) -> str:
    headers = ["store", "write a day s", "sum a day s", "a month's credits read s"]
    rows = [[what, *(fmt(v, 2) for v in values)] for what, values in results.items()]
    print_table("Delay days", headers, rows)
    readings = args.nodes * DAY_MS // 10_000
    return (
        f"A day of readings: {args.nodes} relays x 8,640 = {readings:,}, each with "
        f"{args.tenants} tenants' delay counts; the month read with 30 kept days.\n\n"
        + md_table(headers, rows)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=10)
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    await wait_if_asked(args)
    results = await measure(args)
    publish(args, MODULE, "Delay days (bench.delay_days)", report(args, results))
    console.print("done")


if __name__ == "__main__":
    run_main(main())
