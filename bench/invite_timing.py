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
import time
from pathlib import Path

import httpx

from bench.common import (
    RelayProcess,
    add_common_args,
    create_devices,
    md_table,
    print_table,
    publish,
    run_main,
    wait_if_asked,
)
from bench.timing import (
    TIME_HEADERS,
    alternately,
    median_gap,
    on_both_stores,
    pin_with_no_device,
    time_cells,
)

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
            order = [("device", other), ("no device", pin_with_no_device(taken))]
            for kind, to in alternately(i, order):
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
    async def probe(relay: RelayProcess) -> dict[str, list[float]]:
        return await invite_all(relay, args.samples)

    limits = ["--invites-per-hour", "1000"]
    return await on_both_stores("invite", probe, extra=limits, src=args.src)


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> str:
    headers = ["store", "to", "invitations", *TIME_HEADERS]
    rows: list[list[str]] = []
    gaps: list[str] = []
    for store, times in results.items():
        rows += [[store, kind, *time_cells(times[kind])] for kind in KINDS]
        gap = median_gap(times["device"], times["no device"])
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
    await wait_if_asked(args)
    body = report(args, await measure(args))
    title = "Invitation timing, device vs no device (bench.invite_timing)" + args.title
    key = f"{MODULE} {args.title.strip()}" if args.title.strip() else MODULE
    publish(args, key, title, body)


if __name__ == "__main__":
    run_main(main())
