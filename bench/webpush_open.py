"""What opening a Web Push message costs the device SDK (client/webpush.py): one
``open_message`` per message received (RFC 8291 key agreement, then AES-GCM), with
the keys in a ``MemoryKeyStore`` and in a ``FileKeyStore``, beside what the sender
spends encrypting it (pywebpush's ``WebPusher.encode``).

Small and 3,993-byte payloads (the largest that fits the relay's 4,096-byte body),
interleaved round by round.  CPU-bound and single-threaded: run it on a quiet machine
(it waits for one unless ``--wait-quiet 0``).

    python -m bench.webpush_open [--rounds 7] [--no-results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pywebpush

from bench.common import (
    add_common_args,
    console,
    fmt,
    md_table,
    print_table,
    wait_machine_quiet,
    write_section,
)
from pinrelay.client.keys import FileKeyStore, MemoryKeyStore, SubscriptionKeys, b64url
from pinrelay.client.webpush import open_message

PAYLOADS = {"small (100 B)": b"n" * 100, "largest (3,993 B)": b"x" * 3993}


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn()
        n += 20
    return elapsed / n * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    add_common_args(parser)
    args = parser.parse_args(argv)
    load = float("nan")
    if args.wait_quiet > 0:
        load = asyncio.run(wait_machine_quiet(args.wait_quiet))
    keys = SubscriptionKeys.generate()
    memory = MemoryKeyStore()
    memory.save("s1", keys)
    folder = tempfile.TemporaryDirectory()
    on_disk = FileKeyStore(Path(folder.name) / "keys.json")
    on_disk.save("s1", keys)
    pusher = pywebpush.WebPusher({"endpoint": "http://127.0.0.1/push/s1", "keys": keys.public()})
    rows = []
    for name, payload in PAYLOADS.items():
        body = pusher.encode(payload, content_encoding="aes128gcm")["body"]
        raw = json.dumps(
            {"body": b64url(body), "encoding": "aes128gcm", "subscription": "s1", "topic": None}
        ).encode()
        for store in (memory, on_disk):
            assert open_message(raw, "normal", store.load).payload == payload
        mem: list[float] = []
        disk: list[float] = []
        enc: list[float] = []
        for _ in range(args.rounds):
            mem.append(per_call_us(partial(open_message, raw, "normal", memory.load), args.seconds))
            disk.append(
                per_call_us(partial(open_message, raw, "normal", on_disk.load), args.seconds)
            )
            enc.append(per_call_us(partial(pusher.encode, payload), args.seconds))
        m, d, e = statistics.median(mem), statistics.median(disk), statistics.median(enc)
        rows.append([name, fmt(m), fmt(d), f"{1e6 / m:,.0f}", fmt(e), f"{len(body):,}"])
    folder.cleanup()
    headers = [
        "payload",
        "open µs (memory keys)",
        "open µs (file keys)",
        "messages/s, one core",
        "pywebpush encode µs",
        "body bytes",
    ]
    print_table("Opening a Web Push message (median of rounds)", headers, rows)
    if not args.no_results:
        busy = f" Other load on the machine at the start: {load:.2f} cores." if load == load else ""
        body_md = (
            f"Median of {args.rounds} interleaved rounds of {args.seconds} s each.{busy}\n\n"
            + md_table(headers, rows)
        )
        path = write_section("bench.webpush_open", "Opening Web Push messages", body_md)
        console.print(f"written to {path}")


if __name__ == "__main__":
    main()
