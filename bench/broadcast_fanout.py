"""Broadcast fan-out: one broadcast to a 100,000-member channel, 10,000 of them linked (issue 15).

Run (from a checkout, no make)::

    PYTHONPATH=src:. python -m bench.broadcast_fanout                 # both stores, full size
    PYTHONPATH=src:. python -m bench.broadcast_fanout --quick         # 10,000 / 1,000, SQLite
    PYTHONPATH=src:. python -m bench.broadcast_fanout --stores cluster --members 50000

For each store (``--stores``: ``sqlite``, the relay's own file; ``cluster``, a relay on
a fresh 3-node JetStream cluster of nats-server processes), on real processes on
127.0.0.1, each stopped by its pid:

1. **Seed, before the relay starts, through the Store API** (not 2 x N HTTP calls):
   one tenant, one channel (class ``service``), ``--members`` devices
   (``create_device`` with ``hash_secret(token)``), each ``join_channel``-ed; many
   calls in flight, so the store group-commits them.  Timed, but not part of the
   figures.
2. Start the relay (``serve --broadcast-page``); make a ``broadcast`` key for the
   tenant (POST /v1/tenants/{id}/keys).
3. Link ``--linked`` members, picked at random (so they are spread over every page
   of the fan-out), from ``--link-procs`` bench.linkgen processes (``recv``: one
   cumulative ack per read; at most 5,000 links per source address).
4. The disk: ``--disk-probes`` overwrites of a 4 KiB block, each followed by
   fdatasync, in the store's folder (the relay's data, or the nats-servers'),
   just before the broadcast (as bench.latency).
5. POST /v1/channels/{id}/messages; the clock starts at its 201.  Meanwhile every
   ``--sample`` s: the relay's VmRSS (and the nats-servers') and GET
   /v1/broadcasts/{id} (``members`` reached so far: the fan-out's progress).
   Measured:

   - **all linked read**: 201 → the last linked member read its ``msg`` (each
     linkgen says when its last link got it; ``time.time()`` on this machine), and
     the first one;
   - **all linked acked**: 201 → GET /v1/broadcasts/{id} says ``acked`` = linked.
     The relay adds its ack counts to the store once a second, so this is up to ~1 s
     late: the links ack in the same read that got the message (the linkgens count
     their acks too);
   - **fan-out done**: 201 → the broadcast's ``done_at`` (the relay's clock, same
     machine);
   - **member-deliveries/s**: stored members / fan-out time, and ms per page;
   - CPU (utime+stime, /proc) from the 201 until all is quiet: the relay's event-loop
     thread, its other threads and children (the SQLite writer), the nats-servers,
     and the bench's clients (linkgens and this process) apart: they share the
     machine's 2 cores with the relay.

Figures go to bench/RESULTS.md (one section per store) and, with the timeline,
to bench/out/broadcast_fanout-*/results-<store>.json.  Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.cluster_systems import ClusterRelay, NatsCluster
from bench.common import (
    Child,
    OtherLoad,
    RelayProcess,
    add_common_args,
    child_pids,
    console,
    cpu_seconds,
    linkgen_argv,
    md_table,
    percentile,
    print_table,
    progress,
    rss_kb,
    run_dir,
    run_main,
    source_addresses,
    stop_all,
    thread_cpu,
    wait_machine_quiet,
    wait_quiet,
    write_credentials,
    write_section,
)
from bench.latency import commit_summary, disk_probe
from pinrelay.core.channels import MAX_CHANNELS, Channel, new_channel_id
from pinrelay.core.ids import hash_secret, new_pin, new_secret
from pinrelay.core.tenants import Tenant
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.store.base import Store
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.sqlite import SqliteStore

MODULE = "bench.broadcast_fanout"
SQLITE = "sqlite"
CLUSTER = "cluster"
STORES = (SQLITE, CLUSTER)
#: Links per source address (RECIPES: many sockets on one address make the kernel's
#: port search crawl).
PER_SOURCE = 5000
_TENANT_CHARS = "abcdefghijklmnopqrstuvwxyz234567"


@dataclass
class Result:
    store: str
    members: int
    linked: int
    page: int
    seed_devices_s: float = 0.0
    seed_joins_s: float = 0.0
    link_s: float = 0.0
    links_failed: int = 0
    disk_ms: dict[str, float] = field(default_factory=dict)
    post_ms: float = 0.0
    first_read_s: float = float("nan")
    all_read_s: float = float("nan")
    read_count: int = 0
    all_acked_s: float = float("nan")
    acked: int = 0
    link_acks: int = 0
    done_s: float = float("nan")
    view: dict[str, Any] = field(default_factory=dict)
    relay_rss_kb: dict[str, int] = field(default_factory=dict)
    nats_rss_kb: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    other_cores: float = float("nan")
    #: The relay's store commits from the 201 until quiet (SQLite; bench.latency's summary).
    commits: dict[str, float] = field(default_factory=dict)
    #: Bytes the store's processes wrote to the disk meanwhile (/proc/<pid>/io).
    written: int = 0
    #: (seconds after the 201, members reached, relay RSS KiB) per sample.
    timeline: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return int(self.view.get("stored", 0))

    @property
    def per_s(self) -> float:
        return self.stored / self.done_s if self.done_s > 0 else float("nan")

    @property
    def pages(self) -> int:
        return max(1, math.ceil(int(self.view.get("members", 0)) / self.page))


# --- seeding ---------------------------------------------------------------------
async def seed(
    store: Store, args: argparse.Namespace, result: Result
) -> tuple[str, str, list[tuple[str, str]]]:
    """Tenant, channel, members (joined); returns their ids and the linked (pin, token)s."""
    now_ms = int(time.time() * 1000)
    tenant = "".join(secrets.choice(_TENANT_CHARS) for _ in range(12))
    await store.create_tenant(Tenant(id=tenant, name="broadcast bench", created_ms=now_ms))
    channel = Channel(
        id=new_channel_id(os.urandom),
        tenant=tenant,
        name="everyone",
        klass="service",
        created_ms=now_ms,
    )
    await store.create_channel(channel, MAX_CHANNELS)
    linked_at = set(random.Random(args.seed).sample(range(args.members), args.linked))
    pins: list[str] = []
    creds: list[tuple[str, str]] = []
    in_flight = args.seed_concurrency or (2000 if isinstance(store, SqliteStore) else 128)
    gate = asyncio.Semaphore(in_flight)
    with progress() as bar:
        made = bar.add_task("seed devices (Store API)", total=args.members)

        async def device(index: int) -> None:
            token = new_secret(os.urandom)
            async with gate:
                while True:  # a PIN taken already: another
                    pin = new_pin(os.urandom)
                    if await create_device(store, pin, hash_secret(token), now_ms, tenant):
                        break
            pins.append(pin)
            if index in linked_at:
                creds.append((pin, token))
            bar.advance(made)

        t0 = time.perf_counter()
        await asyncio.gather(*(device(i) for i in range(args.members)))
        if isinstance(store, JetStreamStore):
            # The devices made past create_device (below): counted in one go.
            await store.tenants.count_devices(tenant, len(pins))
        result.seed_devices_s = time.perf_counter() - t0
        joins = bar.add_task("seed joins (Store API)", total=len(pins))

        async def join(pin: str) -> None:
            async with gate:
                if not await store.join_channel(pin, channel.id, True):
                    raise RuntimeError(f"join_channel({pin}) found no device")
            bar.advance(joins)

        # Interleaved by the PIN's first two digits (the cluster's membership shards),
        # so joins in flight together rarely change the same shard.
        by_shard: dict[str, list[str]] = {}
        for pin in pins:
            by_shard.setdefault(pin[:2], []).append(pin)
        order = [p for group in itertools.zip_longest(*by_shard.values()) for p in group if p]
        t0 = time.perf_counter()
        await asyncio.gather(*(join(p) for p in order))
        result.seed_joins_s = time.perf_counter() - t0
    console.print(
        f"seeded {len(pins):,} members in {result.seed_devices_s:.1f} s (devices)"
        f" + {result.seed_joins_s:.1f} s (joins)"
    )
    return tenant, channel.id, creds


async def create_device(store: Store, pin: str, token_hash: str, now_ms: int, tenant: str) -> bool:
    """One member device of ``tenant``; False if the PIN is taken.

    On JetStream, ``create_device`` first adds 1 to the tenant's device count by
    compare-and-set on one key, so creates of one tenant in flight together
    conflict: at 32 in flight they failed ("too many concurrent updates").  The
    seed makes the device record with the engine's own ``devices.create`` and adds
    the count once for all (:func:`seed`).
    """
    if isinstance(store, SqliteStore):
        return await store.create_device(pin, token_hash, None, now_ms, tenant) is not None
    assert isinstance(store, JetStreamStore)
    return await store.devices.create(pin, token_hash, None, now_ms, tenant) is not None


async def seeded_store(store: Store, args: argparse.Namespace, result: Result) -> Any:
    await store.open()
    try:
        return await seed(store, args, result)
    finally:
        await store.close()


# --- one store's run -------------------------------------------------------------
class Setup:
    """The processes of one run: the relay, the nats-servers (cluster), the linkgens."""

    def __init__(self, store: str, logs: Path) -> None:
        self.store = store
        self.logs = logs
        self.nats: NatsCluster | None = None
        self.relay: RelayProcess | None = None
        self.linkgens: list[Child] = []
        self.data = Path(tempfile.mkdtemp(prefix="pinrelay-bench-bcast-"))

    @property
    def disk_dir(self) -> Path:
        return self.nats.directory if self.nats is not None else self.data

    def nats_pids(self) -> list[int]:
        return self.nats.pids if self.nats is not None else []

    async def stop(self) -> None:
        await stop_all(self.linkgens)
        if self.relay is not None:
            self.relay.stop()
        if self.nats is not None:
            self.nats.stop()
        shutil.rmtree(self.data, ignore_errors=True)


async def open_links(
    setup: Setup, args: argparse.Namespace, creds: list[tuple[str, str]], result: Result
) -> None:
    assert setup.relay is not None
    procs = max(1, min(args.link_procs, len(creds)))
    share = -(-len(creds) // procs)
    first_source = 2
    welcomed: dict[str, int] = {}
    with progress() as bar:
        task = bar.add_task("open links (linkgen)", total=len(creds))

        def on_event(child: Child, event: dict[str, Any]) -> None:
            if "welcomed" in event:
                welcomed[child.name] = int(event["welcomed"])
                bar.update(task, completed=sum(welcomed.values()))

        t0 = time.perf_counter()
        for n in range(procs):
            mine = creds[n * share : (n + 1) * share]
            if not mine:
                break
            path = write_credentials(setup.logs / f"{setup.store}-links-{n + 1}.json", mine)
            sources = source_addresses(-(-len(mine) // PER_SOURCE), first_source)
            first_source += len(sources)
            argv = linkgen_argv(
                setup.relay.link_port,
                path,
                ",".join(sources),
                "recv",
                "--expect",
                str(len(mine)),
                "--report-interval",
                "0.5",
            )
            child = Child(f"{setup.store}-linkgen-{n + 1}", argv, setup.logs)
            child.on_event = on_event
            setup.linkgens.append(child)
            await child.start()
        readies = [await c.expect("ready", args.timeout) for c in setup.linkgens]
        result.link_s = time.perf_counter() - t0
    result.links_failed = sum(int(r["failed"]) for r in readies)
    opened = sum(int(r["welcomed"]) for r in readies)
    console.print(f"{opened:,} links open ({result.links_failed} failed) in {result.link_s:.1f} s")


async def broadcast_key(http: httpx.AsyncClient, tenant: str) -> str:
    r = await http.post(
        f"/v1/tenants/{tenant}/keys", json={"name": "bench broadcasts", "scope": "broadcast"}
    )
    if r.status_code != 201:
        raise RuntimeError(f"making a broadcast key: {r.status_code} {r.text}")
    return str(r.json()["key"])


def summary_ms(sorted_s: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(sorted_s, 50) * 1000,
        "p99": percentile(sorted_s, 99) * 1000,
        "max": sorted_s[-1] * 1000 if sorted_s else float("nan"),
    }


async def measure(
    setup: Setup, args: argparse.Namespace, tenant: str, channel: str, result: Result
) -> None:
    relay = setup.relay
    assert relay is not None
    admin = {"Authorization": f"Bearer {relay.admin_key}"}
    async with (
        httpx.AsyncClient(base_url=relay.url, headers=admin, timeout=60) as admin_http,
        httpx.AsyncClient(base_url=relay.url, timeout=60) as http,
    ):
        key = await broadcast_key(admin_http, tenant)
        http.headers["Authorization"] = f"Bearer {key}"
        probes = await asyncio.to_thread(disk_probe, setup.disk_dir, args.disk_probes)
        result.disk_ms = summary_ms(probes)
        await wait_quiet(relay.pid, timeout=30)
        nats = setup.nats_pids()
        gens = [c.pid for c in setup.linkgens]
        result.relay_rss_kb["before"] = relay.rss()
        result.nats_rss_kb["before"] = sum(rss_kb(p) for p in nats)
        loop0 = thread_cpu(relay.pid).get(relay.pid, 0.0)
        relay0, nats0 = relay.cpu(), sum(cpu_seconds(p) for p in nats)
        gens0, own0 = sum(cpu_seconds(p) for p in gens), cpu_seconds(os.getpid())
        other = OtherLoad([relay.pid, *nats, *gens])
        commits0 = await commit_metrics(admin_http)
        written0 = write_bytes([relay.pid, *nats])

        body = {"data": {"text": "storm warning until 18:00"}, "ttl": 3600}
        t_post = time.time()
        r = await http.post(f"/v1/channels/{channel}/messages", json=body)
        t0 = time.time()
        if r.status_code != 201:
            raise RuntimeError(f"broadcast: {r.status_code} {r.text}")
        result.post_ms = (t0 - t_post) * 1000
        bid = str(r.json()["id"])
        peak_relay = peak_nats = 0
        view: dict[str, Any] = {}
        deadline = time.monotonic() + args.timeout
        with progress() as bar:
            task = bar.add_task("fan-out (members reached)", total=args.members)
            while time.monotonic() < deadline:
                rss = relay.rss()
                peak_relay = max(peak_relay, rss)
                peak_nats = max(peak_nats, sum(rss_kb(p) for p in nats))
                view = (await http.get(f"/v1/broadcasts/{bid}")).json()
                now = time.time()
                result.timeline.append((now - t0, int(view["members"]), rss))
                bar.update(task, completed=int(view["members"]))
                if view["acked"] >= args.linked and math.isnan(result.all_acked_s):
                    result.all_acked_s = now - t0
                read = all("complete" in c.latest for c in setup.linkgens)
                if view["done_at"] is not None and read and view["acked"] >= args.linked:
                    break
                if (
                    view["done_at"] is not None
                    and read
                    and now - t0 > args.ack_wait + parse_ms(view["done_at"], t0)
                ):
                    break  # some acks never counted: reported as such
                await asyncio.sleep(args.sample)
            else:
                console.print("[red]timed out waiting for the fan-out[/]")
        result.view = view
        if view.get("done_at"):
            result.done_s = parse_ms(view["done_at"], t0)
        completes = [c.latest["complete"] for c in setup.linkgens if "complete" in c.latest]
        if len(completes) == len(setup.linkgens):
            result.all_read_s = max(float(e["t"]) for e in completes) - t0
            result.first_read_s = min(float(e["first_t"]) for e in completes) - t0
        result.read_count = sum(int(e["received"]) for e in completes)
        result.acked = int(view.get("acked", 0))
        await wait_quiet(relay.pid, timeout=30)
        result.window_s = time.time() - t0
        result.other_cores = other.cores()
        result.commits = commit_summary(commits0, await commit_metrics(admin_http))
        result.written = write_bytes([relay.pid, *nats]) - written0
        relay_cpu = relay.cpu() - relay0
        loop_cpu = thread_cpu(relay.pid).get(relay.pid, 0.0) - loop0
        result.cpu_s = {
            "relay": relay_cpu,
            "relay loop": loop_cpu,
            "relay rest": relay_cpu - loop_cpu,
            "nats": sum(cpu_seconds(p) for p in nats) - nats0,
            "linkgens": sum(cpu_seconds(p) for p in gens) - gens0,
            "bench": cpu_seconds(os.getpid()) - own0,
        }
        result.relay_rss_kb["peak"] = peak_relay
        result.relay_rss_kb["after"] = relay.rss()
        result.nats_rss_kb["peak"] = peak_nats
        stats = [await c.request("stats", "stats") for c in setup.linkgens]
        result.link_acks = sum(int(s["acks"]) for s in stats)


async def commit_metrics(http: httpx.AsyncClient) -> dict[str, float]:
    """The relay's store-commit histograms (GET /metrics; SQLite's writer only)."""
    r = await http.get("/metrics")
    values: dict[str, float] = {}
    if r.status_code == 200:
        for line in r.text.splitlines():
            if line.startswith(("pinrelay_store_commit_seconds", "pinrelay_store_commit_batch")):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
    return values


def write_bytes(pids: list[int]) -> int:
    """Bytes the processes (and their children) sent to the disk (/proc/<pid>/io)."""
    total = 0
    for pid in [*pids, *(c for p in pids for c in child_pids(p))]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total


def parse_ms(stamp: str, t0: float) -> float:
    """Seconds from ``t0`` (time.time()) to an RFC 3339 timestamp."""
    return parse_rfc3339(stamp) / 1000 - t0


async def one_store(store: str, args: argparse.Namespace, logs: Path) -> Result:
    result = Result(store, args.members, args.linked, args.page)
    setup = Setup(store, logs)
    max_links = args.linked + 100
    extra = ["--broadcast-page", str(args.page)]
    try:
        if store == SQLITE:
            seeded = await seeded_store(SqliteStore(setup.data / "pinrelay.db"), args, result)
            setup.relay = RelayProcess(
                logs, data=setup.data, name="sqlite-relay", max_links=max_links, extra=extra
            )
        else:
            setup.nats = NatsCluster(logs, "bcast", args.nats_sync)
            await setup.nats.start()
            # Patient: a seed of 100,000 on a busy 2-core machine is no latency test.
            js = JetStreamStore(
                setup.nats.urls.split(","),
                name="pinrelay-bench-seed",
                request_timeout=10.0,
                retry_for=60.0,
            )
            seeded = await seeded_store(js, args, result)
            setup.relay = ClusterRelay(
                logs,
                setup.nats.urls,
                "relay-1",
                data=setup.data,
                max_links=max_links,
                extra=extra,
            )
        tenant, channel, creds = seeded
        await setup.relay.start(timeout=120)
        await open_links(setup, args, creds, result)
        await measure(setup, args, tenant, channel, result)
    finally:
        await setup.stop()
    (logs / f"results-{store}.json").write_text(json.dumps(asdict(result), indent=1))
    return result


# --- the report ------------------------------------------------------------------
def fmt_s(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def mib(kb: int) -> str:
    return f"{kb / 1024:,.1f} MiB"


def rows_of(r: Result) -> list[list[str]]:
    cpu = r.cpu_s
    stored = max(1, r.stored)
    page_ms = r.done_s / r.pages * 1000 if r.done_s == r.done_s else float("nan")
    rows = [
        ["members (joined) / linked", f"{r.members:,} / {r.linked:,}"],
        [
            "seed: create_device / join_channel (Store API)",
            f"{r.seed_devices_s:.1f} s / {r.seed_joins_s:.1f} s",
        ],
        [
            "links open (failed), time",
            f"{r.linked - r.links_failed:,} ({r.links_failed}), {r.link_s:.1f} s",
        ],
        [
            "disk: fdatasync of 4 KiB p50 / p99 / max",
            " / ".join(f"{r.disk_ms.get(k, float('nan')):.2f}" for k in ("p50", "p99", "max"))
            + " ms",
        ],
        ["POST → 201", f"{r.post_ms:.1f} ms"],
        ["201 → first linked member read it", f"{fmt_s(r.first_read_s)} s"],
        ["201 → every linked member read it", f"{fmt_s(r.all_read_s)} s ({r.read_count:,} read)"],
        [
            "201 → every linked member's ack counted",
            f"{fmt_s(r.all_acked_s)} s ({r.acked:,} acked; ~1 s granularity)",
        ],
        ["201 → fan-out done (done_at)", f"**{fmt_s(r.done_s)} s**"],
        [
            "members reached / stored / skipped",
            f"{r.view.get('members', 0):,} / {r.stored:,} / {r.view.get('skipped', 0):,}",
        ],
        ["delivered (sends to links)", f"{r.view.get('delivered', 0):,}"],
        ["member-deliveries/s (stored / fan-out time)", f"**{fmt_s(r.per_s, 0)}**"],
        ["pages, ms per page", f"{r.pages:,} of {r.page}, {fmt_s(page_ms, 1)} ms"],
        [
            "relay RSS before / peak / after",
            " / ".join(mib(r.relay_rss_kb.get(k, 0)) for k in ("before", "peak", "after")),
        ],
        [
            "relay CPU (event loop / rest)",
            f"{cpu.get('relay', 0):.2f} s"
            f" ({cpu.get('relay loop', 0):.2f} / {cpu.get('relay rest', 0):.2f})",
        ],
        [
            "bytes to disk by the store (201 → quiet; /proc io write_bytes)",
            f"{r.written / 2**20:,.1f} MiB, {r.written / stored:,.0f} B per stored member",
        ],
        ["relay CPU per stored member", f"{cpu.get('relay', 0) / stored * 1e6:.1f} µs"],
        [
            "bench clients CPU: linkgens / this process",
            f"{cpu.get('linkgens', 0):.2f} s / {cpu.get('bench', 0):.2f} s",
        ],
        [
            "CPU window (201 → relay quiet), other processes",
            f"{r.window_s:.1f} s, {fmt_s(r.other_cores)} cores",
        ],
    ]
    if r.commits:
        c = r.commits
        rows.insert(
            14,
            [
                "store commits (201 → quiet): count, per page, writes each, mean",
                f"{c['commits']:,.0f}, {c['commits'] / r.pages:.1f}, {c['writes_per_commit']:.1f},"
                f" {c['mean_ms']:.2f} ms (over 10 ms: {c['over_10ms']:.1%})",
            ],
        )
    if r.store == CLUSTER:
        rows.insert(15, ["nats-servers CPU (3 nodes)", f"{cpu.get('nats', 0):.2f} s"])
        rows.insert(
            14,
            [
                "nats-servers RSS before / peak (3 nodes)",
                f"{mib(r.nats_rss_kb.get('before', 0))} / {mib(r.nats_rss_kb.get('peak', 0))}",
            ],
        )
    return rows


def progress_rows(r: Result) -> list[list[str]]:
    """Members reached at each tenth of the fan-out: does it slow down as it goes?"""
    out: list[list[str]] = []
    if not r.timeline or r.done_s != r.done_s:
        return out
    marks = [r.done_s * k / 10 for k in range(1, 11)]
    prev_t, prev_m = 0.0, 0
    for mark in marks:
        t, m, rss = min(r.timeline, key=lambda s: abs(s[0] - mark))
        rate = (m - prev_m) / (t - prev_t) if t > prev_t else float("nan")
        out.append([f"{t:.2f}", f"{m:,}", fmt_s(rate, 0), mib(rss)])
        prev_t, prev_m = t, m
    return out


def body_of(r: Result, args: argparse.Namespace) -> str:
    where = (
        "one relay on its SQLite file (fsync on every commit)"
        if r.store == SQLITE
        else "one relay on a 3-node JetStream cluster (nats-server, R3 file streams,"
        f" sync_interval {args.nats_sync or 'default'})"
    )
    text = (
        f"One broadcast to a channel of {r.members:,} members, {r.linked:,} of them linked"
        f" (picked at random, so spread over every page), {where}; fan-out pages of"
        f" {r.page} members (`--broadcast-page`). Tenant, channel, devices and"
        " memberships were seeded through the Store API (`create_device` with"
        " `hash_secret(token)`, `join_channel`, many in flight) before the relay started,"
        " not over HTTP. Links: bench.linkgen (`recv`, one cumulative ack per read),"
        f" {args.link_procs} processes. The clock starts at the broadcast's 201;"
        " read times are `time.time()` in the linkgens, `done_at` is the relay's clock"
        " (same machine). Acks are counted by the relay and added to the store every"
        " second, so the acked time is up to ~1 s late. The disk was measured just before"
        " the broadcast in the store's folder. CPU is utime+stime from /proc over the"
        " window; relay 'rest' is its other threads and children (SQLite's writer"
        " process). The 2 cores are shared by the relay, its store and the load generators.\n\n"
    )
    text += md_table(["", "value"], rows_of(r))
    prog = progress_rows(r)
    if prog:
        text += "\n\nProgress of the fan-out (GET /v1/broadcasts/{id} every"
        text += f" {args.sample:g} s):\n\n"
        text += md_table(
            ["s after 201", "members reached", "members/s since previous", "relay RSS"], prog
        )
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--stores", default="sqlite,cluster", help="sqlite, cluster or both")
    parser.add_argument("--members", type=int, default=100_000, help="channel members")
    parser.add_argument("--linked", type=int, default=10_000, help="members linked")
    parser.add_argument("--page", type=int, default=500, help="serve --broadcast-page")
    parser.add_argument("--link-procs", type=int, default=2, help="bench.linkgen processes")
    parser.add_argument(
        "--seed-concurrency",
        type=int,
        default=0,
        help="store calls in flight (0: 2000 on SQLite, 128 on the cluster)",
    )
    parser.add_argument("--disk-probes", type=int, default=2000, help="fdatasyncs measured")
    parser.add_argument("--sample", type=float, default=0.1, help="s between samples")
    parser.add_argument(
        "--ack-wait", type=float, default=10.0, help="s to wait for acks after done"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="s for links, fan-out")
    parser.add_argument(
        "--nats-sync", default=None, help="JetStream sync_interval (default: the server's)"
    )
    parser.add_argument("--seed", type=int, default=15, help="which members are linked")
    parser.add_argument("--quick", action="store_true", help="10,000 members, 1,000 linked, SQLite")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.linked, args.stores = 10_000, 1_000, SQLITE
    args.linked = min(args.linked, args.members)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for s in args.stores:
        if s not in STORES:
            parser.error(f"--stores: {s!r} is not one of {', '.join(STORES)}")
    return args


async def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    logs = run_dir("broadcast_fanout")
    results = []
    for store in args.stores:
        if args.wait_quiet:
            await wait_machine_quiet(args.wait_quiet)
        r = await one_store(store, args, logs)
        results.append(r)
        print_table(f"Broadcast fan-out, {store}", ["", "value"], rows_of(r))
        if not args.no_results:
            title = f"Broadcast fan-out, {'SQLite' if store == SQLITE else 'JetStream cluster'}"
            write_section(MODULE, f"{title} ({MODULE})", body_of(r, args), key=f"{MODULE} {store}")
    console.print(f"logs and results-*.json in {logs}")
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main())
