"""Durable throughput and CPU per message: pinrelay against Mosquitto 2, interleaved.

pinrelay: D devices (default 1,000), each linked by bench.linkgen (raw asyncio, one
cumulative ack per read).  M messages (default 100,000) are pushed with the batch
API (POST /v1/messages, 500 per batch, 4 pushers on keep-alive connections; message
i goes to device i mod D).  Measured: wall time from the first push to the last
message received (each is acked as it is read), messages/s, and the relay's
utime+stime over the run divided by M (the CPU is read once the relay has gone
quiet after the last message, so the acks' group commits count).  Afterwards every
device is checked: nothing left unacknowledged.

Mosquitto 2 (Debian's package, its own config: loopback listener, ``persistence
true`` in a tmp dir): D paho-mqtt subscribers (bench.mqttgen) with persistent
sessions (clean_session=False) subscribed at QoS 1 to ``dev/<n>``; one paho
publisher sends the same M messages at QoS 1 to the per-device topics, with as many
unacknowledged as the pinrelay pushers have (pushers x batch).  Measured the same
way, on Mosquitto's process.

Runs alternate (pinrelay, Mosquitto, pinrelay, Mosquitto, ...: ``--rounds``), each
on a fresh process, and the median of each is compared.  Not like for like on
durability: pinrelay fsyncs every group commit before it answers a push; Mosquitto
keeps messages in memory and writes its persistence file only on autosave/exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from bench.common import (
    Child,
    MosquittoProcess,
    OtherLoad,
    RelayProcess,
    add_common_args,
    console,
    cpu_seconds,
    create_devices,
    linkgen_argv,
    machine,
    md_table,
    module_argv,
    print_table,
    progress,
    run_dir,
    run_main,
    source_addresses,
    stop_all,
    thread_cpu,
    wait_machine_quiet,
    wait_quiet,
    write_credentials,
    write_section,
)
from bench.mqttgen import AsyncioMqtt, new_client
from bench.rawhttp import Connection

MODULE = "bench.throughput"


@dataclass
class Run:
    system: str
    round: int
    messages: int
    wall_s: float
    push_s: float
    server_cpu_s: float
    client_cpu_s: float
    unacked: int = 0
    #: Server CPU seconds by thread: event loop, store writer, the rest.
    loop_s: float = float("nan")
    writer_s: float = float("nan")
    #: CPU used by processes not ours meanwhile (the machine may be shared), in cores.
    other_cores: float = float("nan")

    def split_us(self) -> str:
        if self.loop_s != self.loop_s:
            return "-"
        return (
            f"{self.loop_s / self.messages * 1e6:.0f} / {self.writer_s / self.messages * 1e6:.0f}"
        )

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.server_cpu_s / self.messages * 1e6


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_device_counts(messages: int, devices: int) -> list[int]:
    """How many of messages 0..M-1 go to each device (message i → device i mod D)."""
    return [messages // devices + (1 if d < messages % devices else 0) for d in range(devices)]


def split(count: int, parts: int) -> list[range]:
    size = -(-count // parts)
    return [range(i * size, min(count, (i + 1) * size)) for i in range(parts) if i * size < count]


async def wait_delivered(
    children: Sequence[Child], total: int, label: str, timeout: float
) -> float:
    """Wait for every child's 'complete'; returns the latest completion time (time.time)."""
    with progress() as bar:
        task = bar.add_task(label, total=total)
        received: dict[int, int] = {}

        def on_event(child: Child, event: dict[str, Any]) -> None:
            if "received" in event:
                received[id(child)] = int(event["received"])
                bar.update(task, completed=sum(received.values()))

        for child in children:
            child.on_event = on_event
        done = await asyncio.gather(*(c.expect("complete", timeout) for c in children))
        bar.update(task, completed=total)
    return max(float(event["t"]) for event in done)


# --- pinrelay -------------------------------------------------------------------
class _Item(msgspec.Struct):
    to: str
    data: dict[str, int]
    ttl: int


