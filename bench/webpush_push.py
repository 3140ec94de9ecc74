"""Web Push requests accepted durably per second on one node, beside the JSON push API.

Four variants, each on a fresh SQLite relay per run, interleaved round by round (the
order rotates each round, so the machine's drift falls on all of them):

- ``json``: ``POST /v1/devices/{pin}/messages`` with the admin key, whose ``data``
  carries the same base64url body a Web Push message stores;
- ``webpush``: ``POST /push/{id}`` unsigned (``TTL``, ``Content-Encoding: aes128gcm``);
- ``vapid-once``: the same with one VAPID token (py_vapid, RFC 8292) on every request,
  as pywebpush and web-push reuse theirs: the relay verifies it once;
- ``vapid-each``: a new token per request (all signed before the timed part, so the
  sender's signing is not measured): the relay verifies every one.

D devices (one subscription each, made with the device's token; with the VAPID key
for the VAPID variants), M requests spread over them round-robin, in closed loops
on N keep-alive connections (bench/rawhttp.py, the JSON push benchmarks' client) from
this process on uvloop.  The body is one real RFC 8291 ``aes128gcm`` body made once
with pywebpush (the relay never decrypts; the same bytes every request).  The relay
runs with ``--webpush-per-minute`` and ``--webpush-sender-per-minute`` far above the
rate, so the limiters are consulted on every push but never refuse.

Measured: requests answered 201 per second (every one must be; the relay's
``pinrelay_messages_accepted`` counter must rise by M), the relay's CPU per request
(utime+stime of its process and its SQLite writer, from the first request until it
went quiet after the last), the answer latency (stored and fsynced), and the disk's
own fdatasync latency measured just before in the relay's data folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import py_vapid
import pywebpush
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.common import (
    OtherLoad,
    RelayProcess,
    add_common_args,
    console,
    cpu_seconds,
    create_devices,
    fmt,
    machine,
    md_table,
    percentile,
    print_table,
    progress,
    run_dir,
    run_main,
    thread_cpu,
    wait_machine_quiet,
    wait_quiet,
    write_section,
)
from bench.latency import disk_probe
from bench.rawhttp import Connection
from pinrelay.client.keys import SubscriptionKeys, b64url

MODULE = "bench.webpush_push"
VARIANTS = ("json", "webpush", "vapid-once", "vapid-each")
LABELS = {
    "json": "JSON push API",
    "webpush": "Web Push, unsigned",
    "vapid-once": "Web Push, VAPID, one token",
    "vapid-each": "Web Push, VAPID, new token each",
}
#: Far above any rate here: the limiters run, and never refuse.
NO_LIMIT = 100_000_000
#: Plaintext of the one encrypted body (pywebpush's small payload, as bench.webpush_open).
PAYLOAD = b"n" * 100


@dataclass
class Run:
    variant: str
    round: int
    requests: int
    wall_s: float
    cpu_s: float
    loop_s: float
    client_cpu_s: float
    other_cores: float
    answers: list[float] = field(default_factory=list)
    disk: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6


@dataclass(frozen=True)
class Sender:
    """What every run pushes with: one encrypted body and one VAPID key pair."""

    keys: SubscriptionKeys
    body: bytes
    vapid: py_vapid.Vapid02
    vapid_public: str

    @classmethod
    def make(cls) -> Sender:
        keys = SubscriptionKeys.generate()
        pusher = pywebpush.WebPusher({"endpoint": "http://127.0.0.1/push/x", "keys": keys.public()})
        body = pusher.encode(PAYLOAD, content_encoding="aes128gcm")["body"]
        vapid = py_vapid.Vapid02()
        vapid.generate_keys()
        point = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return cls(keys, bytes(body), vapid, b64url(point))

    def token(self, audience: str, n: int) -> str:
        """A VAPID Authorization value (``vapid t=…, k=…``); ``n`` makes it unique."""
        claims = {
            "aud": audience,
            "exp": int(time.time()) + 12 * 3600,
            "sub": f"mailto:bench+{n}@example.com",
        }
        return str(self.vapid.sign(claims)["Authorization"])


class _SubscriptionView(msgspec.Struct):
    id: str
    endpoint: str


async def subscribe(
    relay: RelayProcess, creds: Sequence[tuple[str, str]], sender: Sender, vapid: bool
) -> list[str]:
    """One subscription per device (made with its token); their ids, in order."""
    fields: dict[str, object] = {"keys": sender.keys.public()}
    if vapid:
        fields["applicationServerKey"] = sender.vapid_public
    ids: list[str] = [""] * len(creds)
    decoder = msgspec.json.Decoder(_SubscriptionView)
    async with httpx.AsyncClient(base_url=relay.url, timeout=30.0) as http:

        async def one(i: int) -> None:
            pin, token = creds[i]
            r = await http.post(
                f"/v1/devices/{pin}/subscriptions",
                json=fields,
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code != 201:
                raise RuntimeError(f"subscribe: {r.status_code} {r.text[:200]}")
            view = decoder.decode(r.content)
            if not view.endpoint.startswith(relay.url + "/push/"):
                raise RuntimeError(f"unexpected endpoint {view.endpoint}")
            ids[i] = view.id

        for start in range(0, len(creds), 20):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 20, len(creds)))))
    return ids


def requests_for(
    variant: str,
    conn: Connection,
    relay: RelayProcess,
    pins: Sequence[str],
    subs: Sequence[str],
    sender: Sender,
    count: int,
) -> list[bytes]:
    """The ``count`` requests of a run, built before it (request i → device i mod D)."""
    if variant == "json":
        body = b'{"data":{"b":"%s"},"ttl":3600}' % b64url(sender.body).encode()
        return [
            conn.request_bytes("POST", f"/v1/devices/{pins[i % len(pins)]}/messages", body)
            for i in range(count)
        ]
    headers = {"TTL": "3600", "Content-Encoding": "aes128gcm"}
    once = sender.token(relay.url, 0) if variant == "vapid-once" else None
    out: list[bytes] = []
    for i in range(count):
        if variant == "vapid-each":
            headers["Authorization"] = sender.token(relay.url, i + 1)
        elif once is not None:
            headers["Authorization"] = once
        out.append(
            conn.request_bytes(
                "POST",
                f"/push/{subs[i % len(subs)]}",
                sender.body,
                headers,
                content_type="application/octet-stream",
            )
        )
    return out


async def accepted(conn: Connection) -> float:
    """The relay's ``pinrelay_messages_accepted`` counter, over every kind."""
    status, body = await conn.send(conn.request_bytes("GET", "/metrics", b""))
    if status != 200:
        raise RuntimeError(f"GET /metrics: {status}")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("pinrelay_messages_accepted_total"):
            total += float(line.rpartition(" ")[2])
    return total


