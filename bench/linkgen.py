"""A lean device-link load generator: many links in one process, no task per link.

Run by the benchmarks as a child process (``python -m bench.linkgen``); it talks
JSON lines: events on stdout, commands (``stats``, ``quit``) on stdin.

Each link is one :class:`asyncio.Protocol` with a raw WebSocket client inside (the
upgrade, masked client frames, pong, close): about 1.5 KB per link, so the
generator neither starves the relay of CPU nor needs one process per few links.

Modes:

- ``idle``: send hello, wait for welcome, then only answer pings;
- ``recv``: also count ``msg`` frames and ack cumulatively (one ack per read);
- ``latency``: like ``recv``, and for messages whose data is ``{"t": <time.time()
  before the push>, "p": <phase, 1 or more>}`` record ``time.time()`` at receipt
  minus ``t``, per phase (written as JSON ``{"<phase>": [seconds, ...]}`` on quit);
- ``system``: like ``recv``, and record the ``time.time()`` each link first got
  each incident event's ``system`` message (PROTOCOL "Incidents and status"),
  written as JSON ``{"<incident> <event>": [time, ...]}`` on quit, with ``"*
  <event>"`` for each link's first of any incident.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

#: Server → client frames, decoded just enough (msgspec ignores other fields).
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class _Frame(msgspec.Struct):
    type: str
    cursor: int | None = 0
    kind: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")
    code: str = ""
    message: str = ""


class _Probe(msgspec.Struct):
    t: float = 0.0
    p: int = 0


class _System(msgspec.Struct):
    incident: str = ""
    event: str = ""


_frame_decoder = msgspec.json.Decoder(_Frame)
_probe_decoder = msgspec.json.Decoder(_Probe)
_system_decoder = msgspec.json.Decoder(_System)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if not n:
        return head + mask
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class Generator:
    """All links of this process and what they counted."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.host: str = args.host
        self.port: int = args.port
        self.mode: str = args.mode
        self.window: int | None = args.window
        self.expect: int = args.expect
        self.welcomed = 0
        self.failed = 0
        self.retried = 0
        self.closed = 0
        self.errors: dict[str, int] = {}
        self.received = 0
        self.acks = 0
        self.pings = 0
        self.complete_t = 0.0
        #: time.time() when the first msg was read (0: none yet).
        self.first_t = 0.0
        self.latencies: dict[int, list[float]] = {}
        #: ``system`` mode: "<incident> <event>" -> each link's first receipt time.
        self.system: dict[str, list[float]] = {}
        self._system_seen: set[tuple[int, str]] = set()
        self.links: list[Link] = []
        self.done = asyncio.Event()

    def request_head(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET /v1/link HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def hello(self, pin: str, token: str) -> bytes:
        hello: dict[str, Any] = {"type": "hello", "pin": pin, "token": token, "client": "bench"}
        if self.window:
            hello["window"] = self.window
        return json.dumps(hello).encode()

    def on_text(self, payload: bytes, link: Link) -> int:
        """Handle one text frame; returns the cursor to ack (0: none)."""
        frame = _frame_decoder.decode(payload)
        kind = frame.type
        if kind == "msg" and frame.kind == "system":
            if self.mode == "system":
                told = _system_decoder.decode(frame.data)
                key = f"{told.incident} {told.event}"
                now = time.time()
                for seen in (key, f"* {told.event}"):  # this incident's, and any one's
                    if (id(link), seen) not in self._system_seen:
                        self._system_seen.add((id(link), seen))
                        self.system.setdefault(seen, []).append(now)
            return 0  # not in the cursor order: never acked
        if kind == "msg":
            self.received += 1
            if self.received == 1:
                self.first_t = time.time()
            if self.mode == "latency":
                probe = _probe_decoder.decode(frame.data)
                if probe.p >= 1:
                    self.latencies.setdefault(probe.p, []).append(time.time() - probe.t)
            if self.expect and self.received == self.expect:
                self.complete_t = time.time()
                emit("complete", t=self.complete_t, first_t=self.first_t, received=self.received)
            return frame.cursor or 0
        if kind == "welcome":
            link.welcome()
        elif kind == "error":
            self.errors[frame.code] = self.errors.get(frame.code, 0) + 1
            link.finish(False)
        return 0

    def counters(self) -> dict[str, Any]:
        return {
            "welcomed": self.welcomed,
            "failed": self.failed,
            "retried": self.retried,
            "closed": self.closed,
            "received": self.received,
            "acks": self.acks,
            "pings": self.pings,
            "errors": self.errors,
            "system": {key: len(times) for key, times in self.system.items()},
        }


class Link(asyncio.Protocol):
    """One device link: upgrade, hello, then frames until closed."""

    __slots__ = ("acked", "buf", "gen", "hello", "open", "result", "transport", "upgraded")

    def __init__(self, gen: Generator, hello: bytes) -> None:
        self.gen = gen
        self.hello = hello
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.open = False
        self.acked = 0
        self.result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.write(self.gen.request_head())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.open = False
            self.gen.closed += 1
        self.finish(False)

    def finish(self, ok: bool) -> None:
        if not self.result.done():
            self.result.set_result(ok)

    def welcome(self) -> None:
        self.open = True
        self.gen.welcomed += 1
        self.finish(True)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        transport = self.transport
        assert transport is not None
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                status = bytes(buf[:12]).decode(errors="replace")
                self.gen.errors[status] = self.gen.errors.get(status, 0) + 1
                transport.close()
                self.finish(False)
                return
            del buf[: end + 4]
            self.upgraded = True
            transport.write(client_frame(OP_TEXT, self.hello))
        pos = 0
        size = len(buf)
        top = 0
        gen = self.gen
        while size - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            head = 2
            if b1 == 126:
                if size - pos < 4:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif b1 == 127:
                if size - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + b1
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            payload = bytes(buf[pos + head : end])
            pos = end
            if opcode == OP_TEXT:
                top = max(top, gen.on_text(payload, self))
            elif opcode == OP_PING:
                gen.pings += 1
                transport.write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                transport.write(client_frame(OP_CLOSE, payload[:2]))
                transport.close()
                break
        del buf[:pos]
        if top > self.acked:
            self.acked = top
            gen.acks += 1
            transport.write(client_frame(OP_TEXT, b'{"type":"ack","cursor":%d}' % top))


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"ev": event, **fields}) + "\n")
    sys.stdout.flush()


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def open_links(
    gen: Generator, creds: list[tuple[str, str]], sources: list[str], concurrency: int
) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    per_source = -(-len(creds) // len(sources))

    async def one(index: int, pin: str, token: str) -> None:
        source = sources[index // per_source]
        hello = gen.hello(pin, token)
        async with gate:
            for attempt in range(3):
                link = Link(gen, hello)
                try:
                    await asyncio.wait_for(
                        loop.create_connection(
                            lambda link=link: link,  # type: ignore[misc]
                            gen.host,
                            gen.port,
                            local_addr=(source, 0),
                        ),
                        30.0,
                    )
                    ok = await asyncio.wait_for(link.result, 30.0)
                except (OSError, TimeoutError):
                    ok = False
                    if link.transport is not None:
                        link.transport.abort()
                if ok:
                    gen.links.append(link)
                    return
                if attempt < 2:
                    gen.retried += 1
                    await asyncio.sleep(0.5 * (attempt + 1))
            gen.failed += 1

    await asyncio.gather(*(one(i, pin, token) for i, (pin, token) in enumerate(creds)))


async def report(gen: Generator, interval: float) -> None:
    last: dict[str, Any] = {}
    while True:
        await asyncio.sleep(interval)
        now = gen.counters()
        if now != last:
            emit("progress", **now)
            last = now


async def commands(gen: Generator, latency_out: Path | None) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.decode().strip()
        if command == "stats":
            emit("stats", **gen.counters(), rss_kb=rss_kb(), links=len(gen.links))
        elif command == "quit":
            break
    if latency_out is not None:
        write_latencies(latency_out, gen.system if gen.mode == "system" else gen.latencies)
    gen.done.set()


def write_latencies(path: Path, latencies: dict[int, list[float]] | dict[str, list[float]]) -> None:
    path.write_text(json.dumps({str(k): v for k, v in latencies.items()}))


def read_credentials(path: str) -> list[tuple[str, str]]:
    return [(str(p), str(t)) for p, t in json.loads(Path(path).read_text())]


async def main(args: argparse.Namespace) -> None:
    creds = read_credentials(args.creds)
    gen = Generator(args)
    rss_start = rss_kb()
    reporter = asyncio.get_running_loop().create_task(report(gen, args.report_interval))
    listener = asyncio.get_running_loop().create_task(
        commands(gen, Path(args.latency_out) if args.latency_out else None)
    )
    started = time.perf_counter()
    await open_links(gen, creds, args.sources.split(","), args.concurrency)
    emit(
        "ready",
        **gen.counters(),
        seconds=time.perf_counter() - started,
        rss_kb=rss_kb(),
        rss_start_kb=rss_start,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gen.done.wait(), args.max_seconds)
    reporter.cancel()
    listener.cancel()
    for link in gen.links:
        if link.transport is not None:
            link.transport.close()
    await asyncio.sleep(0.2)
    emit("bye", **gen.counters())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the relay's link port")
    parser.add_argument("--creds", required=True, help="JSON file: [[pin, token], ...]")
    parser.add_argument("--sources", default="127.0.0.2", help="source addresses, comma-separated")
    parser.add_argument("--mode", choices=("idle", "recv", "latency", "system"), default="idle")
    parser.add_argument("--window", type=int, default=None, help="window asked for in hello")
    parser.add_argument("--expect", type=int, default=0, help="say 'complete' after this many")
    parser.add_argument("--concurrency", type=int, default=256, help="link opens in flight")
    parser.add_argument("--report-interval", type=float, default=0.25)
    parser.add_argument("--latency-out", default=None, help="write latencies here on quit")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this")
    return parser.parse_args(argv)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(parse_args()))
