"""Before and after a change, in one run: single-push latency at a fixed rate
(bench.latency's paced phase) and durable batch throughput (bench.throughput's
pinrelay run), alternating relays built from two source trees.

The relays, their writer and the device load generator are subprocesses that import
``pinrelay`` from ``PYTHONPATH``; this script sets it to the ``src`` of a temporary
git worktree of ``--before`` (a commit), or to this checkout's ``src`` as it is, for
each run, and alternates them round by round (A B, B A, A B, …) so that the
machine's drift falls on both.  The worktree is removed at the end.

    python -m bench.before_after --before 02d9263 [--rounds 3] [--rate 3000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import latency, throughput
from bench.common import (
    ROOT,
    add_common_args,
    console,
    fmt,
    md_table,
    percentile,
    print_table,
    run_dir,
    run_main,
    source_state,
    wait_machine_quiet,
    write_section,
)


@dataclass
class Sample:
    side: str
    p50_ms: float
    p99_ms: float
    loop_us: float
    relay_us: float
    disk_p99_ms: float
    batch_us: float
    batch_rate: float


def use(src: Path) -> None:
    os.environ["PYTHONPATH"] = str(src)


async def one(side: str, src: Path, args: argparse.Namespace, n: int) -> Sample:
    use(src)
    logs = run_dir(f"before_after-{side}-{n}")
    largs = latency.parse_args(
        [
            *("--rate", str(args.rate), "--seconds", str(args.seconds), "--repeats", "1"),
            *("--devices", str(args.devices), "--wait-quiet", "0", "--no-results"),
        ]
    )
    result = await latency.measure(largs, logs)
    (phase,) = result.phases
    delivery = sorted(phase.delivery)
    targs = throughput.parse_args(
        [
            *("--devices", "200", "--messages", str(args.messages), "--skip-mosquitto"),
            *("--rounds", "1", "--wait-quiet", "0", "--no-results"),
        ]
    )
    run = await throughput.run_pinrelay(targs, logs, n)
    return Sample(
        side=side,
        p50_ms=percentile(delivery, 50) * 1000,
        p99_ms=percentile(delivery, 99) * 1000,
        loop_us=phase.loop_cpu_s / max(phase.sent, 1) * 1e6,
        relay_us=phase.cpu_s / max(phase.sent, 1) * 1e6,
        disk_p99_ms=percentile(phase.disk, 99) * 1000 if phase.disk else float("nan"),
        batch_us=run.cpu_us,
        batch_rate=run.rate,
    )


async def main(argv: list[str] | None = None) -> list[Sample]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the old tree: a git commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=3000.0, help="single pushes/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="paced phase")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--messages", type=int, default=40_000, help="batch throughput run")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    with tempfile.TemporaryDirectory(prefix="pinrelay-before-") as tmp:
        tree = Path(tmp) / "tree"
        git("worktree", "add", "--detach", str(tree), args.before)
        try:
            commit = git("rev-parse", "--short", args.before)
            sides = {"before": tree / "src", "after": ROOT / "src"}
            labels = {"before": f"`{commit}`", "after": source_state()}
            samples = await alternate(args, sides)
        finally:
            git("worktree", "remove", "--force", str(tree))
    report(args, labels, samples)
    return samples


def git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


async def alternate(args: argparse.Namespace, sides: dict[str, Path]) -> list[Sample]:
    saved = os.environ.get("PYTHONPATH")
    samples: list[Sample] = []
    try:
        for n in range(args.rounds):
            order = ["before", "after"] if n % 2 == 0 else ["after", "before"]
            for side in order:
                console.print(f"[bold]round {n + 1}/{args.rounds}[/]: {side}")
                samples.append(await one(side, sides[side], args, n))
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return samples


def report(args: argparse.Namespace, labels: dict[str, str], samples: list[Sample]) -> None:
    headers = [
        "round",
        "tree",
        "p50 ms",
        "p99 ms",
        "disk fdatasync p99 ms",
        "loop µs/push",
        "relay µs/push",
        "batch µs/msg",
        "batch msgs/s",
    ]
    rows = []
    for i, s in enumerate(samples):
        rows.append(
            [
                str(i // 2 + 1),
                s.side,
                fmt(s.p50_ms, 2),
                fmt(s.p99_ms, 2),
                fmt(s.disk_p99_ms, 2),
                fmt(s.loop_us, 0),
                fmt(s.relay_us, 0),
                fmt(s.batch_us, 0),
                fmt(s.batch_rate, 0),
            ]
        )
    for side in labels:
        mine = [s for s in samples if s.side == side]
        med = statistics.median
        rows.append(
            [
                "median",
                side,
                fmt(med(s.p50_ms for s in mine), 2),
                fmt(med(s.p99_ms for s in mine), 2),
                fmt(med(s.disk_p99_ms for s in mine), 2),
                fmt(med(s.loop_us for s in mine), 0),
                fmt(med(s.relay_us for s in mine), 0),
                fmt(med(s.batch_us for s in mine), 0),
                fmt(med(s.batch_rate for s in mine), 0),
            ]
        )
    print_table("Before and after", headers, rows)
    if args.no_results:
        return
    body = (
        f"Single pushes at a fixed {args.rate:,.0f}/s for {args.seconds:g} s to "
        f"{args.devices} linked devices (bench.latency's paced phase, pinned), then "
        f"{args.messages:,} messages in batches to 200 devices (bench.throughput's "
        f"pinrelay run), alternating the trees round by round.\n"
        f"- before: {labels['before']}\n- after: {labels['after']}\n\n" + md_table(headers, rows)
    )
    console.print(f"written to {write_section('bench.before_after', 'Before and after', body)}")


if __name__ == "__main__":
    run_main(main(), fast_loop=True)