async def run_variant(
    args: argparse.Namespace, logs: Path, sender: Sender, variant: str, round_no: int
) -> Run:
    relay = RelayProcess(
        logs,
        name=f"relay-r{round_no}-{variant}",
        extra=[
            *("--webpush-per-minute", str(NO_LIMIT)),
            *("--webpush-sender-per-minute", str(NO_LIMIT)),
        ],
    )
    conns: list[Connection] = []
    try:
        await relay.start()
        creds = await create_devices(relay, args.devices)
        pins = [pin for pin, _ in creds]
        subs: list[str] = []
        if variant != "json":
            subs = await subscribe(relay, creds, sender, vapid=variant.startswith("vapid"))
        # The JSON push carries the admin key; a Web Push sender no pinrelay key at all.
        key = relay.admin_key if variant == "json" else None
        conns = [
            await Connection("127.0.0.1", relay.port, key).open() for _ in range(args.connections)
        ]
        admin = await Connection("127.0.0.1", relay.port, relay.admin_key).open()
        conns_all = [*conns, admin]
        requests = await asyncio.to_thread(
            requests_for, variant, conns[0], relay, pins, subs, sender, args.requests
        )
        disk = await asyncio.to_thread(disk_probe, relay.data, args.disk_probes)
        accepted0 = await accepted(admin)
        await wait_quiet(relay.pid, timeout=10.0)

        answers: list[float] = []
        cursor = [0]
        with progress() as bar:
            task = bar.add_task(f"{LABELS[variant]} #{round_no}", total=len(requests))

            async def closed_loop(conn: Connection) -> None:
                while cursor[0] < len(requests):
                    i = cursor[0]
                    cursor[0] = i + 1
                    t0 = time.perf_counter()
                    status, body = await conn.send(requests[i])
                    answers.append(time.perf_counter() - t0)
                    if status != 201:
                        raise RuntimeError(f"{variant} request {i}: {status} {body[:300]!r}")
                    if i % 512 == 0:
                        bar.update(task, completed=i)

            client0 = cpu_seconds(os.getpid())
            other = OtherLoad([relay.pid])
            loop0 = thread_cpu(relay.pid).get(relay.pid, 0.0)
            cpu0 = relay.cpu()
            t0 = time.perf_counter()
            await asyncio.gather(*(closed_loop(c) for c in conns))
            wall = time.perf_counter() - t0
            bar.update(task, completed=len(requests))
        cpu1 = await wait_quiet(relay.pid)
        loop1 = thread_cpu(relay.pid).get(relay.pid, 0.0)
        other_cores = other.cores()
        client_cpu = cpu_seconds(os.getpid()) - client0
        stored = await accepted(admin) - accepted0
        if stored != args.requests:
            raise RuntimeError(f"{variant}: {stored:.0f} accepted, not {args.requests}")
        for conn in conns_all:
            await conn.close()
        return Run(
            variant,
            round_no,
            args.requests,
            wall,
            cpu1 - cpu0,
            loop1 - loop0,
            client_cpu,
            other_cores,
            sorted(answers),
            disk,
        )
    finally:
        for conn in conns:
            await conn.close()
        relay.stop()
        relay.remove_data()


