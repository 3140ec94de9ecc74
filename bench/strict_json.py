"""What refusing bad JSON costs a push: ``core/strictjson.check`` (UTF-8 and repeated
keys, issue 11) beside msgspec's decode of the same body, which every push pays.

Both are timed in one process, interleaved round by round, on a small push body and
on one with 4 KB of data (the largest allowed), and reported as µs per body and as
the check's share of the decode.  CPU-bound and single-threaded: run it on a quiet
machine (it waits for one unless ``--wait-quiet 0``).

    python -m bench.strict_json [--rounds 7] [--no-results]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from functools import partial

import msgspec

from bench.common import (
    add_common_args,
    console,
    fmt,
    md_table,
    print_table,
    wait_machine_quiet,
    write_section,
)
from pinrelay.core import strictjson
from pinrelay.core.model import PushFields

BODIES = {
    "small push (60 B)": b'{"data":{"text":"hello","n":1},"ttl":600,"urgency":"high"}',
    "4 KB data": b'{"data":{"text":"'
    + b"x" * 3900
    + b'","list":[1,2.5,null,{"a":"caf\xc3\xa9"}]},"ttl":600,"topic":"t"}',
}


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            fn()
        n += 200
    return elapsed / n * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.wait_quiet > 0:
        asyncio.run(wait_machine_quiet(args.wait_quiet))
    decoder = msgspec.json.Decoder(PushFields)
    rows = []
    for name, payload in BODIES.items():
        checks: list[float] = []
        decodes: list[float] = []
        for _ in range(args.rounds):
            checks.append(per_call_us(partial(strictjson.check, payload), args.seconds))
            decodes.append(per_call_us(partial(decoder.decode, payload), args.seconds))
        check, decode = statistics.median(checks), statistics.median(decodes)
        rows.append(
            [name, fmt(check, 2), fmt(decode, 2), f"{check / decode:.1f}x", f"{len(payload):,}"]
        )
    headers = ["body", "strictjson.check µs", "msgspec decode µs", "ratio", "bytes"]
    print_table("Refusing bad JSON, per body (median of rounds)", headers, rows)
    if not args.no_results:
        body = (
            f"Median of {args.rounds} interleaved rounds of {args.seconds} s each.\n\n"
            + md_table(headers, rows)
        )
        console.print(f"written to {write_section('bench.strict_json', 'Strict JSON', body)}")


if __name__ == "__main__":
    main()
