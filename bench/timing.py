"""What the answer-time benchmarks share (bench.invite_timing, bench.tenant_timing).

Each compares two kinds of request that must answer alike (a device vs a PIN with
no device): the kinds alternate, one request at a time, on one SQLite relay and then
on one relay of a 3-node JetStream cluster (pinrelay.testing.natsproc; ports picked
free, every process stopped by pid); a table row per kind gives p50, p99 and mean.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import tempfile
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

from bench.common import RelayProcess, fmt, percentile
from pinrelay.testing.natsproc import NatsCluster

T = TypeVar("T")
#: The table columns :func:`time_cells` fills.
TIME_HEADERS = ["p50 ms", "p99 ms", "mean ms"]


def pin_with_no_device(taken: Collection[str]) -> str:
    """A random PIN that is none of ``taken``."""
    while (pin := secrets.token_hex(4).upper()) in taken:
        pass
    return pin


def alternately(i: int, order: Sequence[T]) -> Sequence[T]:
    """``order`` for the ``i``-th sample, reversed every other one (so drift in the
    machine's load falls on both kinds alike)."""
    return order if i % 2 == 0 else order[::-1]


def time_cells(times: Sequence[float]) -> list[str]:
    """Count, p50, p99 and mean of answer times (ms)."""
    t = sorted(times)
    return [
        str(len(t)),
        fmt(percentile(t, 50), 2),
        fmt(percentile(t, 99), 2),
        fmt(statistics.fmean(t), 2),
    ]


def median_gap(first: Sequence[float], second: Sequence[float]) -> float:
    return statistics.median(first) - statistics.median(second)


async def on_both_stores(
    name: str,
    probe: Callable[[RelayProcess], Awaitable[T]],
    *,
    extra: Sequence[str] = (),
    src: Path | None = None,
) -> dict[str, T]:
    """``probe`` on one SQLite relay, then on one relay of a 3-node JetStream
    cluster; each relay started with ``extra`` options, from ``src`` if given."""
    directory = Path(tempfile.mkdtemp(prefix=f"pinrelay-bench-{name}-"))
    logs = directory / "logs"
    logs.mkdir()
    out: dict[str, T] = {}
    relay = RelayProcess(logs, name="sqlite", extra=extra)
    relay.src = src
    try:
        await relay.start()
        out["SQLite, one relay"] = await probe(relay)
    finally:
        relay.stop()
        relay.remove_data()
    cluster = NatsCluster(directory / "nats", 3, cluster_name=name)
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        store = ["--store", ",".join(cluster.urls), "--node-id", f"{name}-a"]
        relay = RelayProcess(logs, name="cluster", extra=[*store, *extra])
        relay.src = src
        try:
            await relay.start(60)
            out["JetStream, 3 nodes"] = await probe(relay)
        finally:
            relay.stop()
            relay.remove_data()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return out
