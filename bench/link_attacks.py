"""Relay memory under a ping flood from links that never read (issue 11, hole 5).

1. Start a relay (``--heartbeat``, 10 s by default: a link that reads nothing is
   closed after that long) and create ``--links`` devices.
2. Open ``--links`` links that send ``hello`` and read the ``welcome``, and
   ``--before-hello`` links that only finish the upgrade.  Their sockets get small
   kernel buffers (64 KiB).  The relay's own send buffers still autotune up to
   ``net.ipv4.tcp_wmem``'s maximum (4 MiB on Debian 12): the flood fills them
   first, which is most of the time until the relay closes the links.
3. Every link floods WebSocket pings (100-byte payloads) and never reads again.  The
   relay's RSS (VmRSS) is sampled every 0.25 s until every link is closed or
   ``--seconds`` pass.
4. Reported: the RSS before, its peak, the growth per link against the bound of
   docs/OPERATIONS.md ("Memory per link": 0.75 MiB at the default window, before
   hello or after), how many links the relay closed and when.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass

from websockets.frames import Frame, Opcode

from bench.common import (
    LOOPBACK,
    RelayProcess,
    add_common_args,
    console,
    create_devices,
    fmt,
    md_table,
    print_table,
    run_dir,
    run_main,
    source_addresses,
    wait_machine_quiet,
    write_section,
)

MODULE = "bench.link_attacks"
MiB = 1024 * 1024
#: docs/OPERATIONS.md, "Memory per link": the bound at the default window (64).
BOUND_PER_LINK = 0.75 * MiB
PING = Frame(Opcode.PING, b"p" * 100).serialize(mask=True, extensions=[])
UPGRADE = (
    b"GET /v1/link HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


@dataclass
class Flood:
    links: int = 0
    opened: int = 0
    closed: int = 0
    sent_bytes: int = 0
    last_close_s: float = 0.0


async def open_link(
    port: int, source: str, hello: tuple[str, str] | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(UPGRADE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    if hello is not None:
        text = json.dumps({"type": "hello", "pin": hello[0], "token": hello[1]}).encode()
        writer.write(Frame(Opcode.TEXT, text).serialize(mask=True, extensions=[]))
        first = await asyncio.wait_for(reader.readexactly(2), 30)
        size = first[1] if first[1] < 126 else int.from_bytes(await reader.readexactly(2), "big")
        welcome = json.loads(await reader.readexactly(size))
        if welcome["type"] != "welcome":
            raise RuntimeError(welcome)
    return reader, writer


async def flood(writer: asyncio.StreamWriter, state: Flood, started: float) -> None:
    chunk = PING * 100
    try:
        while True:
            writer.write(chunk)
            await writer.drain()
            state.sent_bytes += len(chunk)
    except (ConnectionError, OSError):
        state.closed += 1
        state.last_close_s = time.monotonic() - started
    finally:
        writer.transport.abort()


async def run(args: argparse.Namespace) -> None:
    if args.wait_quiet:
        await wait_machine_quiet(args.wait_quiet)
    logs = run_dir("link_attacks")
    relay = RelayProcess(logs, heartbeat=args.heartbeat)
    await relay.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        creds = await create_devices(relay, args.links)
        sources = source_addresses(max(1, (args.links + args.before_hello) // 2000 + 1))
        state = Flood(links=args.links + args.before_hello)
        streams = []
        for n, cred in enumerate([*creds, *([None] * args.before_hello)]):
            streams.append(await open_link(relay.link_port, sources[n % len(sources)], cred))
        state.opened = len(streams)
        await asyncio.sleep(1)
        base = relay.rss() * 1024
        started = time.monotonic()
        tasks = [asyncio.create_task(flood(w, state, started)) for _, w in streams]
        peak = base
        samples: list[tuple[float, int]] = []
        while time.monotonic() - started < args.seconds and state.closed < state.opened:
            await asyncio.sleep(0.25)
            rss = relay.rss() * 1024
            peak = max(peak, rss)
            samples.append((time.monotonic() - started, rss))
        after = relay.rss() * 1024
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        relay.stop()
        relay.remove_data()
    growth = peak - base
    per_link = growth / state.opened
    verdict = "met" if per_link <= BOUND_PER_LINK else "MISSED"
    rows = [
        [
            "links flooding pings, never reading",
            f"{args.links} after hello, {args.before_hello} before",
        ],
        ["pings sent (bytes the relay took)", f"{state.sent_bytes / MiB:,.1f} MiB"],
        [
            "relay RSS before / peak / at the end",
            f"{base / MiB:,.1f} / {peak / MiB:,.1f} / {after / MiB:,.1f} MiB",
        ],
        [
            "peak growth per link",
            f"{per_link / 1024:,.1f} KiB (bound {BOUND_PER_LINK / 1024:,.0f} KiB: {verdict})",
        ],
        [
            "links closed by the relay",
            f"{state.closed} of {state.opened}, the last after "
            f"{fmt(state.last_close_s)} s (heartbeat {args.heartbeat:g} s)",
        ],
    ]
    print_table("Ping flood without reading", ["", ""], rows)
    if not args.no_results:
        body = (
            md_table(["", ""], rows)
            + '\n\nThe bound is docs/OPERATIONS.md\'s, "Memory per link": 64 KiB waiting, the '
            "answers to one 256 KiB read, a batch at the default window, a frame being "
            "received. The clients' sockets have 64 KiB kernel buffers; the relay's send "
            "buffers autotune up to tcp_wmem's 4 MiB, which the flood fills before the relay "
            "pauses for good: that, and the CPU to answer those pings, is most of the time to "
            "close. Before issue 11's fix one such link grew the relay by "
            "555 MiB in 30 s.\n"
        )
        path = write_section(
            MODULE, "Ping flood from links that never read (bench.link_attacks)", body
        )
        console.print(f"results: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=100, help="authenticated links")
    parser.add_argument("--before-hello", type=int, default=25, help="links that never hello")
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=180.0, help="give up after this long")
    parser.add_argument("--quick", action="store_true", help="20 + 5 links")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.links, args.before_hello = 20, 5
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_main(run(args))


if __name__ == "__main__":
    main()
