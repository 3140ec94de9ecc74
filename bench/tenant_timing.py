"""Answer time for another tenant's device vs a PIN with no device (issue 15).

A tenant's key must learn nothing of another tenant's devices: every such call
answers as for a PIN that does not exist, "with the same body and timing".  The
body is checked by tests/api/tenant_isolation.py; this measures the timing.  On one
SQLite relay and on one relay of a 3-node JetStream cluster (ports picked free, every
process stopped by pid): tenants A and B, N devices of A; B's `push` key pushes to each
of A's devices and to a random PIN with no device (``POST /v1/devices/{pin}/messages``),
and B's `devices` key shows each (``GET /v1/devices/{pin}``), the two kinds alternately
first, one request at a time on a keep-alive connection, so drift in the machine's load
falls on both alike.  Client-side answer times (httpx, from sending to the whole answer
read); p50/p99 per kind and the difference of the medians.
"""

from __future__ import annotations

import argparse
import time

import httpx

from bench.common import (
    RelayProcess,
    add_common_args,
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

MODULE = "bench.tenant_timing"
KINDS = ("another tenant's", "no device")
CALLS = ("push", "show")
TITLE = "Tenant isolation timing, another tenant's device vs none (bench.tenant_timing)"


async def _tenant(http: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    made = await http.post("/v1/tenants", json={"name": name})
    assert made.status_code == 201, made.text
    tid: str = made.json()["id"]
    keys = {}
    for scope in ("push", "devices"):
        key = await http.post(f"/v1/tenants/{tid}/keys", json={"name": scope, "scope": scope})
        assert key.status_code == 201, key.text
        keys[scope] = key.json()["key"]
    return tid, keys


async def probe_all(relay: RelayProcess, samples: int) -> dict[str, dict[str, list[float]]]:
    """Answer times (ms) per call and kind."""
    admin = {"Authorization": f"Bearer {relay.admin_key}"}
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in KINDS} for c in CALLS}
    async with httpx.AsyncClient(base_url=relay.url, headers=admin, timeout=30.0) as http:
        a_id, _ = await _tenant(http, "A")
        _, b_keys = await _tenant(http, "B")
        pins = []
        for _ in range(samples):
            made = await http.post("/v1/devices", json={"tenant": a_id})
            assert made.status_code == 201, made.text
            pins.append(made.json()["pin"])
        taken = set(pins)
        push = {"Authorization": f"Bearer {b_keys['push']}"}
        show = {"Authorization": f"Bearer {b_keys['devices']}"}
        body = {"data": {"n": 1}, "ttl": 60}
        for i, pin in enumerate(pins):
            order = [(KINDS[0], pin), (KINDS[1], pin_with_no_device(taken))]
            for kind, to in alternately(i, order):
                start = time.perf_counter()
                r = await http.post(f"/v1/devices/{to}/messages", json=body, headers=push)
                times["push"][kind].append((time.perf_counter() - start) * 1000)
                assert r.status_code == 404, r.text
                start = time.perf_counter()
                r = await http.get(f"/v1/devices/{to}", headers=show)
                times["show"][kind].append((time.perf_counter() - start) * 1000)
                assert r.status_code == 404, r.text
    return times


async def measure(args: argparse.Namespace) -> dict[str, dict[str, dict[str, list[float]]]]:
    async def probe(relay: RelayProcess) -> dict[str, dict[str, list[float]]]:
        return await probe_all(relay, args.samples)

    return await on_both_stores("tenant", probe)


def report(args: argparse.Namespace, results: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    headers = ["store", "call", "to", "calls", *TIME_HEADERS]
    rows: list[list[str]] = []
    gaps: list[str] = []
    for store, per_call in results.items():
        for call, times in per_call.items():
            rows += [[store, call, kind, *time_cells(times[kind])] for kind in KINDS]
            gap = median_gap(times[KINDS[0]], times[KINDS[1]])
            gaps.append(f"{store}, {call}: {gap:+.3f} ms")
    print_table("Another tenant's device vs no device", headers, rows)
    return (
        f"{args.samples} devices of tenant A; tenant B's push key pushes to each and to a "
        "random PIN with no device, and B's devices key shows each, alternately first, one "
        "request at a time (client-side answer times; every answer 404).\n\n"
        + md_table(headers, rows)
        + "\n\nMedian for another tenant's device minus median for no device: "
        + "; ".join(gaps)
        + ".\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--samples", type=int, default=500, help="devices of tenant A")
    add_common_args(parser)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    await wait_if_asked(args)
    body = report(args, await measure(args))
    publish(args, MODULE, TITLE, body)


if __name__ == "__main__":
    run_main(main())
