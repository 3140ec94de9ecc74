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

Nothing is written to RESULTS.md: bench.broadcast_fanout's sections quote it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.broadcast_fanout import Result, seed
from bench.cluster_systems import NatsCluster
from bench.common import (
    console,
    cpu_seconds,
    md_table,
    print_table,
    run_dir,
    run_main,
)
from pinrelay.config import RelayConfig
from pinrelay.core.channels import Broadcast
from pinrelay.core.ids import new_message_id
from pinrelay.relay import Relay
from pinrelay.testing.ports import free_port

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
        await store.put_broadcast(b)
        timers = Timers()  # after the record's own write: that one is the API's
        for name in CALLS:
            setattr(store, name, timers.wrap(name, getattr(store, name)))
        # Beside this process: SQLite's writer process, or the nats-servers.
        writer = getattr(store, "writer_pid", lambda: None)()
        writers = [writer] if writer is not None else (nats.pids if nats is not None else [])
        writer0 = sum(cpu_seconds(p) for p in writers)
        profile = cProfile.Profile() if args.profile else None
        cpu0, t0 = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        await relay.broadcaster._run(b)
        if profile is not None:
            profile.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        writer_cpu = sum(cpu_seconds(p) for p in writers) - writer0
        done = await store.get_broadcast(b.id)
        assert done is not None and done.done_ms is not None, done
        pages = timers.calls["append"] or 1
        rows = [
            [name, f"{timers.calls[name]:,}", f"{timers.seconds[name] / pages * 1000:.2f}"]
            for name in CALLS
        ]
        accounted = sum(timers.seconds.values())
        rows.append(
            [
                "(the rest: building drafts, waking, between calls)",
                "",
                f"{(wall - accounted) / pages * 1000:.2f}",
            ]
        )
        rows.append(["page, wall", f"{pages:,}", f"{wall / pages * 1000:.2f}"])
        rows.append(["this process's CPU (event loop)", "", f"{cpu / pages * 1000:.2f}"])
        if writers:
            who = "SQLite writer process" if writer is not None else "nats-servers (3)"
            rows.append([f"{who} CPU", "", f"{writer_cpu / pages * 1000:.2f}"])
        headers = ["per page", "calls", "ms per page"]
        title = (
            f"{args.store}: {done.members:,} members ({done.stored:,} stored) in {wall:.2f} s,"
            f" {done.stored / wall:,.0f} member-deliveries/s, pages of {args.page}"
        )
        print_table(title, headers, rows)
        text = title + "\n\n" + md_table(headers, rows)
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile)
            console.print(out.getvalue())
            text += "\n\n```\n" + out.getvalue() + "```\n"
        (logs / f"pages-{args.store}.md").write_text(text)
        console.print(f"written to {logs / f'pages-{args.store}.md'}")
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
    parser.add_argument("--profile", type=int, default=0, help="cProfile: print this many lines")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_main(run(parse_args()))