class _Batch(msgspec.Struct):
    messages: list[_Item]


def batch_bodies(pins: Sequence[str], messages: int, batch: int) -> list[tuple[bytes, int]]:
    """Message i → pins[i mod len(pins)], ``batch`` per body; (body, count) pairs."""
    encoder = msgspec.json.Encoder()
    out: list[tuple[bytes, int]] = []
    for start in range(0, messages, batch):
        stop = min(start + batch, messages)
        items = [_Item(to=pins[i % len(pins)], data={"n": i}, ttl=3600) for i in range(start, stop)]
        out.append((encoder.encode(_Batch(items)), stop - start))
    return out


async def run_pinrelay(args: argparse.Namespace, logs: Path, round_no: int) -> Run:
    relay = RelayProcess(logs, max_links=args.devices + 100, name=f"relay-r{round_no}")
    children: list[Child] = []
    try:
        await relay.start()
        with progress() as bar:
            creds = await create_devices(relay, args.devices, progress=bar)
        counts = per_device_counts(args.messages, args.devices)
        parts = split(args.devices, args.link_processes)
        sources = source_addresses(len(parts))
        for i, part in enumerate(parts):
            path = write_credentials(
                logs / f"creds-r{round_no}-{i}.json", creds[part.start : part.stop]
            )
            argv = linkgen_argv(
                relay.link_port,
                path,
                sources[i],
                "recv",
                "--expect",
                str(sum(counts[part.start : part.stop])),
            )
            if args.window:
                argv += ["--window", str(args.window)]
            children.append(Child(f"linkgen-r{round_no}-{i}", argv, logs))
        for child in children:
            await child.start()
        for child in children:
            ready = await child.expect("ready", 120)
            if ready["failed"]:
                raise RuntimeError(f"{child.name}: {ready['failed']} links failed")

        pins = [pin for pin, _ in creds]
        conns = [
            await Connection("127.0.0.1", relay.port, relay.admin_key).open()
            for _ in range(args.pushers)
        ]
        bodies = batch_bodies(pins, args.messages, args.batch)
        requests = [conns[0].request_bytes("POST", "/v1/messages", b) for b, _ in bodies]
        sizes = [n for _, n in bodies]
        await wait_quiet(relay.pid, timeout=10.0)
        next_batch = 0

        async def pusher(conn: Connection) -> None:
            nonlocal next_batch
            while next_batch < len(requests):
                index = next_batch
                next_batch += 1
                status, body = await conn.send(requests[index])
                if status != 200 or body.count(b'"status":201') != sizes[index]:
                    raise RuntimeError(f"batch {index}: {status} {body[:300]!r}")

        client_cpu0 = self_cpu() + sum(cpu_seconds(c.pid) for c in children)
        threads0 = thread_cpu(relay.pid)
        other = OtherLoad([relay.pid, *(c.pid for c in children)])
        cpu0 = relay.cpu()
        t0 = time.time()
        delivered = asyncio.ensure_future(
            wait_delivered(children, args.messages, f"pinrelay round {round_no}", args.timeout)
        )
        await asyncio.gather(*(pusher(c) for c in conns))
        push_s = time.time() - t0
        t_end = await delivered
        cpu1 = await wait_quiet(relay.pid)
        other_cores = other.cores()
        threads1 = thread_cpu(relay.pid)
        client_cpu = self_cpu() + sum(cpu_seconds(c.pid) for c in children) - client_cpu0
        for conn in conns:
            await conn.close()
        unacked = await count_unacked(relay, pins)
        delta = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
        return Run(
            "pinrelay",
            round_no,
            args.messages,
            t_end - t0,
            push_s,
            cpu1 - cpu0,
            client_cpu,
            unacked,
            loop_s=delta.get(relay.pid, 0.0),
            # The rest is the SQLite writer process (the relay's thread pool and
            # libuv's workers stay idle here).
            writer_s=cpu1 - cpu0 - delta.get(relay.pid, 0.0),
            other_cores=other_cores,
        )
    finally:
        await stop_all(children)
        relay.stop()
        relay.remove_data()


