"""Back-pressure on the link (PROTOCOL "Flow control"): a client that sends and
never reads costs the relay a bounded amount of memory, and is closed; one that
reads slowly is not."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import select
import socket
import time
from pathlib import Path

import pytest
from websockets.frames import Frame, Opcode

from tests.conftest import RelayFactory
from tests.linkclient import RawLink
from tests.relayproc import TIMEOUT_FACTOR

MiB = 1024 * 1024
#: The relay's RSS may grow by less than this under a flood (issue 11, hole 5).
RSS_BUDGET = 50 * MiB


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (/proc/<pid>/status, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def pings(n: int, payload: bytes = b"p" * 100) -> bytes:
    one = Frame(Opcode.PING, payload).serialize(mask=True, extensions=[])
    return one * n


def hello(device: dict[str, str]) -> bytes:
    text = json.dumps({"type": "hello", "pin": device["pin"], "token": device["token"]})
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[])


def flood_until_closed(raw: RawLink, pid: int, deadline_s: float) -> tuple[bool, bool, int]:
    """Send pings without ever reading, as fast as the socket takes them.

    Returns (paused, closed, RSS growth): paused once the relay has stopped taking
    bytes (sends block for 0.5 s on end), closed once the relay has cut the TCP
    connection.  Stops early when RSS grows past the budget (the bug).
    """
    sock = raw.sock
    sock.setblocking(False)
    chunk = pending = pings(500)
    base = peak = rss(pid)
    blocked_since: float | None = None
    paused = closed = False
    deadline = time.monotonic() + deadline_s * TIMEOUT_FACTOR
    while time.monotonic() < deadline:
        try:
            pending = pending[sock.send(pending) :] or chunk  # whole frames only
            blocked_since = None
        except BlockingIOError:
            now = time.monotonic()
            blocked_since = blocked_since or now
            if now - blocked_since > 0.5:
                paused = True
            select.select([], [sock], [], 0.05)
        except OSError as exc:  # ECONNRESET, EPIPE: the relay cut the link
            assert exc.errno in (errno.ECONNRESET, errno.EPIPE), exc
            closed = True
            break
        peak = max(peak, rss(pid))
        if peak - base > RSS_BUDGET:
            break
        if blocked_since is not None and _peer_gone(sock):
            closed = True
            break
    peak = max(peak, rss(pid))
    return paused, closed, peak - base


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the relay closed or reset the connection (TCP_INFO state, no read)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return info[0] != 1  # 1: TCP_ESTABLISHED


@pytest.mark.parametrize("before_hello", [False, True], ids=["after-hello", "before-hello"])
async def test_a_link_that_never_reads_is_paused_then_closed(
    relay_factory: RelayFactory, before_hello: bool
) -> None:
    # A long hello_timeout: the link must be closed for not reading, not for that.
    relay = relay_factory(extra=["--heartbeat", "1", "--hello-timeout", "60"])
    device = relay.create_device()
    raw = RawLink(relay)
    try:
        if not before_hello:
            raw.sock.sendall(hello(device))
            got: list[Frame] = []
            while not got:
                raw.proto.receive_data(raw.sock.recv(65536))
                got = [e for e in raw.proto.events_received() if isinstance(e, Frame)]
            assert json.loads(bytes(got[0].data))["type"] == "welcome"
        paused, closed, growth = await asyncio.to_thread(flood_until_closed, raw, relay.pid, 30)
        assert growth < RSS_BUDGET, f"relay RSS grew by {growth / MiB:.0f} MiB"
        assert paused, "the relay kept reading"
        assert closed, "the relay kept the link open"
    finally:
        raw.close()


def test_a_slow_reader_is_paused_but_not_closed(relay_factory: RelayFactory) -> None:
    """A client that floods pings but reads, slowly, loses nothing and stays linked
    for many times the stall limit (heartbeat_s, 1 s here)."""
    relay = relay_factory(extra=["--heartbeat", "1"])
    device = relay.create_device()
    raw = RawLink(relay)
    try:
        raw.sock.sendall(hello(device))
        sock = raw.sock
        sock.setblocking(False)
        chunk = pending = pings(1000)
        sent = pongs = 0
        texts: list[str] = []
        blocked = 0.0
        end = time.monotonic() + 6
        while time.monotonic() < end:
            try:
                n = sock.send(pending)
                sent += n
                pending = pending[n:]
                if not pending:  # whole frames only: stop sending at a frame's end
                    pending = chunk
            except BlockingIOError:
                blocked += 0.02
            # Read 16 KiB every 20 ms (800 KiB/s): slower than the flood.
            time.sleep(0.02)
            try:
                data = sock.recv(16 * 1024)
            except BlockingIOError:
                continue
            assert data, "the relay closed a slow but reading link"
            pongs, texts = _count(raw, data, pongs, texts)
        assert blocked > 1, "the relay never pushed back"
        # The flood stops (at a frame's end): every ping gets its pong.
        one = len(pings(1))
        deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            if pending is not chunk:
                with contextlib.suppress(BlockingIOError):
                    n = sock.send(pending)
                    sent += n
                    pending = pending[n:] or chunk
            elif pongs == sent // one:
                break
            select.select([sock], [], [], 0.1)
            try:
                data = sock.recv(256 * 1024)
            except BlockingIOError:
                continue
            assert data, "the relay closed a slow but reading link"
            pongs, texts = _count(raw, data, pongs, texts)
        want = sent // one
        assert pongs == want
        assert [json.loads(t)["type"] for t in texts] == ["welcome"]
    finally:
        raw.close()


def _count(raw: RawLink, data: bytes, pongs: int, texts: list[str]) -> tuple[int, list[str]]:
    raw.proto.receive_data(data)
    for event in raw.proto.events_received():
        if isinstance(event, Frame):
            if event.opcode is Opcode.PONG:
                pongs += 1
            elif event.opcode is Opcode.TEXT:
                texts.append(bytes(event.data).decode())
            elif event.opcode is Opcode.PING and not event.data:
                # The relay's heartbeat: while it holds back reading (its writes wait
                # for this slow reader), it hears nothing, and a busy host can make
                # that last heartbeat_s (1 s here).  Our flood of pings answers it.
                continue
            else:
                raise AssertionError(f"unexpected {event.opcode.name}: {bytes(event.data)!r}")
    return pongs, texts
