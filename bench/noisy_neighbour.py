"""Noisy neighbour: a tenant flooding at 10x its rate quota, another tenant's latency.

Behind docs/DECISIONS.md entry 48 (issue 15: "a tenant flooding at 10x its rate gets
429s while another tenant's p99 push latency stays within 20 % of its value without
the flood").  One SQLite relay (ports picked free, stopped by pid).  Tenant *quiet*
(no quota) pushes to its device at a steady pace, one request at a time; tenant
*noisy* has a rate quota of ``--rate`` messages a second and, from a process of its
own over several connections, is silent, pushes within its quota, or floods at 10x
it, in phases that take turns so drift in the machine's load falls on all alike.
"Without the flood" is read both ways: the noisy tenant silent, and the noisy tenant
using its quota (what the quota allows it; the flood adds only refusals to that).
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
from pinrelay.api.messages import REFUSAL_HOLD_S

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
        # The noisy tenant in each phase, as a multiple of its quota: silent, within
        # it (its legitimate share of the relay), and flooding.
        offered = {"alone": 0.0, "quota": QUOTA_SHARE, "flood": args.factor}
        latency: dict[str, list[float]] = {phase: [] for phase in PHASES}
        noisy_codes: dict[str, dict[int, int]] = {phase: {} for phase in PHASES}
        quiet_codes: dict[int, int] = {}
        cpu: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        for n in range(len(PHASES) * args.rounds):
            phase = PHASES[n % len(PHASES)]
            until = time.monotonic() + args.phase
            cpu_at = relay.cpu()
            noisy = None
            if offered[phase]:
                noisy = loop.run_in_executor(
                    pool,
                    flood_phase,
                    relay.port,
                    noisy_key,
                    noisy_pin,
                    args.conns,
                    offered[phase] * args.rate,
                    until,
                )
            answers = await paced(quiet, quiet_req, args.quiet_rate, until)
            if noisy is not None:
                for status, count in (await noisy).items():
                    codes = noisy_codes[phase]
                    codes[status] = codes.get(status, 0) + count
            cpu[phase] += relay.cpu() - cpu_at
            for status, ms in answers:
                quiet_codes[status] = quiet_codes.get(status, 0) + 1
                latency[phase].append(ms)
            console.print(f"phase {n + 1}/{len(PHASES) * args.rounds} ({phase}) done")
        await quiet.close()
        return {
            "latency": latency,
            "noisy": noisy_codes,
            "quiet": quiet_codes,
            "cpu": cpu,
            "phase_s": args.phase * args.rounds,
        }
    finally:
        pool.shutdown(cancel_futures=True)
        relay.stop()
        relay.remove_data()
        os.sched_setaffinity(0, every_cpu)  # the report names the machine's CPUs


#: The noisy tenant's phases, in the order they run each round.
PHASES = ("alone", "quota", "flood")
PHASE_NAMES = {
    "alone": "silent",
    "quota": "within its quota",
    "flood": "flooding ({factor:g}x its {rate:g}/s)",
}
#: The noisy tenant's pace within its quota: a little under it, so that the token
#: bucket refuses nothing (a paced sender's jitter would otherwise meet a 429).
QUOTA_SHARE = 0.9

PINNED = " (its main process pinned to the first CPU, the clients and the flood to the rest)"


def report(args: argparse.Namespace, got: dict[str, object]) -> str:
    latency: dict[str, list[float]] = got["latency"]  # type: ignore[assignment]
    noisy: dict[str, dict[int, int]] = got["noisy"]  # type: ignore[assignment]
    quiet: dict[int, int] = got["quiet"]  # type: ignore[assignment]
    cpu: dict[str, float] = got["cpu"]  # type: ignore[assignment]
    phase_s: float = got["phase_s"]  # type: ignore[assignment]
    headers = [
        "noisy tenant",
        "its answers /s (201 / 429)",
        "quiet pushes",
        "quiet p50 ms",
        "quiet p99 ms",
        "relay CPU (cores)",
    ]
    rows = []
    p99 = {}
    for phase in PHASES:
        t = sorted(latency[phase])
        p99[phase] = percentile(t, 99)
        codes = noisy[phase]
        answers = f"{codes.get(201, 0) / phase_s:,.0f} / {codes.get(429, 0) / phase_s:,.0f}"
        rows.append(
            [
                PHASE_NAMES[phase].format(rate=args.rate, factor=args.factor),
                answers,
                str(len(t)),
                fmt(percentile(t, 50), 2),
                fmt(p99[phase], 2),
                fmt(cpu[phase] / phase_s, 2),
            ]
        )
    print_table("Noisy neighbour", headers, rows)

    def ratio(a: str, b: str) -> float:
        return p99[a] / p99[b] if p99[b] else float("nan")

    def verdict(r: float) -> str:
        return "met" if r <= 1.2 else "NOT met"

    excess, total = ratio("flood", "quota"), ratio("flood", "alone")
    summary = (
        f"Quiet tenant's p99 with the flood / with the noisy tenant within its quota:"
        f" **{excess:.2f}** (target ≤ 1.20: {verdict(excess)}); with the flood / with the"
        f" noisy tenant silent: **{total:.2f}** ({verdict(total)}). Flood: paced at"
        f" {args.factor * args.rate:,.0f}/s against a rate quota of {args.rate:g}/s, one"
        f" request at a time per connection, answered"
        f" {sum(noisy['flood'].values()) / phase_s:,.0f}/s (429s are held"
        f" {REFUSAL_HOLD_S * 1000:g} ms); answers {dict(sorted(noisy['flood'].items()))}."
        " Quiet tenant's answers:"
        f" {dict(sorted(quiet.items()))}."
    )
    console.print(summary)
    return (
        f"One SQLite relay{PINNED if args.pin else ''}. Tenant quiet (no quota) pushes"
        f" {args.quiet_rate:g}/s, one request at a time. Tenant noisy (rate quota"
        f" {args.rate:g}/s, {args.conns} connections) is silent, pushes at"
        f" {QUOTA_SHARE:g}x its quota, or floods at {args.factor:g}x it; {len(PHASES)} phases"
        f" of {args.phase:g} s in turn, {args.rounds} rounds (client-side answer times,"
        " bench/rawhttp.py).\n\n" + md_table(headers, rows) + "\n\n" + summary + "\n"
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
    parser.add_argument("--rounds", type=int, default=3, help="silent/quota/flood rounds")
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
