"""The relay's memory and push latency under HTTP attacks (issue 11, holes 3 and 4).

1. Start a relay with its default HTTP bounds (api/httpbounds.py), create a device.
2. A pusher sends one push every ``--push-interval`` s on a keep-alive connection
   (bench.rawhttp) for the whole run; its latencies are reported per phase.
3. Phase "large headers": ``--large`` connections each send a request whose one
   header grows to ``--header-mib`` MiB and never ends (the issue saw four 256 MiB
   ones take a relay from 59 MB to 1.13 GB).  The relay's RSS is sampled every 50 ms.
4. Phase "slow connections": ``--slow`` connections held for ``--seconds``: a quarter
   connect and send nothing, a quarter drip a push's headers at one byte a second,
   a quarter send a push's headers and never its body, a quarter the same on a route
   served by Starlette.  A connection the relay closes is opened again at once, as
   an attacker would (after a second if it was refused at the cap).  The relay's
   HTTP cap is set above ``--slow`` so that it holds them all.  Reported: the relay's
   RSS and open files, how many connections it closed, and how long they lived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import (
    LOOPBACK,
    OtherLoad,
    RelayProcess,
    add_common_args,
    console,
    fmt,
    md_table,
    open_files,
    percentile,
    print_table,
    progress,
    rss_kb,
    run_dir,
    run_main,
    wait_machine_quiet,
    write_section,
)
from bench.rawhttp import Connection

MODULE = "bench.http_attacks"


@dataclass
class Phase:
    name: str
    rss_before_kb: int = 0
    rss_peak_kb: int = 0
    rss_after_kb: int = 0
    files_peak: int = 0
    latencies: list[float] = field(default_factory=list)
    push_errors: int = 0
    #: Phase "large headers": the status each attacker read (0: none, the connection
    #: was closed first).
    statuses: list[int] = field(default_factory=list)
    sent_mib: float = 0.0
    #: Phase "slow connections": connections opened, closed by the relay, and how long
    #: the closed ones lived.
    opened: int = 0
    lifetimes: list[float] = field(default_factory=list)
    other_cores: float = float("nan")


class Relay(RelayProcess):
    """The bench's relay, with its HTTP connection cap set."""

    def __init__(self, logs: Path, http_cap: int) -> None:
        super().__init__(logs)
        self.http_cap = http_cap

    @property
    def options(self) -> list[str]:
        return [*super().options, "--http-max-connections", str(self.http_cap)]


class Pusher:
    """One push every ``interval`` s; latencies go to the current phase."""

    def __init__(self, relay: RelayProcess, pin: str, interval: float) -> None:
        self.conn = Connection(LOOPBACK, relay.port, relay.admin_key)
        self.request = self.conn.request_bytes(
            "POST", f"/v1/devices/{pin}/messages", b'{"data":{"n":1},"ttl":60}'
        )
        self.interval = interval
        self.phase: Phase | None = None

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                status, _ = await self.conn.send(self.request)
                ok = status == 201
            except Exception:
                ok = False
            phase = self.phase
            if phase is not None:
                if ok:
                    phase.latencies.append(time.perf_counter() - t0)
                else:
                    phase.push_errors += 1
            await asyncio.sleep(max(0.0, self.interval - (time.perf_counter() - t0)))


