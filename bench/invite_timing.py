"""Invitation answer time to a device vs to a PIN with no device (issue 13).

Behind docs/DECISIONS.md entry 45.  ``POST /v1/devices/{pin}/contacts`` must answer
the same, in its timing too, whether the other PIN is a device or not (no PIN
enumeration).  On one SQLite relay and on one relay of a 3-node JetStream cluster
(pinrelay.testing.natsproc; ports picked free, every process stopped by pid), N
inviter devices each invite one device of their own (a first invitation: both
records written, a notice stored) and one random PIN with no device, alternately
first, one request at a time on a keep-alive connection: the two kinds interleave,
so drift in the machine's load falls on both alike.  Answer times are measured by
the client (httpx, from sending to the whole answer read); p50/p99 per kind, and the
difference of the medians.  ``--src`` runs the relays from another source tree
(e.g. main before the change) for a before/after figure.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import (
    RelayProcess,
    add_common_args,
    console,
    create_devices,
    fmt,
    md_table,
    percentile,
    print_table,
    run_main,
    wait_machine_quiet,
    write_section,
)
from pinrelay.testing.natsproc import NatsCluster

MODULE = "bench.invite_timing"
KINDS = ("device", "no device")


async def invite_all(relay: RelayProcess, samples: int) -> dict[str, list[float]]:
    """Answer times (ms) of invitations to devices and to PINs with no device."""
    inviters = await create_devices(relay, samples)
    invitees = await create_devices(relay, samples)
    taken = {pin for pin, _ in inviters + invitees}
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    async with httpx.AsyncClient(base_url=relay.url, timeout=30.0) as http:
        for i, ((pin, token), (other, _)) in enumerate(zip(inviters, invitees, strict=True)):
            nobody = secrets.token_hex(4).upper()
            while nobody in taken:
                nobody = secrets.token_hex(4).upper()
            order = [("device", other), ("no device", nobody)]
            for kind, to in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                r = await http.post(
                    f"/v1/devices/{pin}/contacts",
                    json={"pin": to},
                    headers={"Authorization": f"Bearer {token}"},
                )
                times[kind].append((time.perf_counter() - start) * 1000)
                assert r.status_code == 202, r.text
    return times


async def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-invite-"))
    logs = directory / "logs"
    logs.mkdir()
    limits = ["--invites-per-hour", "1000"]
    out: dict[str, dict[str, list[float]]] = {}
    relay = RelayProcess(logs, name="sqlite", extra=limits)
    relay.src = args.src
    try:
        await relay.start()
        out["SQLite, one relay"] = await invite_all(relay, args.samples)
    finally:
        relay.stop()
        relay.remove_data()
    cluster = NatsCluster(directory / "nats", 3, cluster_name="invite")
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        store = ["--store", ",".join(cluster.urls), "--node-id", "invite-a"]
        relay = RelayProcess(logs, name="cluster", extra=[*store, *limits])
        relay.src = args.src
        try:
            await relay.start(60)
            out["JetStream, 3 nodes"] = await invite_all(relay, args.samples)
        finally:
            relay.stop()
            relay.remove_data()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return out


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> str:
    headers = ["store", "to", "invitations", "p50 ms", "p99 ms", "mean ms"]
    rows: list[list[str]] = []
    gaps: list[str] = []
    for store, times in results.items():
        for kind in KINDS:
            t = sorted(times[kind])
            rows.append(
                [
                    store,
                    kind,
                    str(len(t)),
                    fmt(percentile(t, 50), 2),
                    fmt(percentile(t, 99), 2),
                    fmt(statistics.fmean(t), 2),
                ]
            )
        gap = statistics.median(times["device"]) - statistics.median(times["no device"])
        gaps.append(f"{store}: {gap:+.2f} ms")
    print_table("Invitation answer time", headers, rows)
    source = f" Relays run from `{args.src}`." if args.src else ""
    return (
        f"{args.samples} inviters each invite a device of their own (a first invitation)"
        " and a random PIN with no device, alternately first, one request at a time "
        f"(POST /v1/devices/{{pin}}/contacts, client-side answer times).{source}\n\n"
        + md_table(headers, rows)
        + "\n\nMedian to a device minus median to no device: "
        + "; ".join(gaps)
        + ".\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--samples", type=int, default=300, help="inviters (2 invitations each)")
    parser.add_argument("--src", type=Path, default=None, help="run the relays from this src/")
    parser.add_argument("--title", default="", help="a suffix for the RESULTS.md section")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    results = await measure(args)
    body = report(args, results)
    if not args.no_results:
        title = "Invitation timing, device vs no device (bench.invite_timing)" + args.title
        key = f"{MODULE} {args.title.strip()}" if args.title.strip() else MODULE
        path = write_section(key, title, body)
        console.print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main())
