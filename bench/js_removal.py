"""What removing a message costs JetStream, by each way it can go (issue 12).

Behind docs/DECISIONS.md entry 34 (a link's acks no longer purge). On a fresh
3-node cluster (pinrelay.testing.natsproc, ports picked free, stopped by pid), an R3
file stream on ``dev.>`` with per-message TTLs; M messages (200 bytes, ``Nats-TTL``
and ``Nats-Msg-Id`` headers as the relays send) over D device subjects
``dev.D<i>.m``, published 256 in flight.  Then every message is removed, one way per
run, and the nats-servers' utime+stime (summed over the 3, from /proc) meanwhile is
divided by the messages removed:

- ``ttl``: left to expire (a TTL of a few seconds, the same for all), from the first
  expiry until the stream is empty;
- ``ttl mixed``: TTLs spread over 7 values, so expiry is not in stream order;
- ``purge per device``: one ``STREAM.PURGE`` per device with a literal subject filter
  and ``seq`` at the middle of the run (what an ack did before: the older half of
  each device's messages goes, the newer half stays in the same blocks), 32 in
  flight;
- ``delete per message``: one ``STREAM.MSG.DELETE`` per message of the older half,
  64 in flight.

The publish's own cost is reported beside them.  Runs alternate over rounds on one
cluster (the stream emptied between runs); medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext

from bench.common import (
    add_common_args,
    console,
    cpu_seconds,
    fmt,
    md_table,
    print_table,
    run_main,
    wait_machine_quiet,
    write_section,
)
from pinrelay.testing.natsproc import NatsCluster

MODULE = "bench.js_removal"
WAYS = ("ttl", "ttl mixed", "purge per device", "delete per message")
STREAM = "REMOVAL"


class Bench:
    def __init__(
        self, cluster: NatsCluster, nc: NATS, js: JetStreamContext, args: argparse.Namespace
    ) -> None:
        self.cluster = cluster
        self.nc = nc
        self.js = js
        self.args = args
        #: The servers' CPU per second with nothing to do (heartbeats, timers).
        self.idle_per_s = 0.0

    def nats_cpu(self) -> float:
        return sum(cpu_seconds(n.pid) for n in self.cluster.nodes)

    async def publish(self, way: str, run: int) -> tuple[float, int, int]:
        """Store the messages; (NATS CPU s, first sequence, last sequence)."""
        gate = asyncio.Semaphore(256)
        ttl = self.args.ttl

        async def one(i: int) -> int:
            seconds = ttl + (i % 7 if way == "ttl mixed" else 0)
            if way not in ("ttl", "ttl mixed"):
                seconds = 3600
            headers = {"Nats-TTL": str(seconds), "Nats-Msg-Id": f"r{run}-{way}-{i}"}
            async with gate:
                ack = await self.js.publish(
                    f"dev.D{i % self.args.devices}.m", b"x" * 200, headers=headers
                )
                return ack.seq

        before = self.nats_cpu()
        seqs = await asyncio.gather(*(one(i) for i in range(self.args.messages)))
        await asyncio.sleep(0.5)
        return self.nats_cpu() - before, min(seqs), max(seqs)

    async def request(self, subject: str, body: Mapping[str, object]) -> None:
        msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=30)
        answer = json.loads(msg.data)
        if "error" in answer:
            raise RuntimeError(f"{subject}: {answer['error']}")

    async def remove(self, way: str, first: int, last: int) -> tuple[float, int]:
        """Remove messages the chosen way: (NATS CPU s it took less idle, how many)."""
        before, started = self.nats_cpu(), time.monotonic()
        middle = (first + last) // 2
        count = last - first + 1 if way.startswith("ttl") else middle - first + 1
        if way.startswith("ttl"):
            deadline = time.monotonic() + self.args.ttl + 60
            while (await self.js.stream_info(STREAM)).state.messages:
                if time.monotonic() > deadline:
                    raise RuntimeError("messages did not expire")
                await asyncio.sleep(0.2)
        elif way == "purge per device":
            gate = asyncio.Semaphore(32)

            async def purge(d: int) -> None:
                async with gate:
                    body = {"filter": f"dev.D{d}.m", "seq": middle + 1}
                    await self.request(f"$JS.API.STREAM.PURGE.{STREAM}", body)

            await asyncio.gather(*(purge(d) for d in range(self.args.devices)))
        else:
            gate = asyncio.Semaphore(64)

            async def delete(seq: int) -> None:
                async with gate:
                    body = {"seq": seq, "no_erase": True}
                    await self.request(f"$JS.API.STREAM.MSG.DELETE.{STREAM}", body)

            await asyncio.gather(*(delete(s) for s in range(first, middle + 1)))
        await asyncio.sleep(1.0)  # the replicas apply what the leader decided
        spent = self.nats_cpu() - before - self.idle_per_s * (time.monotonic() - started)
        return spent, count


async def measure(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-removal-"))
    cluster = NatsCluster(directory, 3, cluster_name="removal")
    results: dict[str, list[tuple[float, float]]] = {w: [] for w in WAYS}
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        nc = await nats.connect(cluster.urls)
        js = nc.jetstream()
        config = StreamConfig(
            name=STREAM,
            subjects=["dev.>"],
            num_replicas=3,
            storage=StorageType.FILE,
            allow_msg_ttl=True,
        )
        for attempt in range(60):
            try:
                await js.add_stream(config)
                break
            except Exception:  # the cluster may not have elected a meta leader yet
                if attempt == 59:
                    raise
                await asyncio.sleep(0.5)
        bench = Bench(cluster, nc, js, args)
        start = bench.nats_cpu()
        await asyncio.sleep(3)
        bench.idle_per_s = (bench.nats_cpu() - start) / 3
        for run in range(args.rounds):
            order = WAYS[run % len(WAYS) :] + WAYS[: run % len(WAYS)]
            for way in order:
                stored, first, last = await bench.publish(way, run)
                removed, count = await bench.remove(way, first, last)
                n = args.messages
                results[way].append((stored / n * 1e6, removed / count * 1e6))
                console.print(
                    f"{way} #{run + 1}: publish {stored / n * 1e6:.0f} µs/msg, "
                    f"removal {removed / count * 1e6:.0f} µs/msg of {count:,} (NATS, 3 servers)"
                )
                await js.purge_stream(STREAM)
        await nc.close()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return results


def report(args: argparse.Namespace, results: dict[str, list[tuple[float, float]]]) -> str:
    headers = ["way", "publish µs/msg", "removal µs/msg", "removal / publish", "runs"]
    rows = []
    for way, runs in results.items():
        pub = statistics.median(r[0] for r in runs)
        rem = statistics.median(r[1] for r in runs)
        rows.append([way, fmt(pub, 0), fmt(rem, 0), f"{rem / pub:.2f}x", str(len(runs))])
    print_table("Removing a message from an R3 file stream (NATS CPU, 3 servers)", headers, rows)
    return (
        f"{args.messages:,} messages of 200 bytes over {args.devices:,} device subjects, "
        f"published 256 in flight to an R3 file stream on 3 nats-server nodes (this "
        f"machine), then removed one way (TTL: all; purge and delete: the older half, the "
        f"rest staying in the same blocks); the servers' CPU (utime+stime, summed, less "
        f"their idle rate) per message removed; medians of {args.rounds} alternated rounds. "
        f"TTL runs: a {args.ttl} s TTL (mixed: {args.ttl}-{args.ttl + 6} s).\n\n"
        + md_table(headers, rows)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=3, help="seconds, for the TTL runs")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    results = await measure(args)
    body = report(args, results)
    if not args.no_results:
        path = write_section(MODULE, "Removing messages from JetStream (bench.js_removal)", body)
        console.print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main())