class _DeviceView(msgspec.Struct):
    backlog: int
    last_cursor: int
    acked_cursor: int


async def count_unacked(relay: RelayProcess, pins: list[str]) -> int:
    """Messages not yet acknowledged, over all devices (after the run)."""
    decoder = msgspec.json.Decoder(_DeviceView)
    total = 0
    for attempt in range(10):
        total = 0
        conn = await Connection("127.0.0.1", relay.port, relay.admin_key).open()
        try:
            for pin in pins:
                status, body = await conn.send(conn.request_bytes("GET", f"/v1/devices/{pin}", b""))
                if status != 200:
                    raise RuntimeError(f"GET /v1/devices/{pin}: {status}")
                view = decoder.decode(body)
                total += max(view.backlog, view.last_cursor - view.acked_cursor)
        finally:
            await conn.close()
        if total == 0 or attempt == 9:
            break
        await asyncio.sleep(0.5)
    return total


# --- Mosquitto ------------------------------------------------------------------
async def run_mosquitto(args: argparse.Namespace, logs: Path, round_no: int) -> Run:
    counts = per_device_counts(args.messages, args.devices)
    broker = MosquittoProcess(
        logs,
        max_inflight=args.window or 64,
        max_queued=max(1000, 2 * max(counts) + 100),
    )
    children: list[Child] = []
    driver: AsyncioMqtt | None = None
    try:
        await broker.start()
        for i, part in enumerate(split(args.devices, args.sub_processes)):
            argv = module_argv(
                "bench.mqttgen",
                "--port",
                str(broker.port),
                "--first",
                str(part.start),
                "--count",
                str(len(part)),
                "--prefix",
                f"bench-r{round_no}-",
                "--expect",
                str(sum(counts[part.start : part.stop])),
                "--max-seconds",
                "3600",
            )
            children.append(Child(f"mqttgen-r{round_no}-{i}", argv, logs))
        for child in children:
            await child.start()
        for child in children:
            ready = await child.expect("ready", 120)
            if ready["failed"] or ready["subscribed"] != ready["connected"]:
                raise RuntimeError(f"{child.name}: not all subscribed: {ready}")

        loop = asyncio.get_running_loop()
        driver = AsyncioMqtt(loop)
        window = args.pushers * args.batch
        publisher = new_client(f"bench-pub-r{round_no}", persistent=False, inflight=window)
        connected = asyncio.Event()
        acked = 0
        room = asyncio.Event()

        def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
            connected.set()

        def on_publish(c: mqtt.Client, u: Any, mid: int, reason: Any, props: Any) -> None:
            nonlocal acked
            acked += 1
            room.set()

        publisher.on_connect = on_connect
        publisher.on_publish = on_publish
        driver.attach(publisher)
        publisher.connect("127.0.0.1", broker.port, keepalive=600)
        await asyncio.wait_for(connected.wait(), 30)
        topics = [f"dev/{d}" for d in range(args.devices)]
        payloads = [b'{"n":%d}' % i for i in range(args.messages)]
        await wait_quiet(broker.pid, timeout=10.0)

        client_cpu0 = self_cpu() + sum(cpu_seconds(c.pid) for c in children)
        other = OtherLoad([broker.pid, *(c.pid for c in children)])
        cpu0 = broker.cpu()
        t0 = time.time()
        delivered = asyncio.ensure_future(
            wait_delivered(children, args.messages, f"mosquitto round {round_no}", args.timeout)
        )
        sent = 0
        while sent < args.messages:
            room.clear()
            burst = min(window - (sent - acked), args.messages - sent, args.batch)
            for i in range(sent, sent + burst):
                info = publisher.publish(topics[i % args.devices], payloads[i], qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"publish {i}: {info.rc}")
            sent += burst
            if sent - acked >= window:
                await asyncio.wait_for(room.wait(), args.timeout)
            else:
                await asyncio.sleep(0)
        while acked < args.messages:
            room.clear()
            await asyncio.wait_for(room.wait(), args.timeout)
        push_s = time.time() - t0
        t_end = await delivered
        cpu1 = await wait_quiet(broker.pid)
        other_cores = other.cores()
        client_cpu = self_cpu() + sum(cpu_seconds(c.pid) for c in children) - client_cpu0
        return Run(
            "mosquitto",
            round_no,
            args.messages,
            t_end - t0,
            push_s,
            cpu1 - cpu0,
            client_cpu,
            other_cores=other_cores,
        )
    finally:
        if driver is not None:
            driver.close()
        await stop_all(children)
        broker.stop()


