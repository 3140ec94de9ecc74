"""What one fdatasync costs after a quiet gap, against one back to back.

A relay at a steady rate commits apart: at 200 chat messages a second, one durable
commit every 2.5 ms.  ``bench.latency``'s ``disk_probe`` syncs back to back, which
keeps the disk (and, on a VM, the host's I/O thread and both vCPUs) awake: the
fastest a sync gets.  This measures the same probe (4 KiB overwritten, then
fdatasync, in a folder on the data disk) with a sleep of ``--gaps`` ms after each
sync, the gaps interleaved in ``--rounds`` rounds (these machines drift), from the
CPU the chat bench pins a server to (``--cpu``; -1: unpinned).  A round trip with
two durable commits on its path pays the spaced figure twice.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from bench.common import (
    add_common_args,
    console,
    fmt,
    md_table,
    percentile,
    print_table,
    progress,
    publish,
    run_main,
    wait_if_asked,
)
from bench.latency import disk_probe
from bench.prosody import chosen_cpu

MODULE = "bench.disk_gaps"


def measure(args: argparse.Namespace, cpu: int | None) -> dict[float, list[float]]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-gaps-", dir=args.dir))
    results: dict[float, list[float]] = {gap: [] for gap in args.gaps}
    try:
        with progress() as bar:
            task = bar.add_task("gap rounds", total=args.rounds * len(args.gaps))
            for _ in range(args.rounds):
                for gap in args.gaps:
                    results[gap] += disk_probe(directory, args.count, cpu=cpu, gap=gap / 1000)
                    bar.advance(task)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return results


def report(args: argparse.Namespace, results: dict[float, list[float]], cpu: int | None) -> str:
    headers = ["quiet after each sync, ms", "n", "p50 ms", "p90 ms", "p99 ms", "p50 / back to back"]
    base = percentile(sorted(results[min(results)]), 50)
    rows = []
    for gap, values in results.items():
        v = sorted(values)
        p50 = percentile(v, 50)
        rows.append(
            [
                fmt(gap, 1) if gap else "none (back to back)",
                str(len(v)),
                *(fmt(percentile(v, p) * 1000, 3) for p in (50, 90, 99)),
                f"{p50 / base:.1f}x" if base else "n/a",
            ]
        )
    print_table("fdatasync after a quiet gap", headers, rows)
    where = f"CPU {cpu}" if cpu is not None else "unpinned"
    return (
        f"{args.rounds} rounds, each: {args.count} fdatasyncs of a 4 KiB overwrite per gap, "
        f"the gaps in turn; measured from {where}.\n\n" + md_table(headers, rows)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument(
        "--gaps",
        type=lambda text: sorted(float(g) for g in text.split(",")),
        default=[0.0, 0.2, 0.5, 1.0, 2.5, 5.0, 20.0],
        help="ms slept after each sync, comma-separated (0: back to back)",
    )
    parser.add_argument("--count", type=int, default=300, help="syncs per gap per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="the CPU to measure from (default: the chat bench's server CPU; -1: unpinned)",
    )
    parser.add_argument("--dir", default=None, help="a folder on the disk to measure")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if not args.gaps or any(g < 0 for g in args.gaps):
        parser.error("--gaps: milliseconds, 0 or more, comma-separated")
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds: 1 or more")
    return args


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    await wait_if_asked(args)
    cpu = None if args.cpu == -1 else chosen_cpu(args.cpu)
    results = await asyncio.to_thread(measure, args, cpu)
    publish(
        args, MODULE, "fdatasync after a quiet gap (bench.disk_gaps)", report(args, results, cpu)
    )
    console.print("done")


if __name__ == "__main__":
    run_main(main())
