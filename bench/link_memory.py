"""Memory per idle authenticated link, and what idle links cost in heartbeats.

1. Start a relay (``--heartbeat 30``, the default), create N devices with
   POST /v1/devices (async httpx, ~50 at a time).
2. Open N links from generator processes (bench.linkgen: raw asyncio, about 1.5 KB
   per link; at most ``--per-process`` links each, ~5,000 per source address
   127.0.0.2, 127.0.0.3, ...).  Each sends hello, waits for welcome, then idles.
   The relay's RSS (VmRSS) is read before, after each generator, and after all.
3. Idle CPU: the relay's utime+stime over ``--idle-seconds`` with every link open,
   counting the pings the generators answer.
4. The per-ping cost: the same links on a relay restarted on the same data with a
   short heartbeat (``--short-heartbeat``, many pings), and once more with a
   heartbeat so long that no ping is due (the baseline: the timer walk, the
   sweeper).  Per ping = (CPU rate short - CPU rate baseline) / ping rate.

Targets (the issue): at most 8 KB of relay RSS per idle link (Mozilla autopush,
Rust: 10.27 KB; the Python predecessor: 50+ KB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    Child,
    OtherLoad,
    RelayProcess,
    add_common_args,
    console,
    create_devices,
    fmt,
    linkgen_argv,
    machine,
    md_table,
    open_files,
    print_table,
    progress,
    run_dir,
    run_main,
    source_addresses,
    stop_all,
    timed_phase,
    wait_machine_quiet,
    wait_quiet,
    write_credentials,
    write_section,
)

MODULE = "bench.link_memory"
#: Every process here has a hard cap of 20,000 open files.
FD_CAP = 20_000
#: A heartbeat so long that no ping falls due during a measurement.
NO_PING_HEARTBEAT = 86_400.0


def tick_interval(heartbeat: float) -> float:
    """How often the relay walks every link (pinrelay.link.server: heartbeat/10, 0.05..2 s)."""
    return max(0.05, min(2.0, heartbeat / 10))


@dataclass
class IdleRun:
    heartbeat: float
    seconds: float = 0.0
    cpu_s: float = 0.0
    pings: int = 0
    rss_kb: int = 0
    links: int = 0
    other_cores: float = float("nan")

    @property
    def cpu_rate(self) -> float:
        return self.cpu_s / self.seconds if self.seconds else float("nan")

    @property
    def ping_rate(self) -> float:
        return self.pings / self.seconds if self.seconds else float("nan")


@dataclass
class Result:
    links: int = 0
    devices_s: float = 0.0
    open_s: float = 0.0
    rss_start_kb: int = 0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    stages: list[tuple[int, int]] = field(default_factory=list)
    slab_before_kb: int = 0
    slab_after_kb: int = 0
    generator_rss_kb: int = 0
    relay_fds: int = 0
    failed: int = 0
    runs: list[IdleRun] = field(default_factory=list)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")


def slab_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


class Fleet:
    """The generator processes holding the links."""

    def __init__(self, logs: Path, creds_files: list[Path], sources: list[list[str]]) -> None:
        self.logs = logs
        self.creds_files = creds_files
        self.sources = sources
        self.children: list[Child] = []
        self.round = 0

    def _child(self, i: int, relay: RelayProcess, on_event: Any) -> Child:
        child = Child(
            f"linkgen{i}-r{self.round}",
            linkgen_argv(
                relay.link_port,
                self.creds_files[i],
                ",".join(self.sources[i]),
                "idle",
                max_seconds=7200,
            ),
            self.logs,
        )
        child.on_event = on_event
        return child

    async def open(
        self,
        relay: RelayProcess,
        total: int,
        *,
        sequential: bool,
        after_each: Any = None,
    ) -> float:
        """Open every link; returns the seconds it took.  Progress bar over all links."""
        self.round += 1
        started = time.perf_counter()
        welcomed: dict[int, int] = {}
        with progress() as bar:
            task = bar.add_task(f"open links (hb {relay.heartbeat:g} s)", total=total)

            def on_event(child: Child, event: dict[str, Any]) -> None:
                if "welcomed" in event:
                    welcomed[id(child)] = int(event["welcomed"])
                    bar.update(task, completed=sum(welcomed.values()))

            self.children = [self._child(i, relay, on_event) for i in range(len(self.creds_files))]
            if sequential:
                for child in self.children:
                    await child.start()
                    await child.expect("ready", 600)
                    if after_each is not None:
                        await after_each(child)
            else:
                for child in self.children:
                    await child.start()
                for child in self.children:
                    await child.expect("ready", 600)
        return time.perf_counter() - started

    def ready_counts(self) -> tuple[int, int]:
        ok = sum(int(c.latest["ready"]["welcomed"]) for c in self.children)
        failed = sum(int(c.latest["ready"]["failed"]) for c in self.children)
        return ok, failed

    async def stats(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(c.request("stats", "stats") for c in self.children)))

    async def pings(self) -> int:
        return sum(int(s["pings"]) for s in await self.stats())

    async def close(self) -> None:
        await stop_all(self.children, timeout=30.0)
        self.children = []


async def idle_window(relay: RelayProcess, fleet: Fleet, seconds: float, label: str) -> IdleRun:
    run = IdleRun(heartbeat=relay.heartbeat)
    pings0 = await fleet.pings()
    other = OtherLoad([relay.pid, *(c.pid for c in fleet.children)])
    cpu0 = relay.cpu()
    t0 = time.perf_counter()
    with timed_phase(label, seconds) as update:
        while (elapsed := time.perf_counter() - t0) < seconds:
            update(elapsed)
            await asyncio.sleep(min(0.5, seconds - elapsed))
    run.cpu_s = relay.cpu() - cpu0
    run.seconds = time.perf_counter() - t0
    run.other_cores = other.cores()
    run.pings = await fleet.pings() - pings0
    run.rss_kb = relay.rss()
    run.links = fleet.ready_counts()[0]
    return run


async def measure(args: argparse.Namespace, logs: Path) -> Result:
    result = Result(links=args.links)
    n = args.links
    max_links = min(n + 1000, FD_CAP - 300)
    relay = RelayProcess(logs, heartbeat=args.heartbeat, max_links=max_links, name="relay-hb")
    fleet: Fleet | None = None
    relays = [relay]
    try:
        await relay.start()
        result.rss_start_kb = relay.rss()
        t0 = time.perf_counter()
        with progress() as bar:
            creds = await create_devices(relay, n, concurrency=args.concurrency, progress=bar)
        result.devices_s = time.perf_counter() - t0
        processes = -(-n // args.per_process)
        per_process = -(-n // processes)
        files: list[Path] = []
        sources: list[list[str]] = []
        next_source = 0
        for i in range(processes):
            part = creds[i * per_process : (i + 1) * per_process]
            files.append(write_credentials(logs / f"creds{i}.json", part))
            count = max(1, -(-len(part) // args.per_source))
            sources.append(source_addresses(count, first=2 + next_source))
            next_source += count
        fleet = Fleet(logs, files, sources)

        await wait_quiet(relay.pid, timeout=10.0)
        result.rss_before_kb = relay.rss()
        result.slab_before_kb = slab_kb()

        async def after_each(child: Child) -> None:
            assert fleet is not None
            welcomed = sum(
                int(c.latest["ready"]["welcomed"]) for c in fleet.children if "ready" in c.latest
            )
            result.stages.append((welcomed, relay.rss()))

        result.open_s = await fleet.open(relay, n, sequential=True, after_each=after_each)
        ok, failed = fleet.ready_counts()
        result.failed = failed
        await wait_quiet(relay.pid, timeout=15.0)
        result.rss_after_kb = relay.rss()
        result.slab_after_kb = slab_kb()
        result.relay_fds = open_files(relay.pid)
        result.generator_rss_kb = sum(
            int(s["rss_kb"]) - int(c.latest["ready"]["rss_start_kb"])
            for c, s in zip(fleet.children, await fleet.stats(), strict=True)
        )
        console.print(
            f"{ok:,} links open ({failed} failed) in {result.open_s:.1f} s; relay RSS "
            f"{result.rss_before_kb / 1024:.1f} → {result.rss_after_kb / 1024:.1f} MiB"
        )
        result.runs.append(
            await idle_window(relay, fleet, args.idle_seconds, f"idle, hb {args.heartbeat:g} s")
        )

        for heartbeat in (args.short_heartbeat, NO_PING_HEARTBEAT):
            if heartbeat <= 0:
                continue
            await fleet.close()
            relay.stop()
            relay = RelayProcess(
                logs,
                heartbeat=heartbeat,
                max_links=max_links,
                data=relays[0].data,
                name=f"relay-hb{heartbeat:g}",
            )
            relays.append(relay)
            await relay.start()
            await fleet.open(relay, n, sequential=False)
            # Let the first round of pings pass so the window sees the steady state.
            settle = heartbeat + 1.0 if heartbeat != NO_PING_HEARTBEAT else 3.0
            with timed_phase(f"settle, hb {heartbeat:g} s", settle) as update:
                t0 = time.perf_counter()
                while (elapsed := time.perf_counter() - t0) < settle:
                    update(elapsed)
                    await asyncio.sleep(min(0.5, settle - elapsed))
            label = f"idle, hb {heartbeat:g} s" if heartbeat != NO_PING_HEARTBEAT else "no pings"
            result.runs.append(await idle_window(relay, fleet, args.idle_seconds, label))
    finally:
        if fleet is not None:
            await fleet.close()
        for r in relays:
            r.stop()
        relays[0].remove_data()
    return result


def report(args: argparse.Namespace, r: Result) -> None:
    n = r.links
    growth_kb = r.rss_after_kb - r.rss_before_kb
    per_link = growth_kb * 1024 / n
    marginal = float("nan")
    if len(r.stages) >= 2:
        (n0, rss0), (n1, rss1) = r.stages[0], r.stages[-1]
        if n1 > n0:
            marginal = (rss1 - rss0) * 1024 / (n1 - n0)
    slab_per_link = (r.slab_after_kb - r.slab_before_kb) * 1024 / n
    gen_per_link = r.generator_rss_kb * 1024 / n
    verdict = "meets" if per_link <= 8000 else "misses"

    memory_rows = [
        ["links open (failed)", f"{n - r.failed:,} ({r.failed})"],
        ["create devices", f"{r.devices_s:.1f} s ({n / r.devices_s:,.0f}/s)"],
        ["open links", f"{r.open_s:.1f} s ({n / r.open_s:,.0f}/s)"],
        ["relay RSS at start", f"{r.rss_start_kb / 1024:.1f} MiB"],
        ["relay RSS before links", f"{r.rss_before_kb / 1024:.1f} MiB"],
        ["relay RSS with links", f"{r.rss_after_kb / 1024:.1f} MiB"],
        ["relay RSS per link", f"{per_link / 1024:.2f} KiB = {per_link:,.0f} B ({verdict} ≤ 8 KB)"],
        ["marginal per link, first → last generator", f"{fmt(marginal / 1024, 2)} KiB"],
        ["relay open files", f"{r.relay_fds:,}"],
        ["kernel slab per link (both ends)", f"{slab_per_link / 1024:.2f} KiB"],
        ["generator RSS per link (bench.linkgen)", f"{gen_per_link / 1024:.2f} KiB"],
    ]
    stage_rows = [[f"{k:,}", f"{v / 1024:.1f} MiB"] for k, v in [(0, r.rss_before_kb), *r.stages]]

    base = next((x for x in r.runs if x.heartbeat == NO_PING_HEARTBEAT), None)
    idle_rows: list[list[str]] = []
    per_ping: dict[float, float] = {}
    for run in r.runs:
        label = "none (baseline)" if run.heartbeat == NO_PING_HEARTBEAT else f"{run.heartbeat:g} s"
        raw = corrected = float("nan")
        if base is not None and run is not base and run.pings > 0:
            raw = (run.cpu_rate - base.cpu_rate) / run.ping_rate * 1e6
            # The baseline is (almost) all timer walk; this run walks more often.
            walks = tick_interval(base.heartbeat) / tick_interval(run.heartbeat)
            corrected = (run.cpu_rate - base.cpu_rate * walks) / run.ping_rate * 1e6
            per_ping[run.heartbeat] = corrected
        idle_rows.append(
            [
                label,
                f"{run.links:,}",
                f"{tick_interval(run.heartbeat):g}",
                f"{run.seconds:.1f}",
                f"{run.pings:,}",
                f"{run.ping_rate:,.0f}",
                f"{run.cpu_s:.2f}",
                f"{run.cpu_rate * 100:.2f} %",
                fmt(raw, 1),
                fmt(corrected, 1),
                fmt(run.other_cores, 2),
            ]
        )
    idle_headers = [
        "heartbeat",
        "links",
        "walk every s",
        "window s",
        "pings",
        "pings/s",
        "relay CPU s",
        "of a core",
        "µs/ping",
        "µs/ping, walks corrected",
        "other processes, cores",
    ]

    default = next((x for x in r.runs if x.heartbeat == args.heartbeat), None)
    estimates: list[str] = []
    if default is not None:
        estimates.append(
            f"- **Idle CPU at heartbeat {args.heartbeat:g} s (the default), {default.links:,} "
            f"links: {default.cpu_rate * 100:.2f} % of a core** over {default.seconds:.0f} s, "
            f"{default.pings:,} pings in the window (a window shorter than the heartbeat may "
            "see none)."
        )
    if base is not None and base.links:
        walk_us = base.cpu_rate * tick_interval(base.heartbeat) / base.links * 1e6
        estimates.append(
            f"- Without pings the relay still spends {base.cpu_rate * 100:.2f} % of a core: "
            f"mostly the timer walking every link every {tick_interval(base.heartbeat):g} s, "
            f"about {walk_us:.2f} µs per link per walk."
        )
    cost = per_ping.get(args.heartbeat, per_ping.get(args.short_heartbeat, float("nan")))
    if base is not None and cost == cost:
        steady = base.cpu_rate + n / args.heartbeat * cost / 1e6
        estimates.append(
            f"- Model at heartbeat {args.heartbeat:g} s, {n:,} links: {base.cpu_rate * 100:.2f} % "
            f"(no pings) + {n:,}/{args.heartbeat:g} pings/s x {cost:.1f} µs = "
            f"{steady * 100:.2f} % of a core."
        )
        for links in (19_900, 100_000):
            estimates.append(
                f"- Pings alone at {links:,} links, heartbeat {args.heartbeat:g} s: "
                f"{links / args.heartbeat * cost / 1e6 * 100:.1f} % of a core."
            )

    console.print()
    print_table("Relay memory per idle link", ["", "value"], memory_rows)
    print_table("Relay RSS by links open", ["links", "relay RSS"], stage_rows)
    print_table("Idle CPU (relay utime+stime)", idle_headers, idle_rows)
    for line in estimates:
        console.print(line)

    if args.no_results:
        return
    m = machine()
    body = "\n".join(
        [
            f"{n:,} devices created with POST /v1/devices ({args.concurrency} at a time), "
            f"then {n:,} links from {plural(-(-n // args.per_process), 'bench.linkgen process')} "
            f"(≤ {args.per_source:,} links per source address), each: hello, welcome, idle. "
            "RSS is the relay's VmRSS; CPU its utime+stime from /proc. "
            f"The machine has {m['nproc']} CPUs; every process has a hard cap of "
            f"{FD_CAP:,} open files.",
            "",
            "### Memory",
            "",
            md_table(["", "value"], memory_rows),
            "",
            "Relay RSS as generators came up one after another:",
            "",
            md_table(["links", "relay RSS"], stage_rows),
            "",
            "Target: ≤ 8 KB of relay memory per idle link (Mozilla autopush, Rust: "
            "10.27 KB; the Python predecessor: 50+ KB). The kernel's socket memory (slab, "
            "both ends of each loopback connection) is not in either process's RSS.",
            "",
            "### Idle CPU and heartbeats",
            "",
            md_table(idle_headers, idle_rows),
            "",
            "µs/ping = (CPU rate - CPU rate without pings) / ping rate. The relay walks "
            "every link every heartbeat/10 s (at most every 2 s), so a short heartbeat also "
            "walks more often: the corrected figure subtracts the baseline scaled by the walk "
            "rate (taking the baseline as all walk, so it is a lower bound). Other "
            "processes: CPU the rest of the machine used meanwhile (not the relay, not the "
            "generators), in cores.",
            "",
            *estimates,
        ]
    )
    path = write_section(MODULE, "Memory per idle link and heartbeat CPU (bench.link_memory)", body)
    console.print(f"[green]wrote[/] {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.link_memory",
        description="Relay memory per idle authenticated link, and heartbeat CPU.",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 links, 20 s windows")
    parser.add_argument("--links", type=int, default=None, help="links (default 15,000)")
    parser.add_argument(
        "--idle-seconds", type=float, default=None, help="each CPU window (default 60 s)"
    )
    parser.add_argument("--heartbeat", type=float, default=30.0, help="the relay's default")
    parser.add_argument(
        "--short-heartbeat",
        type=float,
        default=5.0,
        help="second run for the per-ping cost (0: skip)",
    )
    parser.add_argument("--per-process", type=int, default=5000, help="links per generator")
    parser.add_argument("--per-source", type=int, default=5000, help="links per source address")
    parser.add_argument("--concurrency", type=int, default=50, help="device creations at once")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.links is None:
        args.links = 2000 if args.quick else 15_000
    if args.idle_seconds is None:
        args.idle_seconds = 20.0 if args.quick else 60.0
    if args.links > FD_CAP - 300:
        parser.error(f"one relay process holds at most ~{FD_CAP - 300:,} links (open-file cap)")
    return args


async def main(argv: list[str] | None = None) -> Result:
    args = parse_args(argv)
    logs = run_dir("link_memory")
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    console.print(
        f"[bold]bench.link_memory[/]: {args.links:,} links, {args.idle_seconds:g} s idle "
        f"windows; logs in {logs}"
    )
    result = await measure(args, logs)
    report(args, result)
    return result


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main())
