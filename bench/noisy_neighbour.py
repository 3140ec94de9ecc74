"""Noisy neighbour: a tenant flooding at 10x its rate quota, another tenant's latency.

Behind docs/DECISIONS.md entry 48 (issue 15: "a tenant flooding at 10x its rate gets
429s while another tenant's p99 push latency stays within 20 % of its value without
the flood").  One SQLite relay (ports picked free, stopped by pid).  Tenant *quiet*
(no quota) pushes to its device at a steady pace, one request at a time; tenant
*noisy* has a rate quota of ``--rate`` messages a second and, in the "flood" phases,
pushes at 10x that from several connections, from a process of its own.  Phases
alternate (quiet alone, with the flood, quiet alone, …) so drift in the machine's
load falls on both alike.
Answer times are the client's (bench/rawhttp.py, a lean keep-alive client), p50/p99
per phase; the flood's answers are counted by status.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing as mp
import os
import time

import httpx

from bench.common import (
    LOOPBACK,
    RelayProcess,
    add_common_args,
    console,
    fmt,
    md_table,
    percentile,
    print_table,
    publish,
    run_dir,
    run_main,
    wait_if_asked,
)
from bench.prosody import pin_cpus
from bench.rawhttp import Connection

MODULE = "bench.noisy_neighbour"
TITLE = "Noisy neighbour: tenant rate quotas (bench.noisy_neighbour)"
PUSH = json.dumps({"data": {"n": 1}, "ttl": 600}).encode()


def tenant(admin: httpx.Client, name: str, quotas: dict[str, float]) -> tuple[str, str]:
    """A tenant's push key and one device's PIN."""
    r = admin.post("/v1/tenants", json={"name": name, "quotas": quotas})
    r.raise_for_status()
    tid = r.json()["id"]
    keys = {}
    for scope in ("push", "devices"):
        made = admin.post(f"/v1/tenants/{tid}/keys", json={"name": scope, "scope": scope})
        made.raise_for_status()
        keys[scope] = made.json()["key"]
    dev = admin.post("/v1/devices", json={}, headers={"Authorization": f"Bearer {keys['devices']}"})
    dev.raise_for_status()
    return keys["push"], dev.json()["pin"]


async def paced(
    conn: Connection, request: bytes, per_s: float, until: float
) -> list[tuple[int, float]]:
    """Requests at ``per_s`` a second until ``until``: (status, answer ms) each."""
    out: list[tuple[int, float]] = []
    step = 1.0 / per_s
    due = time.monotonic()
    while (now := time.monotonic()) < until:
        if now < due:
            await asyncio.sleep(due - now)
        due += step
        t0 = time.perf_counter()
        status, _ = await conn.send(request)
        out.append((status, (time.perf_counter() - t0) * 1000))
    return out


async def _flood(
    port: int, key: str, pin: str, conns: int, per_s: float, until: float
) -> dict[int, int]:
    flooders = [await Connection(LOOPBACK, port, key).open() for _ in range(conns)]
    request = flooders[0].request_bytes("POST", f"/v1/devices/{pin}/messages", PUSH)
    done = await asyncio.gather(*(paced(c, request, per_s / conns, until) for c in flooders))
    for c in flooders:
        await c.close()
    codes: dict[int, int] = {}
    for answers in done:
        for status, _ in answers:
            codes[status] = codes.get(status, 0) + 1
    return codes


def ready() -> bool:
    return True


def flood_phase(
    port: int, key: str, pin: str, conns: int, per_s: float, until: float
) -> dict[int, int]:
    """One flood phase in a process of its own (its CPU does not delay the quiet
    tenant's client loop): answers by status."""
    return asyncio.run(_flood(port, key, pin, conns, per_s, until))


async def measure(args: argparse.Namespace) -> dict[str, object]:
    logs = run_dir("noisy_neighbour")
    relay = RelayProcess(logs)
    # The flood's process starts at the first call, after the pinning: it inherits it.
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    every_cpu = os.sched_getaffinity(0)
    try:
        await relay.start()
        with httpx.Client(
            base_url=relay.url, headers={"Authorization": f"Bearer {relay.admin_key}"}, timeout=30
        ) as admin:
            quiet_key, quiet_pin = tenant(admin, "quiet", {})
            noisy_key, noisy_pin = tenant(admin, "noisy", {"rate": args.rate})
        quiet = await Connection(LOOPBACK, relay.port, quiet_key).open()
        quiet_req = quiet.request_bytes("POST", f"/v1/devices/{quiet_pin}/messages", PUSH)
        if args.pin:  # the relay on one CPU, every client (and the flood) on the other
            pinned = pin_cpus(relay.pid)
            console.print(f"pinned: relay / clients on {pinned}")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, ready)  # the child started and imported this
        latency: dict[str, list[float]] = {"alone": [], "flood": []}
        flood_codes: dict[int, int] = {}
        quiet_codes: dict[int, int] = {}
        flood_s = 0.0
        cpu: dict[str, float] = {"alone": 0.0, "flood": 0.0}
        for n in range(2 * args.rounds):
            phase = "flood" if n % 2 else "alone"
            until = time.monotonic() + args.phase
            cpu_at = relay.cpu()
            flooding = None
            if phase == "flood":
                flooding = loop.run_in_executor(
                    pool,
                    flood_phase,
                    relay.port,
                    noisy_key,
                    noisy_pin,
                    args.conns,
                    args.factor * args.rate,
                    until,
                )
                flood_s += args.phase
            answers = await paced(quiet, quiet_req, args.quiet_rate, until)
            if flooding is not None:
                for status, count in (await flooding).items():
                    flood_codes[status] = flood_codes.get(status, 0) + count
            cpu[phase] += relay.cpu() - cpu_at
            for status, ms in answers:
                quiet_codes[status] = quiet_codes.get(status, 0) + 1
                latency[phase].append(ms)
            console.print(f"phase {n + 1}/{2 * args.rounds} ({phase}) done")
        await quiet.close()
        return {
            "latency": latency,
            "flood": flood_codes,
            "quiet": quiet_codes,
            "flood_s": flood_s,
            "cpu": cpu,
            "phase_s": args.phase * args.rounds,
        }
    finally:
        pool.shutdown(cancel_futures=True)
        relay.stop()
        relay.remove_data()
        os.sched_setaffinity(0, every_cpu)  # the report names the machine's CPUs


