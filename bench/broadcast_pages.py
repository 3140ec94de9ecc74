"""Where a broadcast's fan-out spends its time, page by page (issue 15; companion
of bench.broadcast_fanout).

Run (from a checkout, no make)::

    PYTHONPATH=src:. python -m bench.broadcast_pages --members 20000
    PYTHONPATH=src:. python -m bench.broadcast_pages --store cluster --members 20000

A relay is built in this process (``Relay(RelayConfig(...))``, no HTTP server), its
store seeded through the Store API (one tenant, one channel, ``--members`` joined
devices, none linked), and one broadcast's fan-out is run by the relay's own
``Broadcaster`` with a timer around each store call it makes (``get_channel``,
``channel_members``, ``admit``, ``append``, ``put_broadcast``).  Reported: wall
time per page, how much of it each call took (they run one after another), and
this process's CPU per page (the event loop; SQLite's writer is another process,
its CPU shown apart).  ``--profile`` also runs cProfile over the fan-out and prints
the functions with the most own time.

Writes one section of bench/RESULTS.md per store (``--no-results``: none).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import sysconfig
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.broadcast_fanout import Result, seed
from bench.cluster_systems import NatsCluster
from bench.common import (
    ROOT,
    OtherLoad,
    console,
    cpu_seconds,
    md_table,
    print_table,
    run_dir,
    run_main,
    write_section,
)
from pinrelay.config import RelayConfig
from pinrelay.core.channels import Broadcast
from pinrelay.core.ids import new_message_id
from pinrelay.relay import Relay
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.ports import free_port

MODULE = "bench.broadcast_pages"
CALLS = ("get_channel", "channel_members", "admit", "append", "put_broadcast")


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return timed


@dataclass
class FanOut:
    wall: float
    cpu: float
    #: CPU of SQLite's writer process, or of the nats-servers.
    beside_cpu: float
    timers: Timers
    done: Broadcast
    #: NATS messages this process sent and received (the cluster).
    out_msgs: int = 0
    in_msgs: int = 0
    #: CPU the rest of the machine used meanwhile, in cores (common.OtherLoad).
    other_cores: float = float("nan")
    profile: cProfile.Profile | None = None


async def fan_out(
    relay: Relay, tenant: str, channel: str, nats: NatsCluster | None, *, profile: bool
) -> FanOut:
    """One broadcast's fan-out by the relay's Broadcaster, each store call timed."""
    store = relay.store
    now = time.time()
    now_ms = int(now * 1000)
    b = Broadcast(
        id=new_message_id(now, os.urandom),
        channel=channel,
        tenant=tenant,
        key_id=None,
        created_ms=now_ms,
        expires_ms=now_ms + 3_600_000,
        data=b'{"text":"storm warning until 18:00"}',
        updated_ms=now_ms,
    )
    await store.put_broadcast(b)  # the API's write, before the fan-out
    timers = Timers()
    saved = {name: getattr(store, name) for name in CALLS}
    for name, fn in saved.items():
        setattr(store, name, timers.wrap(name, fn))
    # Beside this process: SQLite's writer process, or the nats-servers.
    writer = store.writer_pid if isinstance(store, SqliteStore) else None
    beside = [writer] if writer is not None else (nats.pids if nats is not None else [])
    beside0 = sum(cpu_seconds(p) for p in beside)
    conn = store.connection[0] if isinstance(store, JetStreamStore) else None
    stats0 = dict(conn.stats) if conn is not None else {}
    other = OtherLoad(beside)
    prof = cProfile.Profile() if profile else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        if prof is not None:
            prof.enable()
        await relay.broadcaster._run(b)
    finally:
        if prof is not None:
            prof.disable()
        for name, fn in saved.items():
            setattr(store, name, fn)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    beside_cpu = sum(cpu_seconds(p) for p in beside) - beside0
    other_cores = other.cores()
    done = await store.get_broadcast(b.id)
    assert done is not None and done.done_ms is not None, done
    out = FanOut(wall, cpu, beside_cpu, timers, done, other_cores=other_cores, profile=prof)
    if conn is not None:
        out.out_msgs = int(conn.stats["out_msgs"] - stats0["out_msgs"])
        out.in_msgs = int(conn.stats["in_msgs"] - stats0["in_msgs"])
    return out


def report(args: argparse.Namespace, f: FanOut, sqlite: bool) -> str:
    timers, done, wall = f.timers, f.done, f.wall
    pages = timers.calls["append"] or 1
    rows = [
        [name, f"{timers.calls[name]:,}", f"{timers.seconds[name] / pages * 1000:.2f}"]
        for name in CALLS
    ]
    accounted = sum(timers.seconds.values())
    rest = (wall - accounted) / pages * 1000
    rows.append(["(the rest: building drafts, waking, between calls)", "", f"{rest:.2f}"])
    rows.append(["**page, wall**", f"{pages:,}", f"**{wall / pages * 1000:.2f}**"])
    rows.append(["this process's CPU (the relay's event loop)", "", f"{f.cpu / pages * 1000:.2f}"])
    who = "SQLite writer process" if sqlite else "nats-servers (3)"
    rows.append([f"{who} CPU", "", f"{f.beside_cpu / pages * 1000:.2f}"])
    if not sqlite:
        rows.append(
            [
                "NATS messages sent / received",
                "",
                f"{f.out_msgs / pages:,.0f} / {f.in_msgs / pages:,.0f}",
            ]
        )
    headers = ["per page", "calls", "ms per page"]
    title = (
        f"{args.store}: {done.members:,} members ({done.stored:,} stored) in {wall:.2f} s,"
        f" {done.stored / wall:,.0f} member-deliveries/s, pages of {args.page};"
        f" other processes used {f.other_cores:.2f} cores meanwhile"
    )
    print_table(title, headers, rows)
    intro = (
        f"A relay built in this process ({'SQLite' if sqlite else '3-node JetStream cluster'}),"
        f" {args.members:,} members seeded through the Store API, none linked; one"
        " broadcast's fan-out run by the relay's own Broadcaster with a timer around each"
        " store call (they run one after another). Command line in bench/broadcast_pages.py."
        "\n\n"
    )
    return intro + f"- {title}\n\n" + md_table(headers, rows)


def short(line: str) -> str:
    """A profile line with this checkout's and the site-packages' paths cut off."""
    for prefix in (str(ROOT) + "/", sysconfig.get_paths()["purelib"] + "/"):
        line = line.replace(prefix, "")
    return re.sub(r"/\S*/lib/python3\.\d+/", "", line)


async def run(args: argparse.Namespace) -> None:
    logs = run_dir("broadcast_pages")
    data = Path(tempfile.mkdtemp(prefix="pinrelay-bench-pages-"))
    nats: NatsCluster | None = None
    relay: Relay | None = None
    try:
        store_url = None
        if args.store == "cluster":
            nats = NatsCluster(logs, "pages", None)
            await nats.start()
            store_url = nats.urls  # "a,b,c", as serve --store takes it
        config = RelayConfig(
            data=data,
            port=free_port(),
            link_port=free_port(),
            store=store_url,
            broadcast_page=args.page,
        )
        relay = Relay(config)
        await relay.start()
        store = relay.store
        seed_args = argparse.Namespace(
            members=args.members, linked=0, seed=15, seed_concurrency=args.seed_concurrency
        )
        result = Result(args.store, args.members, 0, args.page)
        tenant, channel, _ = await seed(store, seed_args, result)
        writer = store.writer_pid if isinstance(store, SqliteStore) else None
        timed = await fan_out(relay, tenant, channel, nats, profile=False)
        text = report(args, timed, writer is not None)
        if args.profile:
            profiled = await fan_out(relay, tenant, channel, nats, profile=True)
            assert profiled.profile is not None
            out = io.StringIO()
            stats = pstats.Stats(profiled.profile, stream=out)
            stats.sort_stats("tottime").print_stats(args.profile)
            lines = [short(ln) for ln in out.getvalue().splitlines() if ln.strip()]
            console.print("\n".join(lines))
            text += (
                f"\n\nA second broadcast to the same members under cProfile"
                f" ({profiled.wall:.2f} s with the profiler on), the {args.profile}"
                " functions with the most own time (wall clock, so waiting in epoll counts):"
                "\n\n```\n" + "\n".join(lines[-args.profile - 1 :]) + "\n```\n"
            )
        (logs / f"pages-{args.store}.md").write_text(text)
        if not args.no_results:
            title = f"Broadcast fan-out page by page, {args.store} ({MODULE})"
            write_section(MODULE, title, text, key=f"{MODULE} {args.store}")
    finally:
        if relay is not None:
            await relay.stop()
        if nats is not None:
            nats.stop()
        shutil.rmtree(data, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.broadcast_pages", description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "cluster"), default="sqlite")
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--page", type=int, default=500, help="serve --broadcast-page")
    parser.add_argument("--seed-concurrency", type=int, default=0, help="0: the bench's default")
    parser.add_argument(
        "--profile", type=int, default=0, help="then a second broadcast under cProfile: N lines"
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_main(run(parse_args()))
