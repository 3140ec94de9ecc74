"""Group fan-out: member-deliveries per second for a 1,000-member group (issue 13).

One relay per run, on each store of ``--stores`` in turn, round by round: ``sqlite``
(fsync on every commit) or ``cluster`` (a fresh 3-node JetStream cluster of
nats-server processes, R3 file streams, nats-server's default sync).  A creator and
``--members`` devices made contacts over the API; one group of them all; every
member linked with a raw
``websockets`` client in this process that acks each chat message as it reads it.
The creator then sends ``--messages`` group messages on its own link, pipelined.
Each is stored for every member in one commit, delivered to every member, and each
member's ack stores a delivered receipt for the creator.

Reported, per run (``--rounds`` runs, each on a fresh relay; medians compared):
- **member-deliveries/s**: messages x members over the time from the first ``send``
  to the last member's copy read;
- **receipts/s**: the same for the creator's delivered receipts (each one stored, on
  disk, before the ack that caused it);
- relay CPU (with its SQLite writer) per member-delivery, receipt included, and on
  the cluster the three nats-servers' CPU likewise;
- the ``send`` → ``sent`` time of a group message (its fan-out commit).

There is no peer in this script: Prosody's MUC keeps no per-member durable copy to
compare with (bench.chat_roundtrip compares one-to-one chat with Prosody).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect

from bench.chat_roundtrip import ack_frame, make_contacts, send_frame
from bench.cluster_systems import ClusterRelay, NatsCluster, before_tree
from bench.common import (
    LOOPBACK,
    RelayProcess,
    add_common_args,
    console,
    create_devices,
    fmt,
    md_table,
    print_table,
    progress,
    run_dir,
    run_main,
    tree_cpu_seconds,
    wait_machine_quiet,
    write_section,
)

MODULE = "bench.group_fanout"
SQLITE, CLUSTER = "sqlite", "cluster"


class _Frame(msgspec.Struct):
    type: str
    cursor: int = 0
    kind: str = ""
    id: str = ""
    client_id: str = ""


_decode = msgspec.json.Decoder(_Frame).decode


@dataclass
class Run:
    #: The store, and "@<commit>" for a relay run from ``--before``'s tree.
    store: str
    round_no: int
    members: int
    messages: int
    deliveries_per_s: float = 0.0
    receipts_per_s: float = 0.0
    cpu_us_per_delivery: float = 0.0
    #: The cluster's three nats-servers together (0 on SQLite).
    nats_us_per_delivery: float = 0.0
    sent_ms: list[float] = field(default_factory=list)


#: This tree's src folder (a --before tree has its own).
HERE_SRC = Path(__file__).resolve().parents[1] / "src"


def has_byte_budget(src: Path) -> bool:
    """Whether the relay of ``src`` has the chat byte budget (trees since 45ce4db),
    which the bench lifts: it measures the store."""
    return "chat-bytes-per-minute" in (src / "pinrelay" / "cli_serve.py").read_text()


async def _member(ws: ClientConnection, got: list[float]) -> None:
    async for raw in ws:
        frame = _decode(raw)
        if frame.type == "msg":
            if frame.kind == "chat":
                got.append(time.perf_counter())
            await ws.send(ack_frame(frame.cursor), text=True)


async def _link(url: str, pin: str, token: str) -> ClientConnection:
    ws = await connect(url, ping_interval=None, max_size=2**20, open_timeout=30)
    hello = {"type": "hello", "pin": pin, "token": token, "window": 256}
    await ws.send(msgspec.json.encode(hello).decode())
    raw = await ws.recv()
    welcome = _decode(raw)
    if welcome.type != "welcome":
        raise RuntimeError(f"hello answered with {welcome.type}: {raw!r}")
    return ws


#: A tree to run the relay from: (its src folder, its short commit).
Tree = tuple[Path, str]


async def one_run(
    args: argparse.Namespace, store: str, round_no: int, logs: Path, before: Tree | None = None
) -> Run:
    """One run on a fresh relay (``before``: the tree to run it from)."""
    label = store if before is None else f"{store}@{before[1]}"
    run = Run(label, round_no, args.members, args.messages)
    # The relay's name (its log, and on the cluster its --node-id).
    name = f"relay-{store}-{round_no}" + ("" if before is None else f"-before-{before[1]}")
    options: dict[str, Any] = {
        "max_links": args.members + 200,
        "extra": ["--invites-per-hour", "10000000", "--sends-per-minute", "10000000"],
    }
    if has_byte_budget(HERE_SRC if before is None else before[0]):
        options["extra"] += ["--chat-bytes-per-minute", str(2**40)]
    nats: NatsCluster | None = None
    relay: RelayProcess
    if store == CLUSTER:
        nats = NatsCluster(logs, f"group{round_no}", None)
        relay = ClusterRelay(logs, nats.urls, name, **options)
    else:
        relay = RelayProcess(logs, name=name, **options)
    if before is not None:
        relay.src = before[0]
    links: list[ClientConnection] = []
    readers: list[asyncio.Task[None]] = []
    try:
        if nats is not None:
            await nats.start()
        await relay.start(timeout=120)
        with progress() as bar:
            devices = await create_devices(relay, args.members + 1, progress=bar)
            creator, members = devices[0], devices[1:]
            befriend = bar.add_task("make contacts", total=len(members))
            queue = list(members)

            async def worker() -> None:
                while queue:
                    await make_contacts(relay.url, creator, queue.pop())
                    bar.advance(befriend)

            await asyncio.gather(*(worker() for _ in range(20)))
        async with httpx.AsyncClient(base_url=relay.url, timeout=60) as http:
            r = await http.post(
                f"/v1/devices/{creator[0]}/groups",
                json={"name": "everyone", "members": [pin for pin, _ in members]},
                headers={"Authorization": f"Bearer {creator[1]}"},
            )
            r.raise_for_status()
            group = r.json()["group"]
        link_url = f"ws://{LOOPBACK}:{relay.link_port}/v1/link"
        got: list[float] = []
        for start in range(0, len(members), 100):
            chunk = members[start : start + 100]
            links += await asyncio.gather(*(_link(link_url, p, t) for p, t in chunk))
        # Each member's group_added notice first: acked before the clock starts.
        readers = [asyncio.create_task(_member(ws, got)) for ws in links]
        sender = await _link(link_url, *creator)
        links.append(sender)
        await asyncio.sleep(2.0)
        sent_at: dict[str, float] = {}
        receipts = 0
        done = asyncio.Event()
        expected = args.messages * args.members

        async def creator_reader() -> None:
            nonlocal receipts
            async for raw in sender:
                frame = _decode(raw)
                if frame.type == "sent":
                    run.sent_ms.append((time.perf_counter() - sent_at[frame.client_id]) * 1000)
                elif frame.type == "msg":
                    if frame.kind == "receipt":
                        receipts += 1
                        if receipts >= expected:
                            done.set()
                    await sender.send(ack_frame(frame.cursor), text=True)

        readers.append(asyncio.create_task(creator_reader()))
        cpu0 = tree_cpu_seconds(relay.pid)
        nats0 = sum(nats.cpu()) if nats is not None else 0.0
        t0 = time.perf_counter()
        for n in range(args.messages):
            sent_at[f"g{n}"] = time.perf_counter()
            await sender.send(send_frame(group, f"message {n} to everyone", f"g{n}"), text=True)
        await asyncio.wait_for(done.wait(), args.timeout)
        t_receipts = time.perf_counter() - t0
        t_deliveries = max(got) - t0
        await asyncio.sleep(1.0)  # the acks' own writes
        cpu = tree_cpu_seconds(relay.pid) - cpu0
        if nats is not None:
            run.nats_us_per_delivery = (sum(nats.cpu()) - nats0) / expected * 1e6
        run.deliveries_per_s = expected / t_deliveries
        run.receipts_per_s = expected / t_receipts
        run.cpu_us_per_delivery = cpu / expected * 1e6
    finally:
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in links), return_exceptions=True)
        relay.stop()
        relay.remove_data()
        if nats is not None:
            nats.stop()
    return run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--members", type=int, default=1000, help="group members (max 999)")
    parser.add_argument("--messages", type=int, default=20, help="group messages sent")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--stores",
        default=f"{SQLITE},{CLUSTER}",
        help="comma-separated, of sqlite and cluster (run in turn; default both)",
    )
    parser.add_argument(
        "--before", help="a commit: each store also with a relay of that commit, interleaved"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="s for one run to finish")
    parser.add_argument("--quick", action="store_true", help="100 members, 5 messages, 1 round")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.messages, args.rounds = 100, 5, 1
    args.members = min(args.members, 999)  # and the creator: 1,000
    args.stores = [s for s in str(args.stores).split(",") if s]
    if not args.stores or any(s not in (SQLITE, CLUSTER) for s in args.stores):
        parser.error(f"--stores: {','.join(args.stores) or '(none)'}: sqlite, cluster")
    return args


async def all_runs(args: argparse.Namespace, logs: Path, before: Tree | None) -> list[Run]:
    """Every store (and its ``before`` variant) in turn, round by round."""
    runs: list[Run] = []
    for n in range(args.rounds):
        for store in args.stores:
            for tree in [None, before] if before is not None else [None]:
                if args.wait_quiet:
                    await wait_machine_quiet(args.wait_quiet)
                run = await one_run(args, store, n + 1, logs, tree)
                console.print(
                    f"{run.store} #{run.round_no}: {fmt(run.deliveries_per_s, 0)}"
                    " member-deliveries/s"
                )
                runs.append(run)
    return runs


async def main(argv: list[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    logs = run_dir("group_fanout")
    with contextlib.ExitStack() as stack:
        before = stack.enter_context(before_tree(args.before)) if args.before else None
        runs = await all_runs(args, logs, before)
    headers = [
        "run",
        "member-deliveries/s",
        "receipts/s",
        "relay µs/delivery",
        "nats-servers µs/delivery",
        "sent p50 ms",
    ]
    rows = [
        [
            f"{r.store} #{r.round_no}",
            fmt(r.deliveries_per_s, 0),
            fmt(r.receipts_per_s, 0),
            fmt(r.cpu_us_per_delivery),
            fmt(r.nats_us_per_delivery) if r.store.startswith(CLUSTER) else "-",
            fmt(statistics.median(r.sent_ms), 2) if r.sent_ms else "n/a",
        ]
        for r in runs
    ]
    print_table("Group fan-out", headers, rows)
    lines = []
    for store in dict.fromkeys(r.store for r in runs):
        mine = [r for r in runs if r.store == store]
        nats = statistics.median(r.nats_us_per_delivery for r in mine)
        lines.append(
            f"- {store}: {args.members + 1}-member group, {args.messages} messages, median of"
            f" {len(mine)}: **{fmt(statistics.median(r.deliveries_per_s for r in mine), 0)}"
            " member-deliveries/s**, receipts"
            f" {fmt(statistics.median(r.receipts_per_s for r in mine), 0)}/s, relay"
            f" {fmt(statistics.median(r.cpu_us_per_delivery for r in mine))} µs per delivery"
            " (its receipt included)"
            + (f", the nats-servers {fmt(nats)} µs" if store.startswith(CLUSTER) else "")
            + "."
        )
    for line in lines:
        console.print(line)
    if not args.no_results:
        text = md_table(headers, rows) + "\n\n" + "\n".join(lines)
        write_section(MODULE, "Group fan-out", text)
    return runs


if __name__ == "__main__":
    run_main(main(), fast_loop=True)