# --- report -----------------------------------------------------------------------
HEADERS = [
    "run",
    "requests/s",
    "relay CPU µs/req",
    "of which loop / rest µs",
    "answer p50 / p99 ms",
    "disk fdatasync p50 / p99 ms",
    "load generator µs/req",
    "other processes, cores",
]


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.2f}"


def row(run: Run) -> list[str]:
    return [
        f"{LABELS[run.variant]} #{run.round}",
        f"{run.rate:,.0f}",
        fmt(run.cpu_us),
        f"{run.loop_s / run.requests * 1e6:.0f} / "
        f"{(run.cpu_s - run.loop_s) / run.requests * 1e6:.0f}",
        f"{ms(run.answers, 50)} / {ms(run.answers, 99)}",
        f"{ms(run.disk, 50)} / {ms(run.disk, 99)}",
        f"{run.client_cpu_s / run.requests * 1e6:.0f}",
        f"{run.other_cores:.2f}",
    ]


MEDIAN_HEADERS = ["variant", "requests/s", "relay CPU µs/req", "answer p99 ms"]


def medians(runs: list[Run]) -> list[list[str]]:
    out = []
    for variant in VARIANTS:
        mine = [r for r in runs if r.variant == variant]
        if mine:
            out.append(
                [
                    LABELS[variant],
                    f"{statistics.median(r.rate for r in mine):,.0f}",
                    fmt(statistics.median(r.cpu_us for r in mine)),
                    f"{statistics.median(percentile(r.answers, 99) for r in mine) * 1000:.2f}",
                ]
            )
    return out


def paired(runs: list[Run], a: str, b: str) -> tuple[list[float], list[float]]:
    """Per round: a's CPU per request / b's, and a's rate / b's."""
    cpu: list[float] = []
    rate: list[float] = []
    for round_no in sorted({r.round for r in runs}):
        x = [r for r in runs if r.round == round_no and r.variant == a]
        y = [r for r in runs if r.round == round_no and r.variant == b]
        if x and y:
            cpu.append(x[0].cpu_us / y[0].cpu_us)
            rate.append(x[0].rate / y[0].rate)
    return cpu, rate


