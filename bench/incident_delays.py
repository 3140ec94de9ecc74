"""Detection and notification delay of an automatic incident (issue 16's benchmark).

A 3-node nats-server cluster and ``--relays`` relays on it (defaults of ``serve``
but ``--incident-after``), ``--devices`` devices (default 10,000) linked across the
relays by bench.linkgen processes in ``system`` mode (each link records when it first
got each incident event's ``system`` message).  Then two of the three nats-servers
are SIGKILLed: the store loses its quorum.

- **Detection delay**: the kill to the incident's ``opened_at`` (the first relay to
  open it; relays serve it from their own board while the store is away).
- **Notification delay**: ``opened_at`` to each linked device's ``system`` message
  (``event: "opened"``): p50, p99, the share told within 10 s.  Target (issue 16):
  open within 30 s, 99 % told within 10 s after.

The nodes are then restarted: the incident resolves after ``--resolve-after`` of
green, and the same is measured for ``resolved``.  Clocks: ``time.time()`` of one
machine in every process.  Every process is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Child,
    add_common_args,
    console,
    create_devices,
    fmt,
    linkgen_argv,
    md_table,
    percentile,
    print_table,
    progress,
    publish,
    run_main,
    stop_all,
    wait_if_asked,
    write_credentials,
)
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.relayproc import RelayProc

MODULE = "bench.incident_delays"
ADMIN_KEY = "pra_bench_incidents_admin_key"


async def open_auto(relays: list[RelayProc], event: str) -> dict[str, Any] | None:
    """The earliest automatic ``store`` incident any relay shows in state ``event``."""
    found: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=5) as http:
        for relay in relays:
            try:
                r = await http.get(f"{relay.url}/v1/incidents")
            except httpx.HTTPError:
                continue
            if r.status_code != 200:
                continue
            for i in r.json()["incidents"]:
                wanted = "open" if event == "opened" else "resolved"
                if i["source"] == "auto" and i["component"] == "store" and i["state"] == wanted:
                    found.append(i)
    found.sort(key=lambda i: i["opened_at"] if event == "opened" else i["resolved_at"])
    return found[0] if found else None


async def poll(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no {what} within {timeout:g} s")


def told(children: list[Child], event: str) -> int:
    return sum(
        int((c.latest.get("progress") or {}).get("system", {}).get(f"* {event}", 0))
        for c in children
    )


async def wait_told(children: list[Child], event: str, linked: int, timeout: float) -> None:
    with progress() as bar:
        task = bar.add_task(f"devices told: {event}", total=linked)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = told(children, event)
            bar.update(task, completed=n)
            if n >= linked:
                return
            await asyncio.sleep(0.25)


def delays(times: list[float], since: float, linked: int) -> dict[str, float]:
    d = sorted(t - since for t in times)
    if not d:
        return {
            "told": 0,
            "p50": float("nan"),
            "p99": float("nan"),
            "max": float("nan"),
            "in10": 0.0,
        }
    return {
        "told": len(d),
        "p50": percentile(d, 50),
        "p99": percentile(d, 99),
        "max": d[-1],
        "in10": 100.0 * sum(1 for x in d if x <= 10.0) / linked,
    }


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cluster = NatsCluster(work / "nats", 3, cluster_name="incidents")
    relays: list[RelayProc] = []
    children: list[Child] = []
    try:
        cluster.launch()
        await cluster.wait_ready_async(30, started=True)
        flags = [
            "--store", ",".join(cluster.urls),
            "--incident-after", str(args.incident_after),
            "--resolve-after", str(args.resolve_after),
        ]  # fmt: skip
        for n in range(args.relays):
            relay = RelayProc(
                work / f"relay-{n}", admin_key=ADMIN_KEY, extra=[*flags, "--node-id", f"r{n}"]
            )
            relays.append(relay)
            relay.start(timeout=60)
        with progress() as bar:
            creds = await create_devices(relays[0], args.devices, progress=bar)  # type: ignore[arg-type]
        share = (len(creds) + args.relays - 1) // args.relays
        for n, relay in enumerate(relays):
            part = write_credentials(work / f"creds-{n}.json", creds[n * share : (n + 1) * share])
            argv = linkgen_argv(
                relay.link_port, part, f"127.0.0.{n + 2}", "system",
                "--latency-out", str(work / f"system-{n}.json"),
            )  # fmt: skip
            child = Child(f"linkgen-{n}", argv, work)
            children.append(child)
            await child.start()
        ready = [await c.expect("ready", 300) for c in children]
        linked = sum(int(r["welcomed"]) for r in ready)
        console.print(f"{linked} devices linked across {args.relays} relays")
        killed = cluster.nodes[1:]
        kill_t = time.time()
        for node in killed:
            node.kill()
        opened = await poll("open incident", lambda: open_auto(relays, "opened"), 120)
        opened_t = parse_rfc3339(opened["opened_at"]) / 1000
        console.print(f"incident {opened['id']} opened {opened_t - kill_t:.1f} s after the kill")
        await wait_told(children, "opened", linked, args.wait_told)
        for node in killed:
            node.start()
        await cluster.wait_ready_async(60, started=True)
        resolved = await poll("resolved incident", lambda: open_auto(relays, "resolved"), 180)
        resolved_t = parse_rfc3339(resolved["resolved_at"]) / 1000
        await wait_told(children, "resolved", linked, args.wait_told)
        await stop_all(children)
        times: dict[str, list[float]] = {}
        for n in range(len(children)):
            for key, values in json.loads((work / f"system-{n}.json").read_text()).items():
                times.setdefault(key, []).extend(values)
        return {
            "linked": linked,
            "detection": opened_t - kill_t,
            "started_to_open": (
                parse_rfc3339(opened["opened_at"]) - parse_rfc3339(opened["started_at"])
            )
            / 1000,
            "opened": delays(times.get("* opened", []), opened_t, linked),
            "resolved": delays(times.get("* resolved", []), resolved_t, linked),
            "ids": sorted({k.split()[0] for k in times if not k.startswith("*")}),
        }
    finally:
        await stop_all(children)
        for relay in relays:
            relay.stop()
        cluster.stop()


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    headers = ["event", "devices told", "within 10 s", "p50 s", "p99 s", "max s"]
    rows = [
        [
            event,
            f"{r[event]['told']:,} of {r['linked']:,}",
            f"{fmt(r[event]['in10'])} %",
            fmt(r[event]["p50"], 2),
            fmt(r[event]["p99"], 2),
            fmt(r[event]["max"], 2),
        ]
        for event in ("opened", "resolved")
    ]
    print_table("Notification delay (from the incident's time)", headers, rows)
    verdict = "meets" if r["detection"] <= 30 else "misses"
    text = (
        f"3-node nats-server cluster, {args.relays} relays (`--incident-after "
        f"{args.incident_after} --resolve-after {args.resolve_after}`), "
        f"{r['linked']:,} devices linked across them by bench.linkgen. Two of the "
        f"three nats-servers SIGKILLed (the store loses its quorum).\n\n"
        f"- Detection delay (kill to `opened_at`): **{r['detection']:.1f} s** ({verdict} "
        f"the 30 s target); red to open (`opened_at` - `started_at`): "
        f"{r['started_to_open']:.1f} s.\n"
        f"- Incident ids the devices heard: {', '.join(r['ids'])}.\n\n" + md_table(headers, rows)
    )
    console.print(text)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--incident-after", type=float, default=20.0)
    parser.add_argument("--resolve-after", type=float, default=10.0)
    parser.add_argument("--wait-told", type=float, default=60.0, help="s to wait for all told")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    await wait_if_asked(args)
    work = Path(tempfile.mkdtemp(prefix="pinrelay-bench-incidents-"))
    try:
        result = await measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    publish(
        args,
        MODULE,
        "Incident detection and notification (bench.incident_delays)",
        report(args, result),
    )


if __name__ == "__main__":
    run_main(main())
