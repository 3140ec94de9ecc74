"""What a chat message's expiry schedule costs the cluster (store/jetstream/expiry.py).

Behind docs/DECISIONS.md entry 41.  On a fresh 3-node cluster (ports picked free,
stopped by pid), two JetStreamStores in namespaces of their own, one with chat
expiry (``after``) and one without (``before``, ``chat_expiry=False``: the engine as
it was), alternating round by round.  Each run: N chat messages over D
sender/recipient pairs, each an append of its own, 64 in flight (so group commit
shares batches, as on a relay), then N delivered receipts the same way (with
expiry on, each brings its schedule's cancel).  Reported per chat message (message +
receipt): the nats-servers' utime+stime (summed over the 3, less their idle rate) and
this process's CPU, and the wall time.  ``after`` also runs N chats that nobody
acknowledges, with a 1 s ttl, until each store has handed out and forgotten every
notice (no receipts stored): the cost of an expiry that fires.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from msgspec.structs import replace

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
from pinrelay.core.chat import receipt_data
from pinrelay.core.model import NewMessage
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.natsproc import NatsCluster

MODULE = "bench.js_chat_expiry"
MODES = ("before", "after")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Bench:
    def __init__(self, cluster: NatsCluster, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.args = args
        self.idle_per_s = 0.0
        self.stores: dict[str, JetStreamStore] = {}
        self.n = 0

    def nats_cpu(self) -> float:
        return float(sum(cpu_seconds(n.pid) for n in self.cluster.nodes))

    def pins(self, mode: str) -> list[tuple[str, str]]:
        base = 0x10000000 if mode == "before" else 0x20000000
        return [(f"{base + 2 * i:08X}", f"{base + 2 * i + 1:08X}") for i in range(self.args.pairs)]

    async def open(self) -> None:
        for mode in MODES:
            store = JetStreamStore(
                self.cluster.urls,
                stream=f"B_{mode.upper()}",
                subject_prefix=f"b{mode}",
                bucket_prefix=f"b_{mode}",
                chat_expiry=mode == "after",
                direct_reads=True,
            )
            await store.open()
            for s, r in self.pins(mode):
                for pin in (s, r):
                    await store.create_device(pin, "x", None, int(time.time() * 1000))
            self.stores[mode] = store

    def chat(self, sender: str, to: str, ttl_ms: int) -> NewMessage:
        self.n += 1
        now = int(time.time() * 1000)
        return NewMessage(
            to,
            f"01BENCH{self.n:019d}",
            b'{"text":"' + b"x" * 180 + b'"}',
            None,
            "normal",
            now,
            now + ttl_ms,
            "chat",
            sender,
        )

    async def run(self, mode: str) -> tuple[float, float, float]:
        """(NATS µs, client µs, wall µs) per chat message and its receipt."""
        store, pairs, n = self.stores[mode], self.pins(mode), self.args.messages
        gate = asyncio.Semaphore(64)
        chats = [self.chat(*pairs[i % len(pairs)], 600_000) for i in range(n)]

        async def one(m: NewMessage) -> None:
            async with gate:
                (result,), _ = await store.append([m])
                assert not hasattr(result, "reason"), result

        nats0, cpu0, t0 = self.nats_cpu(), self_cpu(), time.monotonic()
        await asyncio.gather(*(one(m) for m in chats))
        receipts = []
        for m in chats:
            r = self.chat(m.pin, m.sender or "", 600_000)
            receipts.append(
                NewMessage(
                    m.sender or "",
                    r.id,
                    receipt_data(m.id, "delivered"),
                    None,
                    "normal",
                    r.sent_at_ms,
                    r.expires_at_ms,
                    "receipt",
                    m.pin,
                )
            )
        await asyncio.gather(*(one(m) for m in receipts))
        wall = time.monotonic() - t0
        await asyncio.sleep(1.0)  # the replicas apply what the leader decided
        spent = self.nats_cpu() - nats0 - self.idle_per_s * (time.monotonic() - t0)
        return spent / n * 1e6, (self_cpu() - cpu0) / n * 1e6, wall / n * 1e6

    async def push(self, mode: str) -> float:
        """NATS µs per push (no chat, no receipt): the streams' new settings alone."""
        store, pairs, n = self.stores[mode], self.pins(mode), self.args.messages
        gate = asyncio.Semaphore(64)
        pushes = [self.chat(*pairs[i % len(pairs)], 600_000) for i in range(n)]
        pushes = [replace(m, kind="push", sender=None) for m in pushes]

        async def one(m: NewMessage) -> None:
            async with gate:
                await store.append([m])

        nats0, t0 = self.nats_cpu(), time.monotonic()
        await asyncio.gather(*(one(m) for m in pushes))
        await asyncio.sleep(1.0)
        spent = self.nats_cpu() - nats0 - self.idle_per_s * (time.monotonic() - t0)
        return float(spent / n * 1e6)

    async def expire(self) -> float:
        """NATS µs per undelivered chat beyond its append: fire, hand out, ack."""
        store, pairs, n = self.stores["after"], self.pins("after"), self.args.messages
        chats = [self.chat(*pairs[i % len(pairs)], 1000) for i in range(n)]
        gate = asyncio.Semaphore(64)

        async def one(m: NewMessage) -> None:
            async with gate:
                await store.append([m])

        await asyncio.gather(*(one(m) for m in chats))
        await asyncio.sleep(0.5)
        nats0, t0 = self.nats_cpu(), time.monotonic()
        left = n
        while left > 0:
            got = await store.expired_chats(int(time.time() * 1000), 1000)
            await store.forget([(m.pin, m.cursor) for m in got])
            left -= len(got)
        await asyncio.sleep(1.0)
        spent = self.nats_cpu() - nats0 - self.idle_per_s * (time.monotonic() - t0)
        return float(spent / n * 1e6)


