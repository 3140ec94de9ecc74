"""Memory per device route and per stream subject (bench.cluster_throughput, part 3).

A fresh cluster (default sync); N devices are created; one message is pushed to
each (N stream subjects, ``dev.<D>.m``); then all N are linked to relay 1
(bench.linkgen ``idle``: no acks, so every message stays stored), which writes N
routes to the routes KV bucket.  RSS (VmRSS) of every process after each stage,
once it has gone quiet; a last read ``--idle`` seconds later.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster_runs import close_all, open_pushers, push_all
from bench.cluster_systems import DEFAULT, System
from bench.common import (
    Child,
    console,
    create_devices,
    linkgen_argv,
    md_table,
    print_table,
    progress,
    source_addresses,
    stop_all,
    write_credentials,
)
from bench.rawhttp import Connection
from bench.throughput import batch_bodies

#: Every process here has a hard cap of 20,000 open files.
FD_CAP = 20_000


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


def memory_section(args: argparse.Namespace, memory: Memory) -> list[str]:
    """Print the memory table; its markdown for RESULTS.md."""
    headers, rows, lines = memory_rows(memory)
    print_table("RSS by stage", headers, rows)
    for line in lines:
        console.print(line)
    return [
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