async def sample(relay: RelayProcess, phase: Phase, stop: asyncio.Event) -> None:
    while True:
        with contextlib.suppress(OSError):
            phase.rss_peak_kb = max(phase.rss_peak_kb, rss_kb(relay.pid))
            phase.files_peak = max(phase.files_peak, open_files(relay.pid))
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def large_header(port: int, mib: int, phase: Phase) -> None:
    """One request whose header never ends; returns once the relay answers or closes."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    status = 0

    async def read() -> None:
        nonlocal status
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            line = await reader.readline()
            if line.startswith(b"HTTP/1.1 "):
                status = int(line[9:12])

    reading = asyncio.create_task(read())
    chunk = b"a" * 65536
    try:
        writer.write(b"GET /v1/info HTTP/1.1\r\nHost: relay\r\nX-Big: ")
        for _ in range(mib * 16):
            if reading.done() and reader.at_eof():
                break
            writer.write(chunk)
            await writer.drain()
            phase.sent_mib += 1 / 16
    except ConnectionError:
        pass
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reading, 10)
    phase.statuses.append(status)
    writer.close()


async def slow_one(port: int, kind: int, pin: str, key: str, phase: Phase) -> None:
    """One slow connection, opened again each time the relay closes it."""
    head = (
        f"POST /v1/devices/{pin}/messages HTTP/1.1\r\nHost: relay\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode()
    starlette = (
        f"POST /v1/keys HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    while True:
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        phase.opened += 1
        t0 = time.monotonic()
        if kind == 2:
            writer.write(head)
        elif kind == 3:
            writer.write(starlette)
        i = 0
        try:
            while True:
                if kind == 1 and i < len(head):  # one byte a second, never the last
                    writer.write(head[i : i + 1])
                    i = min(i + 1, len(head) - 2)
                with contextlib.suppress(TimeoutError):
                    if not await asyncio.wait_for(reader.read(65536), 1.0):
                        break
        except ConnectionError:
            pass
        finally:
            writer.close()
        lived = time.monotonic() - t0
        phase.lifetimes.append(lived)
        if lived < 0.5:  # refused at the cap (503): come back after Retry-After
            await asyncio.sleep(1.0)


async def run_phase(
    relay: RelayProcess, pusher: Pusher, phase: Phase, attack: Callable[[], Awaitable[object]]
) -> None:
    await asyncio.sleep(1.0)  # a quiet second for the baseline
    phase.rss_before_kb = phase.rss_peak_kb = rss_kb(relay.pid)
    other = OtherLoad([relay.pid])
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(relay, phase, stop))
    await asyncio.sleep(0)  # the first sample before the attack
    pusher.phase = phase
    try:
        await attack()
    finally:
        pusher.phase = None
        stop.set()
        await sampler
        phase.other_cores = other.cores()
    await asyncio.sleep(1.0)
    phase.rss_after_kb = rss_kb(relay.pid)


async def measure(args: argparse.Namespace, logs: Path) -> list[Phase]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    relay = Relay(logs, args.http_cap)
    await relay.start()
    phases: list[Phase] = []
    try:
        async with httpx.AsyncClient(
            base_url=relay.url, headers={"Authorization": f"Bearer {relay.admin_key}"}
        ) as http:
            pin = (await http.post("/v1/devices", json={})).json()["pin"]
        pusher = Pusher(relay, pin, args.push_interval)
        await pusher.conn.open()
        pushing = asyncio.create_task(pusher.run())

        quiet = Phase("no attack")
        await run_phase(relay, pusher, quiet, lambda: asyncio.sleep(args.seconds))
        phases.append(quiet)

        large = Phase(f"{args.large} unfinished {args.header_mib} MiB headers")
        console.print(f"[bold]{large.name}[/]")
        await run_phase(
            relay,
            pusher,
            large,
            lambda: asyncio.gather(
                *(large_header(relay.port, args.header_mib, large) for _ in range(args.large))
            ),
        )
        phases.append(large)

        slow = Phase(f"{args.slow:,} slow or idle connections")
        with progress() as bar:
            task = bar.add_task(slow.name, total=round(args.seconds))

            async def slow_attack() -> None:
                holders = [
                    asyncio.create_task(slow_one(relay.port, i % 4, pin, relay.admin_key, slow))
                    for i in range(args.slow)
                ]
                t0 = time.monotonic()
                while (elapsed := time.monotonic() - t0) < args.seconds:
                    bar.update(task, completed=round(elapsed))
                    await asyncio.sleep(0.5)
                for holder in holders:
                    holder.cancel()
                await asyncio.gather(*holders, return_exceptions=True)
                bar.update(task, completed=round(args.seconds))

            await run_phase(relay, pusher, slow, slow_attack)
        phases.append(slow)
        pushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pushing
        await pusher.conn.close()
    finally:
        relay.stop()
        relay.remove_data()
    return phases


def report(args: argparse.Namespace, phases: list[Phase]) -> None:
    headers = [
        "phase",
        "RSS before, MB",
        "RSS peak, MB",
        "RSS after, MB",
        "open files, peak",
        "pushes",
        "push p50, ms",
        "push p99, ms",
        "push max, ms",
        "push errors",
        "other processes, cores",
    ]
    rows = []
    for p in phases:
        lat = sorted(x * 1000 for x in p.latencies)
        rows.append(
            [
                p.name,
                fmt(p.rss_before_kb / 1024),
                fmt(p.rss_peak_kb / 1024),
                fmt(p.rss_after_kb / 1024),
                str(p.files_peak),
                str(len(lat)),
                fmt(percentile(lat, 50), 2) if lat else "n/a",
                fmt(percentile(lat, 99), 2) if lat else "n/a",
                fmt(lat[-1], 2) if lat else "n/a",
                str(p.push_errors),
                fmt(p.other_cores, 2),
            ]
        )
    print_table("HTTP attacks: relay memory and push latency", headers, rows)
    large, slow = phases[1], phases[2]
    life = sorted(slow.lifetimes)
    notes = [
        f"- Large headers: answers {sorted(large.statuses)}; "
        f"{fmt(large.sent_mib)} MiB sent in all before the relay closed.",
        f"- Slow connections: {slow.opened:,} opened over {args.seconds:g} s "
        f"({args.slow:,} held at a time), {len(life):,} closed by the relay; lifetime "
        f"p50 {fmt(percentile(life, 50), 2) if life else 'n/a'} s, max "
        f"{fmt(life[-1], 2) if life else 'n/a'} s (header timeout 5 s, body 10 s).",
    ]
    for line in notes:
        console.print(line)
    if args.no_results:
        return
    body = "\n".join([md_table(headers, rows), "", *notes])
    path = write_section(MODULE, "HTTP attacks: memory and push latency (bench.http_attacks)", body)
    console.print(f"[green]wrote[/] {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_attacks",
        description="Relay RSS and push latency under large-header and slow-connection attacks.",
    )
    parser.add_argument("--large", type=int, default=4, help="large-header connections")
    parser.add_argument("--header-mib", type=int, default=256, help="MiB each tries to send")
    parser.add_argument("--slow", type=int, default=2000, help="slow or idle connections")
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase without end")
    parser.add_argument(
        "--http-cap",
        type=int,
        default=3000,
        help="the relay's --http-max-connections: above --slow, so that it holds them all",
    )
    parser.add_argument("--push-interval", type=float, default=0.02, help="seconds")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> list[Phase]:
    args = parse_args(argv)
    logs = run_dir("http_attacks")
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    console.print(f"[bold]{MODULE}[/]: logs in {logs}")
    phases = await measure(args, logs)
    report(args, phases)
    return phases


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main(), fast_loop=True)