async def measure(
    args: argparse.Namespace,
) -> tuple[dict[str, list[tuple[float, float, float]]], dict[str, list[float]], list[float]]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-expiry-"))
    cluster = NatsCluster(directory, 3, cluster_name="expiry")
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in MODES}
    pushes: dict[str, list[float]] = {m: [] for m in MODES}
    fired: list[float] = []
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        bench = Bench(cluster, args)
        await bench.open()
        start = bench.nats_cpu()
        await asyncio.sleep(3)
        bench.idle_per_s = (bench.nats_cpu() - start) / 3
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                got = await bench.run(mode)
                results[mode].append(got)
                console.print(
                    f"{mode} #{r + 1}: NATS {got[0]:.0f} µs, client {got[1]:.0f} µs, "
                    f"wall {got[2]:.0f} µs per chat message and its receipt"
                )
            for mode in MODES if r % 2 == 1 else MODES[::-1]:
                pushes[mode].append(await bench.push(mode))
                console.print(f"{mode} #{r + 1}: NATS {pushes[mode][-1]:.0f} µs per push")
            fired.append(await bench.expire())
            console.print(f"expired #{r + 1}: NATS {fired[-1]:.0f} µs per undelivered chat")
        for store in bench.stores.values():
            await store.destroy()
            await store.close()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return results, pushes, fired


def report(
    args: argparse.Namespace,
    results: dict[str, list[tuple[float, float, float]]],
    pushes: dict[str, list[float]],
    fired: list[float],
) -> str:
    headers = ["engine", "NATS µs/chat", "client µs/chat", "wall µs/chat", "runs"]
    rows = []
    for mode, runs in results.items():
        med = [statistics.median(r[k] for r in runs) for k in range(3)]
        rows.append([mode, fmt(med[0], 0), fmt(med[1], 0), fmt(med[2], 0), str(len(runs))])
    rows.append(
        [
            "after, undelivered: fire + notice",
            fmt(statistics.median(fired), 0),
            "-",
            "-",
            str(len(fired)),
        ]
    )
    for mode, runs_p in pushes.items():
        rows.append(
            [f"{mode}, a push", fmt(statistics.median(runs_p), 0), "-", "-", str(len(runs_p))]
        )
    print_table("A chat message and its delivered receipt on an R3 cluster", headers, rows)
    each = "\n".join(
        f"- {mode} #{i + 1}: NATS {r[0]:.0f}, client {r[1]:.0f}, wall {r[2]:.0f} µs"
        for mode, runs in results.items()
        for i, r in enumerate(runs)
    )
    return (
        f"{args.messages:,} chat messages over {args.pairs} pairs, each an append of its "
        f"own, 64 in flight, then their {args.messages:,} delivered receipts, into a "
        f"JetStreamStore on 3 nats-server nodes (this machine, R3 file streams); "
        f"`before`: `chat_expiry=False`, `after`: each chat with its expiry schedule, each "
        f"receipt with its cancel; alternated over {args.rounds} rounds, medians. NATS: "
        f"the servers' utime+stime summed, less their idle rate. The last row: "
        f"{args.messages:,} chats with a 1 s ttl left to expire, until every notice was "
        f"handed out and acknowledged (no receipts stored). `a push`: {args.messages:,} "
        f"pushes the same way, to the same stores.\n\n"
        + md_table(headers, rows)
        + "\n\n"
        + each
        + "\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    results, pushes, fired = await measure(args)
    body = report(args, results, pushes, fired)
    if not args.no_results:
        path = write_section(MODULE, "Chat expiry on the cluster (bench.js_chat_expiry)", body)
        console.print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main())