# --- report ---------------------------------------------------------------------
HEADERS = [
    "run",
    "messages",
    "wall s",
    "msgs/s",
    "pushes answered s",
    "server CPU s",
    "server CPU µs/msg",
    "of which loop / writer µs",
    "load generator CPU s",
    "other processes, cores",
    "unacked after",
]


def row(run: Run) -> list[str]:
    return [
        f"{run.system} #{run.round}",
        f"{run.messages:,}",
        f"{run.wall_s:.2f}",
        f"{run.rate:,.0f}",
        f"{run.push_s:.2f}",
        f"{run.server_cpu_s:.2f}",
        f"{run.cpu_us:.1f}",
        run.split_us(),
        f"{run.client_cpu_s:.2f}",
        f"{run.other_cores:.2f}",
        str(run.unacked) if run.system == "pinrelay" else "-",
    ]


def median_row(system: str, runs: list[Run]) -> list[str]:
    return [
        f"{system} median",
        f"{runs[0].messages:,}",
        f"{statistics.median(r.wall_s for r in runs):.2f}",
        f"{statistics.median(r.rate for r in runs):,.0f}",
        f"{statistics.median(r.push_s for r in runs):.2f}",
        f"{statistics.median(r.server_cpu_s for r in runs):.2f}",
        f"{statistics.median(r.cpu_us for r in runs):.1f}",
        "",
        f"{statistics.median(r.client_cpu_s for r in runs):.2f}",
        "",
        "",
    ]


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    ours = [r for r in runs if r.system == "pinrelay"]
    theirs = [r for r in runs if r.system == "mosquitto"]
    rows = [row(r) for r in runs] + [median_row("pinrelay", ours)]
    lines: list[str] = []
    if theirs:
        rows.append(median_row("mosquitto", theirs))
        ratio = statistics.median(r.cpu_us for r in ours) / statistics.median(
            r.cpu_us for r in theirs
        )
        speed = statistics.median(r.rate for r in ours) / statistics.median(r.rate for r in theirs)
        verdict = "meets" if ratio <= 3 else "misses"
        lines.append(
            f"- CPU per message, pinrelay / Mosquitto (medians): **{ratio:.2f}x** "
            f"({verdict} the target of ≤ 3x)."
        )
        lines.append(f"- Throughput, pinrelay / Mosquitto (medians): {speed:.2f}x.")
    console.print()
    print_table("Durable throughput and CPU per message", HEADERS, rows)
    for line in lines:
        console.print(line)
    if args.no_results:
        return
    m = machine()
    body = "\n".join(
        [
            f"{args.messages:,} messages to {args.devices:,} devices (message i → device "
            f"i mod {args.devices:,}), every device online. pinrelay: POST /v1/messages, "
            f"{args.batch} per batch, {args.pushers} pushers on keep-alive connections; "
            f"links from {args.link_processes} bench.linkgen processes (window "
            f"{args.window or 64}, one cumulative ack per read). Mosquitto "
            f"{mosquitto_version()}: {args.devices:,} paho-mqtt subscribers in "
            f"{args.sub_processes} processes (clean_session=False, QoS 1, "
            f"max_inflight_messages {args.window or 64}), one paho publisher at QoS 1 with "
            f"up to {args.pushers * args.batch:,} unacknowledged. Runs alternate, each on a "
            f"fresh server process; {m['nproc']} CPUs are shared by the server and the load "
            "generators.",
            "",
            "wall s: first push to last message received (acked as read). pushes answered s: "
            "until the last push was answered (pinrelay: stored and fsynced; Mosquitto: "
            "PUBACK). server CPU: utime+stime of the relay or of Mosquitto from the first push "
            "until it went quiet after the last message (for pinrelay with its SQLite writer "
            "process), also split: the event loop's thread (HTTP, links, reads) and the rest, "
            "which is the writer process's group commits. "
            "unacked after: messages not acknowledged in the store once the run was over. "
            "Mosquitto's run is bound by its paho-mqtt load generators (see their CPU), "
            "so its msgs/s is not Mosquitto's limit. other processes: CPU the rest of the "
            "machine used during the run (neither server nor load generators), in cores.",
            "",
            md_table(HEADERS, rows),
            "",
            *lines,
            "- Not like for like on durability: pinrelay fsyncs each group commit before it "
            "answers a push; Mosquitto keeps messages in memory and writes its persistence "
            "file only at autosave or exit (no fsync per message).",
        ]
    )
    path = write_section(MODULE, "Durable throughput and CPU per message (bench.throughput)", body)
    console.print(f"[green]wrote[/] {path}")


