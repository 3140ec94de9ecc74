"""nats-py's socket writes per request, and what coalescing them would save (issue 12).

nats-py queues each command in a buffer and kicks its flusher task when the flush
queue is empty; the flusher writes the whole buffer with one ``writelines`` the next
time it runs.  So requests issued in one loop turn share a write, and a request
alone in its turn costs a write (a syscall, a task switch) of its own.

A real 3-node cluster on 127.0.0.1 and an R3 file stream; one nats-py connection in
this process publishing with a reply (as ``JetStreamStore`` appends do), M requests
per run, in these shapes:

- ``turn K``: K requests issued in one loop turn (a gather), then the next K;
- ``closed N``: N callers, each issuing its next request when its answer came;
- ``paced R``: one request every 1/R s, each in its own loop turn (HTTP pushes
  arriving one by one at a relay), open loop.

Counted by wrapping ``nats.aio.transport.TcpTransport.write``/``writelines`` (a
public class, wrapped here only): writes per request; measured: this process's
utime+stime per request, latency p50/p99.  ``--coalesce-us`` adds runs with a
*prototype* (this file only, it overrides nats-py's private ``_flush_pending``)
that kicks the flusher at most once per window, to see what cross-turn coalescing
could save at the price of that much latency.  Runs are alternated over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats.aio.transport
from nats.aio.client import Client as NATS

from bench.common import fmt, percentile, print_table, run_main
from pinrelay.testing.natsproc import NatsCluster

PAYLOAD = b'{"id":"01BENCH","data":{"title":"build finished"},"ttl":3600}' * 3


class Writes:
    """Counts nats-py's socket writes (all connections of this process)."""

    calls = 0

    @classmethod
    def install(cls) -> None:
        transport = nats.aio.transport.TcpTransport
        write: Any = transport.write
        writelines: Any = transport.writelines

        def counted_write(self: Any, payload: Any) -> Any:
            cls.calls += 1
            return write(self, payload)

        def counted_writelines(self: Any, payload: Any) -> Any:
            cls.calls += 1
            return writelines(self, payload)

        transport.write = counted_write  # type: ignore[method-assign]
        transport.writelines = counted_writelines  # type: ignore[method-assign]


class Coalescing(NATS):
    """PROTOTYPE, not for src: the flusher kicked at most once per ``window`` s.

    It overrides nats-py's private ``_flush_pending`` and reads ``_flush_queue``:
    exactly what tests/test_architecture.py keeps out of src.
    """

    window = 0.0
    _timer: asyncio.TimerHandle | None = None

    async def _flush_pending(self, force_flush: bool = False) -> Any:
        if force_flush or self.window <= 0:
            return await super()._flush_pending(force_flush)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._kick)
        return None

    def _kick(self) -> None:
        self._timer = None
        queue = self._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())


async def request(nc: NATS, n: int, latencies: list[float]) -> None:
    t = time.perf_counter()
    msg = await nc.request("w.x", PAYLOAD, timeout=10, headers={"Nats-Msg-Id": f"m{n}"})
    assert b'"seq"' in msg.data, msg.data
    latencies.append(time.perf_counter() - t)


class Counter:
    n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


async def shape_turn(nc: NATS, total: int, k: int, ids: Counter) -> list[float]:
    lat: list[float] = []
    for _ in range(total // k):
        await asyncio.gather(*(request(nc, ids.next(), lat) for _ in range(k)))
    return lat


async def shape_closed(nc: NATS, total: int, n: int, ids: Counter) -> list[float]:
    lat: list[float] = []

    async def caller() -> None:
        for _ in range(total // n):
            await request(nc, ids.next(), lat)

    await asyncio.gather(*(caller() for _ in range(n)))
    return lat


async def shape_paced(nc: NATS, total: int, rate: float, ids: Counter) -> list[float]:
    lat: list[float] = []
    tasks = []
    start = time.monotonic()
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(request(nc, ids.next(), lat)))
    await asyncio.gather(*tasks)
    return lat


async def run(nc: NATS, shape: str, total: int, ids: Counter) -> dict[str, float]:
    kind, _, arg = shape.partition(" ")
    writes0, cpu0, t0 = Writes.calls, time.process_time(), time.monotonic()
    if kind == "turn":
        lat = await shape_turn(nc, total, int(arg), ids)
    elif kind == "closed":
        lat = await shape_closed(nc, total, int(arg), ids)
    else:
        lat = await shape_paced(nc, total, float(arg), ids)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    lat.sort()
    n = len(lat)
    return {
        "rate": n / wall,
        "writes": (Writes.calls - writes0) / n,
        "cpu_us": cpu / n * 1e6,
        "p50": percentile(lat, 50) * 1000,
        "p99": percentile(lat, 99) * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    Writes.install()
    shapes = [f"turn {k}" for k in args.turn] + [f"closed {n}" for n in args.closed]
    shapes += [f"paced {r:g}" for r in args.paced]
    variants = [0.0, *(us / 1e6 for us in args.coalesce_us)]
    results: dict[tuple[str, float], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="nats-writes-") as tmp:
        cluster = NatsCluster(Path(tmp))
        try:
            cluster.start()
            conns: dict[float, NATS] = {}
            for window in variants:
                nc = Coalescing()
                nc.window = window
                await nc.connect(cluster.urls)
                conns[window] = nc
            body = {"name": "W", "subjects": ["w.>"], "num_replicas": 3, "max_msgs": 100_000}
            first = conns[0.0]
            for _ in range(50):  # the cluster may still be electing its meta leader
                answer = await first.request("$JS.API.STREAM.CREATE.W", json.dumps(body).encode())
                if "error" not in json.loads(answer.data):
                    break
                await asyncio.sleep(0.2)
            ids = Counter()
            for window in variants:  # warm up
                await run(conns[window], "closed 8", 400, ids)
            for rnd in range(args.rounds):
                for shape in shapes:
                    order = variants if rnd % 2 == 0 else variants[::-1]
                    for window in order:
                        if window and not shape.startswith("paced"):
                            continue
                        got = await run(conns[window], shape, args.messages, ids)
                        results.setdefault((shape, window), []).append(got)
                        print(
                            f"round {rnd + 1} {shape:>11} window {window * 1e6:4.0f} µs: "
                            f"{got['writes']:.2f} writes/req {got['cpu_us']:4.0f} µs/req",
                            flush=True,
                        )
            for conn in conns.values():
                await conn.close()
        finally:
            cluster.stop()
    rows = []
    for (shape, window), runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        label = shape if not window else f"{shape}, flush window {window * 1e6:.0f} µs"
        rows.append(
            [
                label,
                fmt(med("rate"), 0),
                fmt(med("writes"), 2),
                fmt(med("cpu_us"), 0),
                fmt(med("p50"), 2),
                fmt(med("p99"), 2),
            ]
        )
    print_table(
        f"nats-py publish requests to an R3 stream, {args.messages} per run, "
        f"medians of {args.rounds} rounds",
        ["shape", "requests/s", "writes/request", "client µs/request", "p50 ms", "p99 ms"],
        rows,
    )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--turn", type=int, nargs="*", default=[1, 8, 64])
    p.add_argument("--closed", type=int, nargs="*", default=[8, 64])
    p.add_argument("--paced", type=float, nargs="*", default=[1000.0])
    p.add_argument("--coalesce-us", type=float, nargs="*", default=[500.0, 2000.0])
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    run_main(main(args), fast_loop=args.loop == "uvloop")
