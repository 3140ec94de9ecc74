"""How long an incident takes to reach a webhook receiver (docs/DECISIONS.md 56).

One relay (``pinrelay serve``, on SQLite, then on a fresh 3-node JetStream cluster,
ports picked free, stopped by pid), one subscription to a receiver on 127.0.0.1
(http.server, answering 200), ``--opens`` incidents opened one after another with
the relay's admin key: the time from the 201 of ``POST /v1/incidents`` to the
receiver having the delivery, in ms.  The first open is not counted (the
subscription's worker may not have started yet: it starts within a second).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    OtherLoad,
    add_common_args,
    console,
    fmt,
    md_table,
    percentile,
    print_table,
    run_main,
    wait_if_asked,
    write_section,
)
from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.ports import free_port
from pinrelay.testing.relayproc import RelayProc

MODULE = "bench.webhook_latency"


class Receiver:
    def __init__(self) -> None:
        self.count = 0
        got = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got.count += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def opens(directory: Path, extra: list[str], count: int) -> list[float]:
    directory.mkdir(parents=True, exist_ok=True)
    receiver = Receiver()
    relay = RelayProc(directory / "relay", extra=extra)
    try:
        relay.start(timeout=60)
        with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as a:
            hook = {"url": f"http://127.0.0.1:{receiver.port}/h", "secret": "s" * 32}
            a.post("/v1/webhooks", json={**hook, "events": ["incident"]}).raise_for_status()
            found: list[float] = []
            for n in range(count + 1):
                body = {"component": "store", "severity": "minor", "text": f"n{n}"}
                a.post("/v1/incidents", json=body).raise_for_status()
                t0 = time.monotonic()
                while receiver.count < n + 1:
                    time.sleep(0.0005)
                if n:
                    found.append((time.monotonic() - t0) * 1000)
        return found
    finally:
        relay.stop()
        relay.kill()
        receiver.close()


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], float]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-webhooks-"))
    cluster = NatsCluster(directory / "nats", 3, cluster_name="webhooks")
    try:
        results = {"sqlite": opens(directory / "sqlite", [], args.opens)}
        cluster.launch()
        cluster.wait_ready(30, started=True)
        load = OtherLoad([node.pid for node in cluster.nodes])
        store = ["--store", ",".join(cluster.urls), "--node-id", "bench"]
        results["jetstream (3 nodes, R3)"] = opens(directory / "js", store, args.opens)
        return results, load.cores()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, list[float]], load: float) -> str:
    headers = ["store", "median ms", "p90 ms", "max ms", "opens"]
    rows = []
    for store, runs in results.items():
        ordered = sorted(runs)
        rows.append(
            [
                store,
                fmt(statistics.median(ordered), 1),
                fmt(percentile(ordered, 90), 1),
                fmt(ordered[-1], 1),
                str(len(ordered)),
            ]
        )
    print_table("Incident open → webhook receiver", headers, rows)
    return (
        f"One relay, one subscription, a receiver on 127.0.0.1; {args.opens} incidents "
        f"opened one after another, each timed from the API's 201 to the receiver "
        f"having it. Other processes meanwhile (cluster run): {load:.2f} cores.\n\n"
        + md_table(headers, rows)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--opens", type=int, default=30, help="incidents per store")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    await wait_if_asked(args)
    results, load = await asyncio.to_thread(measure, args)
    body = report(args, results, load)
    if not args.no_results:
        path = write_section(
            MODULE, "Incident open to webhook receiver (bench.webhook_latency)", body
        )
        console.print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main())
