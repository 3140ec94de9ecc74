"""What opening a JetStream store costs, and starting a relay on the cluster.

Behind docs/DECISIONS.md entries 50 and 51: the store contract's JetStream tests open
a store of their own (and open it again to destroy it), and tests/cluster starts
relays on a cluster; both wait for ``open`` to create or check every stream and
bucket.  On a fresh 3-node cluster (pinrelay.testing.natsproc, ports picked free,
stopped by pid), each round, for the two engines the tests use (one stream, and three
partitions):

- ``create``: ``open`` of a store on names no stream has yet (every stream, bucket and
  expiry consumer is created), then ``close``;
- ``adopt``: ``open`` again on the same names (everything exists: checked), as a
  second relay does, and as the tests' clean-up does before ``destroy``;
- ``destroy``: deleting its streams and buckets, then ``close``.

Then ``--relays`` relay starts (``pinrelay serve --store``, default names, R3), each
from launch to a ready ``/readyz``: first on a cluster without its streams (deleted
after each start), then on one that has them.  Medians and means, in seconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import (
    OtherLoad,
    add_common_args,
    console,
    fmt,
    md_table,
    print_table,
    run_main,
    wait_machine_quiet,
    write_section,
)
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.relayproc import RelayProc

MODULE = "bench.js_open"
ENGINES = {"1 stream": 1, "3 partitions": 3}


def make_store(cluster: NatsCluster, partitions: int, tag: str | None = None) -> JetStreamStore:
    """A store as tests/store makes one (R3), on names of its own (or the default ones)."""
    if tag is None:
        return JetStreamStore(cluster.urls, replicas=3, partitions=partitions)
    return JetStreamStore(
        cluster.urls,
        replicas=3,
        partitions=partitions,
        stream=f"PR_{tag}",
        subject_prefix=f"d{tag}",
        bucket_prefix=f"pr_{tag}",
    )


async def timed(op: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await op()
    return time.perf_counter() - t0


async def destroy(store: JetStreamStore) -> None:
    await store.open()
    try:
        await store.destroy()
    finally:
        await store.close()


async def store_rounds(cluster: NatsCluster, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for run in range(rounds):
        for engine, partitions in ENGINES.items():
            tag = uuid.uuid4().hex[:12]
            first = make_store(cluster, partitions, tag)
            create = await timed(first.open)
            await first.close()
            again = make_store(cluster, partitions, tag)
            adopt = await timed(again.open)

            async def gone(store: JetStreamStore = again) -> None:
                try:
                    await store.destroy()
                finally:
                    await store.close()

            removal = await timed(gone)
            for what, seconds in (("create", create), ("adopt", adopt), ("destroy", removal)):
                results.setdefault(f"{engine}: {what}", []).append(seconds)
            console.print(
                f"#{run + 1} {engine}: create {create:.2f} s, adopt {adopt:.2f} s, "
                f"destroy {removal:.2f} s"
            )
    return results


async def relay_start(cluster: NatsCluster, directory: Path) -> float:
    node = f"relay-{uuid.uuid4().hex[:8]}"
    store = ["--store", ",".join(cluster.urls), "--node-id", node]
    proc = RelayProc(Path(tempfile.mkdtemp(dir=directory)), extra=store)
    t0 = time.perf_counter()
    try:
        proc.start(timeout=60, wait=False)
        await proc.wait_ready_async(60)
        return time.perf_counter() - t0
    finally:
        try:
            proc.stop()
        finally:
            proc.kill()


async def relay_rounds(cluster: NatsCluster, directory: Path, count: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"relay start: create": [], "relay start: adopt": []}
    for run in range(count):
        seconds = await relay_start(cluster, directory)
        results["relay start: create"].append(seconds)
        await destroy(make_store(cluster, 1))
        console.print(f"#{run + 1} relay start on a cluster without its streams: {seconds:.2f} s")
    await relay_start(cluster, directory)  # makes them
    for run in range(count):
        seconds = await relay_start(cluster, directory)
        results["relay start: adopt"].append(seconds)
        console.print(f"#{run + 1} relay start on a cluster with its streams: {seconds:.2f} s")
    await destroy(make_store(cluster, 1))
    return results


async def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], float]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-open-"))
    cluster = NatsCluster(directory / "nats", 3, cluster_name="open")
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        # A first open waits for the cluster to elect its leaders: not measured.
        warm = make_store(cluster, 1, uuid.uuid4().hex[:12])
        await warm.open()
        await warm.destroy()
        await warm.close()
        load = OtherLoad([node.pid for node in cluster.nodes])
        results = await store_rounds(cluster, args.rounds)
        if args.relays:
            results |= await relay_rounds(cluster, directory, args.relays)
        return results, load.cores()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, list[float]], load: float) -> str:
    headers = ["what", "median s", "mean s", "max s", "runs"]
    rows = [
        [
            what,
            fmt(statistics.median(runs), 2),
            fmt(statistics.fmean(runs), 2),
            fmt(max(runs), 2),
            str(len(runs)),
        ]
        for what, runs in results.items()
    ]
    print_table("Opening a JetStream store (R3, 3 nodes)", headers, rows)
    return (
        f"A 3-node nats-server cluster on this machine; R3 file streams and buckets as "
        f"tests/store makes them; {args.rounds} rounds of create, adopt and destroy per "
        f"engine, then {args.relays} relay starts each way (launch to ready). Other "
        f"processes meanwhile: {load:.2f} cores.\n\n" + md_table(headers, rows)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="per engine")
    parser.add_argument("--relays", type=int, default=5, help="relay starts each way (0: none)")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    results, load = await measure(args)
    body = report(args, results, load)
    if not args.no_results:
        path = write_section(MODULE, "Opening a JetStream store (bench.js_open)", body)
        console.print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main())
