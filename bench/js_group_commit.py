"""JetStream group commit: CPU per single-message append, grouped and alone (issue 12).

A real 3-node nats-server cluster on 127.0.0.1 (pinrelay.testing.natsproc); two
JetStreamStores in this process on the same stream, one with ``group_commit`` (the
default) and one without (every append publishes alone, as before).  D devices
(default 64).  Each run sends M single-message appends through
``JetStreamStore.append`` (one feed follows the stream, as in a relay):

- closed loop: N callers (``--concurrency``), each appending as soon as its last
  append returned (message i of caller c to device (c + i) mod D);
- paced (``--rate``): one append every 1/R s whatever the answers (open loop), at
  most 256 in flight, the way HTTP single pushes arrive at a relay.

Measured per run: wall time, appends/s, utime+stime (from /proc/<pid>/stat) of this
process ("relay") and of the 3 nats-servers (summed), per message; the average
number of appends per shared batch; latency p50/p99.  The servers are read 0.3 s
after the last answer (followers finish applying).  Runs alternate grouped and
alone, the order swapped every round (``--rounds``, default 3); the table gives each
round and the medians.  CPU figures are the processes' own, so other load on this
shared machine shows as the "other cores" column, not in them.

Every process is stopped by its pid at the end; ``python -m bench.js_group_commit``
(--help for the options).  Nothing is written to RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import OtherLoad, cpu_seconds, fmt, percentile, print_table, run_main
from pinrelay.core.model import NewMessage
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.natsproc import NatsCluster

#: A relay's typical small push.
DATA = b'{"title":"build finished","body":"pinrelay#1234 passed in 3m12s"}'
SETTLE_S = 0.3


@dataclass
class Run:
    mode: str
    load: str
    round: int
    messages: int
    wall_s: float
    relay_s: float
    nats_s: float
    batches: int
    grouped: int
    latencies: list[float]
    other_cores: float

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s

    @property
    def relay_us(self) -> float:
        return self.relay_s / self.messages * 1e6

    @property
    def nats_us(self) -> float:
        return self.nats_s / self.messages * 1e6

    @property
    def group_size(self) -> float:
        return self.grouped / self.batches if self.batches else 1.0


def message(pin: str, n: int) -> NewMessage:
    now = int(time.time() * 1000)
    return NewMessage(pin, f"01BENCH{n:019d}", DATA, None, "normal", now, now + 3_600_000)


class Bench:
    def __init__(self, cluster: NatsCluster, stores: dict[str, JetStreamStore], pins: list[str]):
        self.cluster = cluster
        self.stores = stores
        self.pins = pins
        self.sent = 0

    def nats_cpu(self) -> float:
        return sum(cpu_seconds(n.pid) for n in self.cluster.nodes)

    async def closed(self, store: JetStreamStore, total: int, callers: int) -> list[float]:
        latencies: list[float] = []
        per = total // callers

        async def caller(c: int) -> None:
            for i in range(per):
                m = message(self.pins[(c + i) % len(self.pins)], self.sent)
                self.sent += 1
                t = time.perf_counter()
                await store.append([m])
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(caller(c) for c in range(callers)))
        return latencies

    async def paced(self, store: JetStreamStore, total: int, rate: float) -> list[float]:
        latencies: list[float] = []
        room = asyncio.Semaphore(256)

        async def one(m: NewMessage) -> None:
            t = time.perf_counter()
            try:
                await store.append([m])
            finally:
                room.release()
            latencies.append(time.perf_counter() - t)

        tasks = []
        start = time.monotonic()
        for i in range(total):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            await room.acquire()
            m = message(self.pins[i % len(self.pins)], self.sent)
            self.sent += 1
            tasks.append(asyncio.create_task(one(m)))
        await asyncio.gather(*tasks)
        return latencies

    async def run(self, mode: str, load: str, rnd: int, total: int) -> Run:
        store = self.stores[mode]
        group = store.group
        batches0, grouped0 = (group.batches, group.grouped) if group else (0, 0)
        other = OtherLoad([n.pid for n in self.cluster.nodes])
        relay0, nats0, t0 = time.process_time(), self.nats_cpu(), time.monotonic()
        if load.startswith("rate"):
            latencies = await self.paced(store, total, float(load.removeprefix("rate ")))
        else:
            latencies = await self.closed(store, total, int(load.removeprefix("N=")))
        wall = time.monotonic() - t0
        relay = time.process_time() - relay0
        await asyncio.sleep(SETTLE_S)
        nats = self.nats_cpu() - nats0
        batches, grouped = (group.batches - batches0, group.grouped - grouped0) if group else (0, 0)
        n = len(latencies)
        return Run(
            mode, load, rnd, n, wall, relay, nats, batches, grouped, latencies, other.cores()
        )


def row(label: str, runs: Sequence[Run]) -> list[str]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    lat = [sorted(r.latencies) for r in runs]
    return [
        label,
        fmt(med([r.rate for r in runs]), 0),
        fmt(med([r.relay_us for r in runs]), 0),
        fmt(med([r.nats_us for r in runs]), 0),
        fmt(med([r.relay_us + r.nats_us for r in runs]), 0),
        fmt(med([r.group_size for r in runs]), 1),
        fmt(med([percentile(v, 50) * 1000 for v in lat]), 2),
        fmt(med([percentile(v, 99) * 1000 for v in lat]), 2),
        fmt(max(r.other_cores for r in runs), 2),
    ]


HEADERS = [
    "run",
    "appends/s",
    "relay µs/msg",
    "nats µs/msg (3)",
    "total µs/msg",
    "appends/batch",
    "p50 ms",
    "p99 ms",
    "other cores",
]


async def main(args: argparse.Namespace) -> None:
    loads = [f"N={n}" for n in args.concurrency] + [f"rate {r:g}" for r in args.rate]
    with tempfile.TemporaryDirectory(prefix="js-group-") as tmp:
        cluster = NatsCluster(Path(tmp))
        try:
            cluster.start()
            stores = {
                "grouped": JetStreamStore(
                    cluster.urls, stream="BENCH", subject_prefix="bench", bucket_prefix="bench"
                ),
                "alone": JetStreamStore(
                    cluster.urls,
                    stream="BENCH",
                    subject_prefix="bench",
                    bucket_prefix="bench",
                    group_commit=False,
                ),
            }
            for s in stores.values():
                await s.open()
            # Every store follows the streams (its feed); a relay has one feed, so
            # one of the two stops following.  Both modes pay the same feed.
            await stores["alone"].feed.stop()
            try:
                pins = [f"{0xBE000000 + i:08X}" for i in range(args.devices)]
                for pin in pins:
                    await stores["grouped"].create_device(pin, "h", None, 0)
                bench = Bench(cluster, stores, pins)
                for mode in stores:  # warm up both connections and the stream
                    await bench.run(mode, "N=8", 0, 400)
                runs: list[Run] = []
                for rnd in range(1, args.rounds + 1):
                    order = ["alone", "grouped"] if rnd % 2 else ["grouped", "alone"]
                    for load in loads:
                        for mode in order:
                            run = await bench.run(mode, load, rnd, args.messages)
                            runs.append(run)
                            print(
                                f"round {rnd} {load:>9} {mode:>7}: {run.rate:6.0f}/s "
                                f"relay {run.relay_us:5.0f} µs nats {run.nats_us:5.0f} µs "
                                f"batch {run.group_size:4.1f}",
                                flush=True,
                            )
            finally:
                for s in stores.values():
                    with contextlib.suppress(Exception):
                        await s.close()
        finally:
            cluster.stop()
    rows = []
    for load in loads:
        for mode in ("alone", "grouped"):
            mine = [r for r in runs if r.load == load and r.mode == mode]
            rows.append(row(f"{load} {mode} (median of {len(mine)})", mine))
    print_table(
        f"Single-message appends through JetStreamStore.append, {args.messages} per run, "
        f"{args.devices} devices, 3-node cluster, R3 file stream",
        HEADERS,
        rows,
    )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=4000, help="appends per run")
    p.add_argument("--devices", type=int, default=64)
    p.add_argument(
        "--concurrency", type=int, nargs="*", default=[8, 64], help="closed-loop callers"
    )
    p.add_argument("--rate", type=float, nargs="*", default=[1000.0], help="paced appends/s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    run_main(main(args), fast_loop=args.loop == "uvloop")
