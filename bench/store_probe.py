"""How long the monitors' store probe takes: where ``--monitor store-slow-ms`` and
``store-fail-ms`` come from (docs/DECISIONS.md, "Monitors").

A probe is one small durable write (Store.probe): on SQLite a row through the
writer process (a WAL commit, fdatasync), on the cluster a KV write to an R3
bucket (a leader and a quorum of replicas).  Both stores, interleaved in rounds
(these machines drift), ``--count`` probes a round each, one a
``--interval`` seconds as a relay makes them; the disk's own fdatasync of 4 KiB
(bench/latency.py ``disk_probe``) just before, beside the figure.  Percentiles in
milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    OtherLoad,
    add_common_args,
    console,
    fmt,
    md_table,
    percentile,
    print_table,
    progress,
    publish,
    run_main,
    wait_if_asked,
)
from bench.latency import disk_probe
from pinrelay.store.base import Store
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.natsproc import NatsCluster

MODULE = "bench.store_probe"


async def probes(store: Store, count: int, interval: float) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        await store.probe("bench", int(time.time() * 1000))
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(interval)
    return out


async def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], float]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-probe-"))
    cluster = NatsCluster(directory / "nats", 3, cluster_name="probe")
    results: dict[str, list[float]] = {"disk fdatasync": [], "SQLite": [], "JetStream R3": []}
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        tag = uuid.uuid4().hex[:12]
        js = JetStreamStore(
            cluster.urls,
            replicas=3,
            stream=f"PR_{tag}",
            subject_prefix=f"d{tag}",
            bucket_prefix=f"pr_{tag}",
        )
        sqlite = SqliteStore(directory / "pinrelay.db")
        await js.open()
        await sqlite.open()
        load = OtherLoad([node.pid for node in cluster.nodes])
        try:
            with progress() as bar:
                task = bar.add_task("probe rounds", total=args.rounds)
                for _ in range(args.rounds):
                    results["disk fdatasync"] += disk_probe(directory, 200)
                    results["SQLite"] += await probes(sqlite, args.count, args.interval)
                    results["JetStream R3"] += await probes(js, args.count, args.interval)
                    bar.advance(task)
        finally:
            await sqlite.close()
            await js.destroy()
            await js.close()
        return results, load.cores()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, list[float]], load: float) -> str:
    headers = ["what", "n", "p50 ms", "p99 ms", "p99.9 ms", "max ms"]
    rows = []
    for what, values in results.items():
        v = sorted(values)
        rows.append(
            [
                what,
                str(len(v)),
                *(fmt(percentile(v, p) * 1000, 2) for p in (50, 99, 99.9)),
                fmt(v[-1] * 1000, 2),
            ]
        )
    print_table("Store probe latency", headers, rows)
    return (
        f"{args.rounds} rounds, each: 200 fdatasyncs of a 4 KiB overwrite, then "
        f"{args.count} probes on SQLite and {args.count} on a 3-node JetStream cluster "
        f"(R3), one every {args.interval} s. Other processes meanwhile (the NATS "
        f"servers): {load:.2f} cores.\n\n" + md_table(headers, rows)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=200, help="probes per store per round")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between probes")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    await wait_if_asked(args)
    results, load = await measure(args)
    publish(args, MODULE, "Store probe latency (bench.store_probe)", report(args, results, load))
    console.print("done")


if __name__ == "__main__":
    run_main(main())
