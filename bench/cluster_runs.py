"""One throughput run of bench.cluster_throughput: a system, a kind of push, a code.

:func:`run_relays` pushes M messages to D online devices through the relays of a
fresh :class:`~bench.cluster_systems.System`, in batches or one push per request
(paced), and measures wall time, CPU per process and the relays' NATS messages;
:func:`run_bare` is JetStream alone (a nats-py publisher, no relay).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from bench.cluster_systems import (
    AFTER,
    BARE,
    BATCH,
    BEFORE,
    SINGLE,
    NatsCluster,
    System,
    bare_kind,
    kernel_threads_cpu,
    tag_of,
)
from bench.common import (
    LOOPBACK,
    Child,
    OtherLoad,
    RelayProcess,
    cpu_seconds,
    create_devices,
    linkgen_argv,
    progress,
    source_addresses,
    stop_all,
    wait_quiet,
    write_credentials,
)
from bench.natsmon import Traffic, TrafficDelta
from bench.rawhttp import Connection
from bench.throughput import (
    batch_bodies,
    count_unacked,
    per_device_counts,
    self_cpu,
    wait_delivered,
)

NAN = float("nan")


@dataclass
class Run:
    system: str
    round: int
    messages: int
    #: BATCH or SINGLE (bare runs: BATCH).
    push: str = BATCH
    #: AFTER (this checkout's src) or BEFORE (--before's).
    code: str = AFTER
    wall_s: float = NAN
    push_s: float = NAN
    relay_cpu_s: float = NAN
    nats_cpu_s: float = NAN
    nats_cpu_by_node: list[float] = field(default_factory=list)
    client_cpu_s: float = NAN
    other_cores: float = NAN
    #: CPU of the kernel's threads meanwhile (part of other_cores): journal, writeback.
    kthreads_cpu_s: float = NAN
    #: Relays' and nats-servers' CPU µs per message, by quarter of the messages delivered.
    quarters_relay_us: list[float] = field(default_factory=list)
    quarters_nats_us: list[float] = field(default_factory=list)
    #: Bare runs: publishes in flight (0: a relay run).
    window: int = 0
    unacked: int = 0
    leader: str = "-"
    #: Single pushes: the rate asked for (pushes/s).
    target_rate: float = NAN
    #: NATS: the relays' (bare: the publisher's) messages to and from the servers, and
    #: all the servers received (routes included); None without NATS.
    traffic: TrafficDelta | None = None

    @property
    def bare(self) -> bool:
        return self.system.startswith(BARE)

    @property
    def label(self) -> str:
        if self.bare:
            return self.system
        return f"{self.system}, {self.push}" + (f" ({BEFORE})" if self.code == BEFORE else "")

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s

    @property
    def push_rate(self) -> float:
        return self.messages / self.push_s

    @property
    def relay_us(self) -> float:
        return self.relay_cpu_s / self.messages * 1e6

    @property
    def nats_us(self) -> float:
        return self.nats_cpu_s / self.messages * 1e6

    @property
    def kthreads_us(self) -> float:
        return self.kthreads_cpu_s / self.messages * 1e6

    @property
    def total_us(self) -> float:
        nats = 0.0 if self.nats_cpu_s != self.nats_cpu_s else self.nats_cpu_s
        return (self.relay_cpu_s + nats) / self.messages * 1e6

    @property
    def to_nats(self) -> float:
        """Messages the relays sent to the servers, per message pushed."""
        return self.traffic.to_servers / self.messages if self.traffic else NAN

    @property
    def from_nats(self) -> float:
        """Messages the servers sent to the relays, per message pushed."""
        return self.traffic.from_servers / self.messages if self.traffic else NAN

    @property
    def nats_all_in(self) -> float:
        """Messages the servers received (clients and routes), per message pushed."""
        return self.traffic.all_in / self.messages if self.traffic else NAN


# --- pushing ---------------------------------------------------------------------
async def open_pushers(relays: Sequence[RelayProcess], count: int) -> list[Connection]:
    """``count`` keep-alive connections, spread over the relays round-robin."""
    conns = []
    for i in range(count):
        relay = relays[i % len(relays)]
        conns.append(await Connection(LOOPBACK, relay.port, relay.admin_key).open())
    return conns


async def push_all(conns: Sequence[Connection], bodies: Sequence[tuple[bytes, int]]) -> None:
    """Every body once, each pusher taking the next; every message must get a 201."""
    next_batch = 0

    async def pusher(conn: Connection) -> None:
        nonlocal next_batch
        while next_batch < len(bodies):
            index = next_batch
            next_batch += 1
            body, size = bodies[index]
            for attempt in range(5):
                status, answer = await conn.post("/v1/messages", body)
                if status == 200 and answer.count(b'"status":201') == size:
                    break
                if status in (429, 503) and attempt < 4:
                    # The batch API is not idempotent without a key: only a whole-batch
                    # refusal (nothing stored) is retried.
                    await asyncio.sleep(0.5)
                    continue
                raise RuntimeError(f"batch {index}: {status} {answer[:300]!r}")

    await asyncio.gather(*(pusher(c) for c in conns))


class _Push(msgspec.Struct):
    data: dict[str, int]
    ttl: int


def single_pushes(pins: Sequence[str], messages: int) -> list[tuple[str, bytes]]:
    """Message i → pins[i mod len(pins)], as (path, body) of one single push each: the
    same messages as :func:`~bench.throughput.batch_bodies` sends in batches."""
    encoder = msgspec.json.Encoder()
    return [
        (f"/v1/devices/{pins[i % len(pins)]}/messages", encoder.encode(_Push({"n": i}, 3600)))
        for i in range(messages)
    ]


async def push_paced(
    conns: Sequence[Connection], pushes: Sequence[tuple[str, bytes]], rate: float
) -> None:
    """Push i starts i / ``rate`` s after the first, on a free connection (one request
    at a time each), or as soon as one is free if none is: so fewer than ``rate`` a
    second if the relays cannot keep up.  Every push must get a 201 (a 429 or 503 is
    retried: nothing was stored)."""
    loop = asyncio.get_running_loop()
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    tasks: set[asyncio.Task[None]] = set()
    failed: list[BaseException] = []

    async def one(conn: Connection, index: int) -> None:
        path, body = pushes[index]
        try:
            for attempt in range(5):
                status, answer = await conn.post(path, body)
                if status == 201:
                    return
                if status in (429, 503) and attempt < 4:
                    await asyncio.sleep(0.5)
                    continue
                raise RuntimeError(f"push {index}: {status} {answer[:300]!r}")
        except BaseException as exc:
            failed.append(exc)
        finally:
            free.put_nowait(conn)

    start = loop.time()
    for i in range(len(pushes)):
        if failed:
            break
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await free.get()
        task = loop.create_task(one(conn, i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    if failed:
        raise failed[0]


async def close_all(conns: Sequence[Connection]) -> None:
    for conn in conns:
        await conn.close()


# --- relays ---------------------------------------------------------------------
async def run_relays(
    args: argparse.Namespace,
    logs: Path,
    kind: str,
    push: str,
    round_no: int,
    code: str = AFTER,
    src: Path | None = None,
) -> Run:
    """D devices linked (half to each relay), M messages pushed (``push``: in batches,
    or one per request paced at ``--single-rate``), every one received and acked."""
    tag = f"{tag_of(kind)}-{push}-{code}-r{round_no}"
    system = System(logs, kind, tag, args.relays, args.devices + 100, src)
    messages = args.messages if push == BATCH else args.single_messages
    children: list[Child] = []
    conns: list[Connection] = []
    run = Run(kind, round_no, messages, push=push, code=code)
    if push == SINGLE:
        run.target_rate = args.single_rate
    try:
        await system.start()
        relays = system.relays
        with progress() as bar:
            creds = await create_devices(relays[0], args.devices, progress=bar)
        pins = [pin for pin, _ in creds]
        counts = per_device_counts(messages, args.devices)
        processes = max(args.link_processes, len(relays))
        size = -(-args.devices // processes)
        sources = source_addresses(processes)
        for i in range(processes):
            first, last = i * size, min(args.devices, (i + 1) * size)
            if first >= last:
                break
            relay = relays[i % len(relays)]
            path = write_credentials(logs / f"creds-{tag}-{i}.json", creds[first:last])
            argv = linkgen_argv(
                relay.link_port, path, sources[i], "recv", "--expect", str(sum(counts[first:last]))
            )
            children.append(Child(f"linkgen-{tag}-{i}", argv, logs))
        for child in children:
            await child.start()
        for child in children:
            ready = await child.expect("ready", 120)
            if ready["failed"]:
                raise RuntimeError(f"{child.name}: {ready['failed']} links failed")
        if push == BATCH:
            bodies = batch_bodies(pins, messages, args.batch)
            conns = await open_pushers(relays, args.pushers)
        else:
            singles = single_pushes(pins, messages)
            conns = await open_pushers(relays, args.single_connections)
        await system.wait_quiet(timeout=10.0)

        traffic0 = system.traffic()
        client_cpu0 = self_cpu() + sum(cpu_seconds(c.pid) for c in children)
        other = OtherLoad([*system.relay_pids, *system.nats_pids, *(c.pid for c in children)])
        relay0, nats0 = system.relay_cpu(), system.nats_cpu()
        kthreads0 = kernel_threads_cpu()
        samples: list[tuple[int, float, float]] = [(0, relay0, sum(nats0))]
        sampler = asyncio.ensure_future(sample_cpu(system, children, samples))
        t0 = time.time()
        delivered = asyncio.ensure_future(
            wait_delivered(children, messages, f"{run.label} #{round_no}", args.timeout)
        )
        try:
            if push == BATCH:
                await push_all(conns, bodies)
            else:
                await push_paced(conns, singles, args.single_rate)
        except BaseException:
            delivered.cancel()
            sampler.cancel()
            raise
        finally:
            run.push_s = time.time() - t0
        try:
            t_end = await delivered
        finally:
            sampler.cancel()
        run.wall_s = t_end - t0
        await system.wait_quiet()
        samples.append((messages, system.relay_cpu(), sum(system.nats_cpu())))
        run.quarters_relay_us = by_quarter([(n, r) for n, r, _ in samples], messages)
        run.quarters_nats_us = by_quarter([(n, c) for n, _, c in samples], messages)
        run.other_cores = other.cores()
        run.kthreads_cpu_s = kernel_threads_cpu() - kthreads0
        run.relay_cpu_s = system.relay_cpu() - relay0
        nats1 = system.nats_cpu()
        run.nats_cpu_by_node = [b - a for a, b in zip(nats0, nats1, strict=True)]
        run.nats_cpu_s = sum(run.nats_cpu_by_node) if nats1 else NAN
        run.client_cpu_s = self_cpu() + sum(cpu_seconds(c.pid) for c in children) - client_cpu0
        if traffic0 is not None:
            traffic1 = system.traffic(traffic0)
            assert traffic1 is not None
            run.traffic = traffic1.since(traffic0)
        if system.nats is not None:
            run.leader = system.nats.stream_leader()
        await close_all(conns)
        run.unacked = await count_unacked(relays[0], pins)
        return run
    finally:
        await close_all(conns)
        await stop_all(children)
        system.stop()


async def sample_cpu(
    system: System, children: Sequence[Child], samples: list[tuple[int, float, float]]
) -> None:
    """(messages received so far, relays CPU s, nats-servers CPU s), every 0.25 s."""
    while True:
        await asyncio.sleep(0.25)
        received = sum(int(c.latest.get("progress", {}).get("received", 0)) for c in children)
        samples.append((received, system.relay_cpu(), sum(system.nats_cpu())))


def by_quarter(samples: Sequence[tuple[int, float]], total: int) -> list[float]:
    """CPU µs per message delivered in each quarter of the run (does the cost grow?)."""
    out: list[float] = []
    last_n, last_cpu = samples[0]
    for q in range(1, 5):
        target = total * q // 4
        n, cpu = next(((n, c) for n, c in samples if n >= target), samples[-1])
        out.append((cpu - last_cpu) / (n - last_n) * 1e6 if n > last_n else NAN)
        last_n, last_cpu = n, cpu
    return out


# --- bare JetStream -------------------------------------------------------------
async def run_bare(
    args: argparse.Namespace, logs: Path, window: int, always: bool, round_no: int
) -> Run:
    """JetStream alone: a nats-py publisher, ``window`` publishes in flight, to an R3
    file stream, on the same subjects (message i → device i mod D) as the relays; the
    servers' CPU and the publisher's NATS messages are measured the same way."""
    kind = bare_kind(window, always)
    tag = f"{tag_of(kind)}-r{round_no}"
    cluster = NatsCluster(logs, tag, "always" if always else None)
    messages = args.messages if window > 1 else min(args.messages, args.serial_messages)
    run = Run(kind, round_no, messages, relay_cpu_s=0.0, client_cpu_s=0.0, window=window)
    nc: NATS | None = None
    try:
        await cluster.start()
        nc = await nats.connect(cluster.urls.split(","), name="bench-bare")
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name="BENCH",
                subjects=["dev.>"],
                num_replicas=3,
                storage=StorageType.FILE,
            )
        )
        payload = os.urandom(args.bare_payload // 2).hex().encode()
        subjects = [f"dev.d{d}.m" for d in range(args.devices)]
        for pid in cluster.pids:
            await wait_quiet(pid, timeout=10.0)
        me = [os.getpid()]
        traffic0: Traffic = cluster.traffic(me)
        client0 = self_cpu()
        other = OtherLoad(cluster.pids)
        kthreads0 = kernel_threads_cpu()
        nats0 = cluster.cpu()
        t0 = time.time()
        with progress() as bar:
            task = bar.add_task(f"{kind} #{round_no}", total=messages)
            for start in range(0, messages, window):
                stop = min(start + window, messages)
                await asyncio.gather(
                    *(
                        js.publish(subjects[i % args.devices], payload, timeout=10.0)
                        for i in range(start, stop)
                    )
                )
                bar.update(task, completed=stop)
        run.wall_s = run.push_s = time.time() - t0
        for pid in cluster.pids:
            await wait_quiet(pid, timeout=15.0)
        run.other_cores = other.cores()
        run.kthreads_cpu_s = kernel_threads_cpu() - kthreads0
        run.nats_cpu_by_node = [b - a for a, b in zip(nats0, cluster.cpu(), strict=True)]
        run.nats_cpu_s = sum(run.nats_cpu_by_node)
        run.client_cpu_s = self_cpu() - client0
        run.traffic = cluster.traffic(me, traffic0).since(traffic0)
        run.leader = cluster.stream_leader("BENCH")
        info = await js.stream_info("BENCH")
        run.unacked = int(info.state.messages) - messages
        return run
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        cluster.stop()