PINNED = " (its main process pinned to the first CPU, the clients and the flood to the rest)"


def report(args: argparse.Namespace, got: dict[str, object]) -> str:
    latency: dict[str, list[float]] = got["latency"]  # type: ignore[assignment]
    flood: dict[int, int] = got["flood"]  # type: ignore[assignment]
    quiet: dict[int, int] = got["quiet"]  # type: ignore[assignment]
    flood_s: float = got["flood_s"]  # type: ignore[assignment]
    cpu: dict[str, float] = got["cpu"]  # type: ignore[assignment]
    phase_s: float = got["phase_s"]  # type: ignore[assignment]
    headers = ["quiet tenant's pushes", "count", "p50 ms", "p99 ms", "relay CPU (cores)"]
    rows = []
    p99 = {}
    for phase in ("alone", "flood"):
        t = sorted(latency[phase])
        p99[phase] = percentile(t, 99)
        cores = cpu[phase] / phase_s
        rows.append(
            [phase, str(len(t)), fmt(percentile(t, 50), 2), fmt(p99[phase], 2), fmt(cores, 2)]
        )
    print_table("Noisy neighbour", headers, rows)
    ratio = p99["flood"] / p99["alone"] if p99["alone"] else float("nan")
    offered = sum(flood.values()) / flood_s if flood_s else 0.0
    accepted = flood.get(201, 0) / flood_s if flood_s else 0.0
    verdict = "met" if ratio <= 1.2 else "NOT met"
    summary = (
        f"Quiet tenant's p99 with the flood / without: {ratio:.2f} (target ≤ 1.20: {verdict}). "
        f"Flood: offered {offered:,.0f}/s against a rate quota of {args.rate:g}/s; "
        f"accepted {accepted:,.1f}/s; answers {dict(sorted(flood.items()))}. "
        f"Quiet tenant's answers: {dict(sorted(quiet.items()))}."
    )
    console.print(summary)
    return (
        f"One SQLite relay{PINNED if args.pin else ''}. Tenant quiet (no quota) pushes"
        f" {args.quiet_rate:g}/s, one request"
        f" at a time; tenant noisy (rate quota {args.rate:g}/s) pushes at {args.factor:g}x that"
        f" from {args.conns} connections in every other phase; {2 * args.rounds} phases of"
        f" {args.phase:g} s, alternating (client-side answer times, bench/rawhttp.py).\n\n"
        + md_table(headers, rows)
        + "\n\n"
        + summary
        + "\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0, help="the noisy tenant's quota")
    parser.add_argument("--quiet-rate", type=float, default=100.0, help="quiet pushes a second")
    parser.add_argument(
        "--factor", type=float, default=10.0, help="the flood, in multiples of the quota"
    )
    parser.add_argument("--conns", type=int, default=8, help="the flood's connections")
    parser.add_argument("--phase", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="alone/flood pairs")
    parser.add_argument("--note", default="", help="a line to add beside the figures")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the relay's main process to the first CPU and the clients to the rest, "
        "so the flood's generator does not take the relay's CPU (what is measured is the "
        "relay's own isolation)",
    )
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    await wait_if_asked(args)
    body = report(args, await measure(args))
    if args.note:
        body += f"\n{args.note}\n"
    publish(args, MODULE, TITLE, body)


if __name__ == "__main__":
    run_main(main(), fast_loop=True)