def ratio_lines(runs: list[Run]) -> list[str]:
    lines = []
    for a, b, what in (
        ("vapid-once", "webpush", "one repeated VAPID token / unsigned"),
        ("vapid-each", "webpush", "a new VAPID token per request / unsigned"),
        ("webpush", "json", "Web Push unsigned / JSON push API"),
    ):
        cpu, rate = paired(runs, a, b)
        if not cpu:
            continue
        each = " / ".join(f"{x:.3f}" for x in cpu)
        line = (
            f"- {what}: relay CPU per request **{statistics.median(cpu):.3f}x** "
            f"(per round {each}), requests/s {statistics.median(rate):.3f}x"
        )
        if a == "vapid-once":
            extra = (statistics.median(cpu) - 1) * 100
            verdict = "meets" if extra < 10 else "misses"
            line += f": {extra:+.1f} % CPU ({verdict} the target of < 10 %)"
        lines.append(line + ".")
    return lines


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    rows = [row(r) for r in runs]
    med = medians(runs)
    lines = ratio_lines(runs)
    console.print()
    print_table("Web Push and JSON pushes, per run", HEADERS, rows)
    print_table(f"Medians of {args.rounds} round(s)", MEDIAN_HEADERS, med)
    for line in lines:
        console.print(line)
    if args.no_results:
        return
    m = machine()
    body = "\n".join(
        [
            f"{args.requests:,} requests per run to {args.devices} devices (one subscription "
            f"each), round-robin, in closed loops on {args.connections} keep-alive "
            "connections (bench.rawhttp) from one process on uvloop; each run on a fresh "
            f"SQLite relay, {len(VARIANTS)} variants per round in rotating order, "
            f"{args.rounds} round(s). JSON push API: POST /v1/devices/{{pin}}/messages "
            "(admin key) whose data carries the same base64url body. Web Push: POST "
            "/push/{id} with TTL and Content-Encoding: aes128gcm, one "
            f"{len(PAYLOAD)}-byte payload encrypted once with pywebpush (the same "
            "body every request); VAPID tokens from py_vapid (ES256), a new one each "
            "request signed before the run. The relay runs with --webpush-per-minute and "
            f"--webpush-sender-per-minute {NO_LIMIT:,}: the limiters run on every push "
            "but never refuse. Every request answered 201, and the relay's "
            "pinrelay_messages_accepted rose by as many.",
            "",
            "relay CPU: utime+stime of the relay and its SQLite writer process from the "
            "first request until it went quiet after the last, per request; loop: the "
            "event loop's thread, rest: the writer (group commits, fsync). answer: request "
            "written to 201 read (stored and fsynced). disk fdatasync: "
            f"{args.disk_probes:,} fdatasyncs of a 4 KiB overwrite in the relay's data "
            "folder just before the run. Load generator: this process's CPU per request. "
            f"Relay and load generator share {m['nproc']} CPUs; other processes: CPU the "
            "rest of the machine used meanwhile, in cores.",
            "",
            md_table(HEADERS, rows),
            "",
            md_table(MEDIAN_HEADERS, med),
            "",
            "Ratios: medians of the per-round ratios (runs of one round are next to each "
            "other in time). requests/s follows the load of the machine's other processes "
            "(see the last column); the relay's CPU per request much less: compare that.",
            "",
            *lines,
        ]
    )
    path = write_section(
        MODULE, "Web Push requests accepted durably, one node (bench.webpush_push)", body
    )
    console.print(f"[green]wrote[/] {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webpush_push",
        description="Web Push requests accepted durably per second, beside the JSON push API.",
    )
    parser.add_argument("--quick", action="store_true", help="3,000 requests, 2 rounds")
    parser.add_argument("--requests", type=int, default=None, help="per run (default 10,000)")
    parser.add_argument("--rounds", type=int, default=None, help="default 4")
    parser.add_argument("--devices", type=int, default=100, help="one subscription each")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument(
        "--only", default=",".join(VARIANTS), help="comma-separated subset of the variants"
    )
    parser.add_argument(
        "--disk-probes", type=int, default=None, help="fdatasyncs before each run (2,000)"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 3_000 if args.quick else 10_000
    if args.rounds is None:
        args.rounds = 2 if args.quick else 4
    if args.disk_probes is None:
        args.disk_probes = 500 if args.quick else 2000
    args.variants = [v for v in args.only.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    return args


async def main(argv: list[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    logs = run_dir("webpush_push")
    console.print(
        f"[bold]bench.webpush_push[/]: {args.requests:,} requests per run, "
        f"{args.rounds} round(s) of {', '.join(args.variants)}; logs in {logs}"
    )
    sender = Sender.make()
    runs: list[Run] = []
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(args.variants)
        for variant in args.variants[shift:] + args.variants[:shift]:
            run = await run_variant(args, logs, sender, variant, round_no)
            runs.append(run)
            console.print(
                f"{LABELS[variant]} #{round_no}: {run.rate:,.0f} req/s, "
                f"{run.cpu_us:.1f} µs/req, other processes {run.other_cores:.2f} cores"
            )
    report(args, runs)
    return runs


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main(), fast_loop=True)
