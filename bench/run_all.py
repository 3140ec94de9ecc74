"""Run every benchmark with its defaults (``make bench``); ``--quick`` is passed through.

Each runs as its own process (``python -m bench.<name>``), one after another, so
none inherits another's sockets, children or memory; each rewrites its own
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from types import FrameType

from bench.common import console

BENCHMARKS = (
    "link_memory",
    "link_attacks",
    "throughput",
    "latency",
    "cluster_throughput",
    "cluster_failover",
    "chat_roundtrip",
    "group_fanout",
    "webpush_push",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run_all", description="Run all pinrelay benchmarks."
    )
    parser.add_argument("--quick", action="store_true", help="the smaller run of each")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset, in this order"
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        console.print(f"[red]unknown benchmark(s):[/] {', '.join(unknown)}")
        return 2
    extra = [
        flag for flag, on in (("--quick", args.quick), ("--no-results", args.no_results)) if on
    ]
    current: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        # Let the running benchmark stop its relay and generators itself.
        if current is not None and current.poll() is None:
            current.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)
    failed: list[str] = []
    timings: list[tuple[str, float, int]] = []
    try:
        for name in names:
            command = [sys.executable, "-m", f"bench.{name}", *extra]
            console.rule(f"[bold]python -m bench.{name} {' '.join(extra)}")
            started = time.perf_counter()
            current = subprocess.Popen(command)
            try:
                code = current.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached it too (same process group); SIGTERM was forwarded.
                try:
                    current.wait(60)
                except subprocess.TimeoutExpired:
                    current.kill()
                    current.wait()
                raise
            timings.append((name, time.perf_counter() - started, code))
            if code != 0:
                failed.append(name)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    for name, seconds, code in timings:
        status = "[green]ok[/]" if code == 0 else f"[red]exit {code}[/]"
        console.print(f"bench.{name}: {status} in {seconds:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
