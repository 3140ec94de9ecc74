"""Push → device latency at half the peak push rate.

1. A relay, D linked devices (default 100) in one bench.linkgen process that acks
   as it reads.
2. Ramp: single pushes (POST /v1/devices/{pin}/messages) in closed loops on 1, 2,
   4, ... keep-alive connections, a few seconds each; the best rate is the peak.
3. Paced: pushes at ``--fraction`` of the peak (¼, then ½, the target's rate: one
   phase per fraction), at fixed intervals (open loop: a slow answer does not
   delay the next push), round-robin over the devices.
   Each message carries ``time.time()`` taken just before its POST is written;
   the device's process subtracts it from ``time.time()`` when the frame arrives
   (same machine, same clock).  Reported: p50/p90/p99/p99.9/max of that, and of
   the push's HTTP answer (stored and fsynced).

4. The disk: right before each paced phase, 2,000 overwrites of a 4 KiB block, each
   followed by fdatasync (what a WAL commit does), in the relay's data folder.  Every
   pushed message waits for one such sync, and a slow sync holds up every push that
   arrives meanwhile: the disk's own tail is a floor under the relay's.

5. CPUs, in the paced phases (not in the ramp, so the peak is what free scheduling
   gives): the relay's event loop is pinned to the first CPU, the pusher (this
   process) and the device process to the others; the store's writer is left where
   the kernel puts it.  The load generators stand in for other machines: on the
   loop's core they take whole scheduler slices from it (``--no-pin`` to see it).
   Their own delays still count against the relay: the push's timestamp is taken
   before its write, the device's when it reads the frame.

Phases repeat (``--repeats``, rotating through the fractions), because these shared
machines' disks and CPUs drift between runs; the verdict uses the median p99.

Target (the issue): p99 < 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    Child,
    OtherLoad,
    RelayProcess,
    add_common_args,
    console,
    cpu_seconds,
    create_devices,
    linkgen_argv,
    machine,
    md_table,
    percentile,
    print_table,
    progress,
    run_dir,
    run_main,
    source_addresses,
    stop_all,
    thread_cpu,
    timed_phase,
    wait_machine_quiet,
    wait_quiet,
    write_credentials,
    write_section,
)
from bench.rawhttp import Connection

MODULE = "bench.latency"


@dataclass
class Phase:
    """One paced phase at a fixed push rate."""

    number: int
    fraction: float
    rate: float
    sent: int = 0
    seconds: float = 0.0
    max_lag_ms: float = 0.0
    late: int = 0
    cpu_s: float = 0.0
    #: Of cpu_s: the event loop's thread (the main one), and the store's writer
    #: process (the rest: the relay's other threads).
    loop_cpu_s: float = 0.0
    writer_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    delivery: list[float] = field(default_factory=list)
    answer: list[float] = field(default_factory=list)
    errors: int = 0
    other_cores: float = float("nan")
    #: The relay's store commits during the phase (its /metrics histograms).
    commits: dict[str, float] = field(default_factory=dict)
    #: fdatasync latencies of the disk probe just before the phase, seconds, sorted.
    disk: list[float] = field(default_factory=list)


@dataclass
class Result:
    ramp: list[tuple[int, float]] = field(default_factory=list)
    peak: float = 0.0
    phases: list[Phase] = field(default_factory=list)
    #: "CPU 0 / CPUs 1": the relay's loop / the load generators in the paced phases.
    pinned: str = ""


def disk_probe(
    directory: Path,
    count: int = 2000,
    block: int = 4096,
    cpu: int | None = None,
    gap: float = 0.0,
) -> list[float]:
    """fdatasync latency after overwriting one block, ``count`` times (sorted, seconds).

    ``gap``: seconds slept after each sync.  Back to back (0) the disk stays busy and
    a sync is at its fastest; a relay's commits come apart, and on this VM a sync
    after 2.5 ms of quiet takes 2.3 times as long, a relay's own at 200 chats/s 3
    times (bench/RESULTS.md, "What a spaced fdatasync costs").

    ``cpu``: measured from that CPU (this thread pinned there meanwhile).  A sync takes
    two or three of the disk's interrupts (the data, then the flush); on a VM whose
    idle CPUs halt, a thread on another CPU than the one that takes them is woken
    across CPUs for each, and the sync takes longer (bench/RESULTS.md, "Where the
    chat round trip's fsyncs go")."""
    path = directory / "disk-probe.bin"
    span = 1024 * block
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    saved = os.sched_getaffinity(0)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # this thread only
        os.write(fd, b"\0" * span)
        os.fsync(fd)
        data = b"x" * block
        out = []
        for i in range(count):
            os.pwrite(fd, data, (i * block) % span)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            out.append(time.perf_counter() - t0)
            if gap:
                time.sleep(gap)
    finally:
        if cpu is not None:
            os.sched_setaffinity(0, saved)
        os.close(fd)
        path.unlink(missing_ok=True)
    return sorted(out)


def pin_cores(relay_pid: int, device_pid: int) -> str:
    """The relay's event loop on CPU 0; this process (the pusher) and the device
    process on the others; the store's writer where the kernel puts it.

    The load generators stand in for other machines.  Sharing the loop's core, they
    take whole scheduler slices from it while catching up on their schedule, which
    shows up as the relay's tail latency (docs/DECISIONS.md, 28).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return ""
    loop, others = {cpus[0]}, set(cpus[1:])
    os.sched_setaffinity(relay_pid, loop)  # the main thread only (its tid is the pid)
    os.sched_setaffinity(device_pid, others)
    os.sched_setaffinity(0, others)
    rest = ",".join(map(str, sorted(others)))
    return f"CPU {cpus[0]} / CPU{'s' if len(others) > 1 else ''} {rest}"


def push_request(conn: Connection, pin: str, phase: int) -> bytes:
    """A push whose data carries ``time.time()`` now and its phase (0: not measured)."""
    data = b'{"t":%.6f,"p":%d}' % (time.time(), phase) if phase else b'{"p":0}'
    return conn.request_bytes(
        "POST", f"/v1/devices/{pin}/messages", b'{"data":%s,"ttl":3600}' % data
    )


async def closed_loop(
    conn: Connection, pins: list[str], deadline: float, counter: list[int]
) -> int:
    """Push one message after another until ``deadline``; returns how many."""
    done = 0
    while time.perf_counter() < deadline:
        counter[0] += 1
        status, body = await conn.send(push_request(conn, pins[counter[0] % len(pins)], 0))
        if status != 201:
            raise RuntimeError(f"push: {status} {body[:200]!r}")
        done += 1
    return done


async def ramp(
    relay: RelayProcess, conns: list[Connection], pins: list[str], levels: list[int], seconds: float
) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = []
    counter = [0]
    with progress() as bar:
        task = bar.add_task("ramp", total=len(levels))
        for level in levels:
            started = time.perf_counter()
            deadline = started + seconds
            done = await asyncio.gather(
                *(closed_loop(c, pins, deadline, counter) for c in conns[:level])
            )
            results.append((level, sum(done) / (time.perf_counter() - started)))
            bar.advance(task)
            await wait_quiet(relay.pid, timeout=5.0)
    return results


async def paced(
    relay: RelayProcess,
    device_pid: int,
    conns: list[Connection],
    pins: list[str],
    seconds: float,
    phase: Phase,
) -> None:
    rate = phase.rate
    total = max(1, round(rate * seconds))
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    tasks: set[asyncio.Task[None]] = set()

    async def one(conn: Connection, index: int) -> None:
        t0 = time.perf_counter()
        try:
            status, _ = await conn.send(push_request(conn, pins[index % len(pins)], phase.number))
            if status != 201:
                phase.errors += 1
            else:
                phase.answer.append(time.perf_counter() - t0)
        finally:
            free.put_nowait(conn)

    other = OtherLoad([relay.pid, device_pid])
    generators0 = cpu_seconds(os.getpid()) + cpu_seconds(device_pid)
    cpu0 = relay.cpu()
    writer0 = cpu0 - cpu_seconds(relay.pid)
    loop0 = thread_cpu(relay.pid).get(relay.pid, 0.0)
    start = time.perf_counter()
    with timed_phase(f"paced at {rate:,.0f}/s", seconds) as update:
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await free.get()
            lag = time.perf_counter() - target
            if lag > 0.005:
                phase.late += 1
            phase.max_lag_ms = max(phase.max_lag_ms, lag * 1000)
            task = asyncio.get_running_loop().create_task(one(conn, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if i % 256 == 0:
                update(time.perf_counter() - start)
        await asyncio.gather(*tasks)
    phase.seconds = time.perf_counter() - start
    cpu1 = relay.cpu()
    phase.cpu_s = cpu1 - cpu0
    phase.writer_cpu_s = cpu1 - cpu_seconds(relay.pid) - writer0
    phase.loop_cpu_s = thread_cpu(relay.pid).get(relay.pid, 0.0) - loop0
    phase.generator_cpu_s = cpu_seconds(os.getpid()) + cpu_seconds(device_pid) - generators0
    phase.sent = total
    phase.other_cores = other.cores()


async def commit_metrics(conn: Connection) -> dict[str, float]:
    """Counters of the relay's commit histograms (GET /metrics); {} if not there."""
    status, body = await conn.send(conn.request_bytes("GET", "/metrics", b""))
    if status != 200:
        return {}
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(("pinrelay_store_commit_seconds", "pinrelay_store_commit_batch")):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


def commit_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    commits = delta("pinrelay_store_commit_seconds_count")
    if commits <= 0:
        return {}
    bucket = 'pinrelay_store_commit_seconds_bucket{{le="{}"}}'
    return {
        "commits": commits,
        "writes_per_commit": delta("pinrelay_store_commit_batch_sum") / commits,
        "mean_ms": delta("pinrelay_store_commit_seconds_sum") / commits * 1000,
        "over_5ms": 1 - delta(bucket.format("0.005")) / commits,
        "over_10ms": 1 - delta(bucket.format("0.01")) / commits,
    }


def read_latencies(path: Path) -> dict[int, list[float]]:
    return {int(k): [float(x) for x in v] for k, v in json.loads(path.read_text()).items()}


async def measure(args: argparse.Namespace, logs: Path) -> Result:
    result = Result()
    relay = RelayProcess(logs, max_links=args.devices + 100)
    child: Child | None = None
    conns: list[Connection] = []
    try:
        await relay.start()
        with progress() as bar:
            creds = await create_devices(relay, args.devices, progress=bar)
        pins = [pin for pin, _ in creds]
        out = logs / "latencies.json"
        child = Child(
            "linkgen",
            linkgen_argv(
                relay.link_port,
                write_credentials(logs / "creds.json", creds),
                source_addresses(1)[0],
                "latency",
                "--latency-out",
                str(out),
            ),
            logs,
        )
        await child.start()
        ready = await child.expect("ready", 120)
        if ready["failed"]:
            raise RuntimeError(f"{ready['failed']} links failed")
        levels = [int(x) for x in args.ramp_levels.split(",")]
        conns = [
            await Connection("127.0.0.1", relay.port, relay.admin_key).open()
            for _ in range(max(max(levels), args.connections) + 1)
        ]
        if args.rate:
            rates = [(0.0, args.rate)]
        else:
            result.ramp = await ramp(relay, conns, pins, levels, args.ramp_seconds)
            result.peak = max(rate for _, rate in result.ramp)
            rates = [(f, result.peak * f) for f in args.fractions]
        rates = rates * args.repeats
        if args.pin:
            result.pinned = pin_cores(relay.pid, child.pid)
        for number, (fraction, rate) in enumerate(rates, start=1):
            phase = Phase(number, fraction, rate)
            result.phases.append(phase)
            phase.disk = await asyncio.to_thread(disk_probe, relay.data)
            received_before = int((await child.request("stats", "stats"))["received"])
            metrics0 = await commit_metrics(conns[-1])
            await paced(relay, child.pid, conns[: args.connections], pins, args.seconds, phase)
            phase.commits = commit_summary(metrics0, await commit_metrics(conns[-1]))
            # Wait until the device process has every paced message.
            want = received_before + phase.sent - phase.errors
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if int((await child.request("stats", "stats"))["received"]) >= want:
                    break
                await asyncio.sleep(0.2)
            await wait_quiet(relay.pid, timeout=10.0)
        await child.stop()
        latencies = read_latencies(out)
        for phase in result.phases:
            phase.delivery = sorted(latencies.get(phase.number, []))
            phase.answer.sort()
    finally:
        for conn in conns:
            await conn.close()
        if child is not None:
            await stop_all([child])
        relay.stop()
        relay.remove_data()
    return result


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.2f}"