def mosquitto_version() -> str:
    import subprocess

    try:
        out = subprocess.run(
            [MosquittoProcess.executable(), "-h"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "?"
    first = out.splitlines()[0] if out else ""
    return first.replace("mosquitto version", "").strip() or "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description="Durable throughput and CPU per message, pinrelay against Mosquitto 2.",
    )
    parser.add_argument("--quick", action="store_true", help="200 devices, 20,000 messages")
    parser.add_argument("--devices", type=int, default=None, help="default 1,000")
    parser.add_argument("--messages", type=int, default=None, help="default 100,000")
    parser.add_argument("--batch", type=int, default=500, help="messages per POST /v1/messages")
    parser.add_argument("--pushers", type=int, default=4, help="concurrent batch pushers")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each system, alternated")
    parser.add_argument(
        "--window", type=int, default=None, help="link window / Mosquitto max_inflight (64)"
    )
    parser.add_argument("--link-processes", type=int, default=2, help="bench.linkgen processes")
    parser.add_argument("--sub-processes", type=int, default=2, help="bench.mqttgen processes")
    parser.add_argument("--skip-mosquitto", action="store_true", help="pinrelay only")
    parser.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.devices is None:
        args.devices = 200 if args.quick else 1000
    if args.messages is None:
        args.messages = 20_000 if args.quick else 100_000
    return args


async def main(argv: list[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    logs = run_dir("throughput")
    console.print(
        f"[bold]bench.throughput[/]: {args.messages:,} messages to {args.devices:,} devices, "
        f"{args.rounds} round(s); logs in {logs}"
    )
    runs: list[Run] = []
    for round_no in range(1, args.rounds + 1):
        if args.wait_quiet > 0:
            await wait_machine_quiet(args.wait_quiet)
        runs.append(await run_pinrelay(args, logs, round_no))
        console.print(
            f"pinrelay #{round_no}: {runs[-1].rate:,.0f} msgs/s, {runs[-1].cpu_us:.1f} µs/msg"
        )
        if not args.skip_mosquitto:
            if args.wait_quiet > 0:
                await wait_machine_quiet(args.wait_quiet)
            runs.append(await run_mosquitto(args, logs, round_no))
            console.print(
                f"mosquitto #{round_no}: {runs[-1].rate:,.0f} msgs/s, {runs[-1].cpu_us:.1f} µs/msg"
            )
    report(args, runs)
    return runs


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run_main(main())