def report(args: argparse.Namespace, r: Result) -> None:
    ramp_rows = [[str(level), f"{rate:,.0f}"] for level, rate in r.ramp]
    headers = [
        "rate",
        "measured",
        "samples",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    ]
    rows: list[list[str]] = []
    facts: list[str] = []
    if r.peak:
        facts.append(f"- Peak single-push rate (ramp, nothing pinned): {r.peak:,.0f}/s.")
    if r.pinned:
        loop, generators = r.pinned.split(" / ")
        facts.append(
            f"- Paced phases: the relay's event loop pinned to {loop}, the pusher and the "
            f"device process to {generators}; the store's writer unpinned."
        )
    for ph in r.phases:
        rate = f"{ph.rate:,.0f}/s" + (f" ({ph.fraction:g} of peak)" if ph.fraction else "")
        for label, values in (
            ("disk: fdatasync of 4 KiB, just before", ph.disk),
            ("push → device (msg read)", ph.delivery),
            ("push → HTTP 201 (fsynced)", ph.answer),
        ):
            rows.append(
                [
                    rate,
                    label,
                    f"{len(values):,}",
                    ms(values, 50),
                    ms(values, 90),
                    ms(values, 99),
                    ms(values, 99.9),
                    f"{values[-1] * 1000:.2f}" if values else "n/a",
                ]
            )
        p99 = percentile(ph.delivery, 99) * 1000
        verdict = "meets" if p99 < 10 else "misses"
        achieved = ph.sent / ph.seconds if ph.seconds else 0.0
        facts.append(
            f"- At {rate}: achieved {achieved:,.0f}/s over {ph.seconds:.1f} s, {ph.sent:,} "
            f"pushes, {ph.errors} errors; {ph.late:,} sent more than 5 ms after their slot "
            f"(max lag {ph.max_lag_ms:.1f} ms); relay CPU {ph.cpu_s / ph.seconds * 100:.0f} % "
            f"of a core ({ph.cpu_s / max(1, ph.sent) * 1e6:.0f} µs per push, of which the event "
            f"loop's thread {ph.loop_cpu_s / max(1, ph.sent) * 1e6:.0f} µs, "
            f"{ph.loop_cpu_s / ph.seconds * 100:.0f} % of a core, and the store's writer "
            f"process {ph.writer_cpu_s / max(1, ph.sent) * 1e6:.0f} µs, "
            f"{ph.writer_cpu_s / ph.seconds * 100:.0f} % of a core); pusher + device "
            f"process {ph.generator_cpu_s / ph.seconds * 100:.0f} % of a core; other processes "
            f"{ph.other_cores:.2f} cores. **p99 push → device {p99:.2f} ms** ({verdict} the "
            "target of < 10 ms)."
        )
        c = ph.commits
        if c:
            facts.append(
                f"  Store meanwhile: {c['commits']:,.0f} group commits, "
                f"{c['writes_per_commit']:.1f} writes each, {c['mean_ms']:.2f} ms on average "
                f"(fsync included); {c['over_5ms'] * 100:.1f} % took over 5 ms, "
                f"{c['over_10ms'] * 100:.1f} % over 10 ms."
            )
    for fraction in dict.fromkeys(ph.fraction for ph in r.phases):
        same = [ph for ph in r.phases if ph.fraction == fraction]
        p99s = [percentile(ph.delivery, 99) * 1000 for ph in same]
        disks = [percentile(ph.disk, 99) * 1000 for ph in same]
        median = statistics.median(p99s)
        verdict = "meets" if median < 10 else "misses"
        what = f"{fraction:g} of the peak" if fraction else f"{same[0].rate:,.0f}/s"
        facts.append(
            f"- **At {what}, over {len(same)} round(s): p99 push → device "
            f"{' / '.join(f'{x:.2f}' for x in p99s)} ms, median {median:.2f} ms** "
            f"({verdict} the target of < 10 ms); the disk's own fdatasync p99 just before "
            f"each: {' / '.join(f'{x:.2f}' for x in disks)} ms."
        )
    console.print()
    if ramp_rows:
        print_table("Ramp: single pushes, closed loop", ["connections", "pushes/s"], ramp_rows)
    print_table("Latency at paced rates", headers, rows)
    for line in facts:
        console.print(line)
    if args.no_results:
        return
    m = machine()
    body = "\n".join(
        [
            f"{args.devices:,} linked devices (one bench.linkgen process, acking as it reads). "
            "Ramp: closed-loop single pushes (POST /v1/devices/{pin}/messages) on 1, 2, 4, ... "
            f"keep-alive connections for {args.ramp_seconds:g} s each; then pushes paced at "
            f"{', '.join(f'{f:g}' for f in args.fractions)} of the peak for {args.seconds:g} s "
            f"each, on up to {args.connections} connections, {args.repeats} round(s) "
            "(fractions in turn); before each phase, 2,000 fdatasyncs of a 4 KiB overwrite "
            "in the relay's data folder measure the disk. Latency: `time.time()` just "
            "before the POST is written, carried in the message, subtracted from `time.time()` "
            "when the device process reads the frame. Relay, pusher and device process share "
            f"{m['nproc']} CPUs"
            + (
                f"; in the paced phases the relay's event loop is pinned to "
                f"{r.pinned.split(' / ')[0]}, the pusher and the device process to "
                f"{r.pinned.split(' / ')[1]}."
                if r.pinned
                else "."
            ),
            "",
            md_table(["connections", "pushes/s"], ramp_rows) if ramp_rows else "",
            "",
            md_table(headers, rows),
            "",
            *facts,
        ]
    )
    path = write_section(MODULE, "Push → device latency (bench.latency)", body)
    console.print(f"[green]wrote[/] {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency",
        description="Push → device latency at half the peak push rate.",
    )
    parser.add_argument("--quick", action="store_true", help="50 devices, short ramp, 5 s paced")
    parser.add_argument("--devices", type=int, default=None, help="default 100")
    parser.add_argument("--ramp-levels", default="1,2,4,8,16,32,64", help="connections per step")
    parser.add_argument("--ramp-seconds", type=float, default=None, help="per step (default 3)")
    parser.add_argument(
        "--fraction",
        default="0.25,0.5",
        help="of the peak rate; a comma-separated list runs one phase each",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="pushes/s (skips the ramp)")
    parser.add_argument("--seconds", type=float, default=None, help="paced phase (default 20)")
    parser.add_argument("--connections", type=int, default=64, help="for the paced phase")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="paced phases: leave the relay's loop and the load generators unpinned",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds of the paced phases (default 3)"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.devices is None:
        args.devices = 50 if args.quick else 100
    if args.ramp_seconds is None:
        args.ramp_seconds = 1.5 if args.quick else 3.0
    if args.seconds is None:
        args.seconds = 5.0 if args.quick else 20.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.fractions = [float(f) for f in str(args.fraction).split(",") if f]
    return args


async def main(argv: list[str] | None = None) -> Result:
    args = parse_args(argv)
    logs = run_dir("latency")
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    console.print(f"[bold]bench.latency[/]: {args.devices} devices; logs in {logs}")
    result = await measure(args, logs)
    report(args, result)
    return result


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main(), fast_loop=True)
