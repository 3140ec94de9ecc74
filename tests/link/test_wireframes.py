"""The link's hand-rolled text frames against websockets' own codec."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from pinrelay.auth import Authenticator
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.link.server import LinkConfig, LinkProtocol, LinkServer
from pinrelay.link.wireframes import client_text_frames, text_frame, whole_frames
from pinrelay.metrics import Metrics
from pinrelay.router.local import LocalRouter
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until_async
from tests.linkclient import RawLink
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

LIMIT = 16 * 1024
payloads = st.lists(st.binary(max_size=300) | st.binary(min_size=126, max_size=70_000), max_size=5)


def client(opcode: Opcode, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    data = Frame(opcode, payload, fin).serialize(mask=True, extensions=[])
    return bytes([data[0] | 0x40]) + data[1:] if rsv1 else data  # websockets refuses RSV


@given(payloads)
def test_a_run_of_client_text_frames_splits_into_its_payloads(run: list[bytes]) -> None:
    data = b"".join(client(Opcode.TEXT, p) for p in run)
    assert whole_frames(data)
    got = client_text_frames(data, 70_000)
    assert got is not None
    assert [p for p, _ in got] == run
    assert [stop for _, stop in got][-1:] == ([len(data)] if run else [])


@given(payloads.filter(bool), st.data())
def test_a_run_cut_short_is_left_to_websockets(run: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(client(Opcode.TEXT, p) for p in run)
    ends = {0}
    for p in run:
        ends.add(max(ends) + len(client(Opcode.TEXT, p)))
    cut = data.draw(st.integers(1, len(whole) - 1).filter(lambda c: c not in ends))
    assert client_text_frames(whole[:cut], 70_000) is None
    assert not whole_frames(whole[:cut])


@given(st.binary(max_size=200))
def test_other_frames_are_left_to_websockets_but_end_on_a_boundary(payload: bytes) -> None:
    text = client(Opcode.TEXT, b'{"type":"ack","cursor":1}')
    for other in (
        client(Opcode.PING, payload[:125]),
        client(Opcode.BINARY, payload),
        client(Opcode.TEXT, payload, fin=False),
        client(Opcode.TEXT, payload, rsv1=True),
        Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]),
    ):
        for data in (other, text + other, other + text):
            assert client_text_frames(data, LIMIT) is None
            assert whole_frames(data)


def test_a_frame_over_the_limit_is_left_to_websockets() -> None:
    assert client_text_frames(client(Opcode.TEXT, b"x" * (LIMIT + 1)), LIMIT) is None
    assert client_text_frames(client(Opcode.TEXT, b"x" * LIMIT), LIMIT) is not None


@given(st.binary(max_size=70_000))
def test_server_text_frames_are_websockets_own(payload: bytes) -> None:
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def frames_of(link: RawLink, want: int) -> list[Frame]:
    got: list[Frame] = []
    deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
    while len(got) < want and time.monotonic() < deadline:
        link.proto.receive_data(link.sock.recv(65536))
        got.extend(e for e in link.proto.events_received() if isinstance(e, Frame))
    return got


async def test_split_frames_and_pings_between_acks_on_a_real_link(relay: RelayProc) -> None:
    """The relay takes frames cut across TCP writes (and pings among acks) as they
    come, then goes on taking whole ones."""
    device = relay.create_device()
    with relay.client() as c:
        for n in range(3):
            c.push(device["pin"], {"n": n}, ttl=600)
    raw = RawLink(relay)
    try:
        hello = json.dumps({"type": "hello", "pin": device["pin"], "token": device["token"]})
        hello_frame = client(Opcode.TEXT, hello.encode())
        raw.sock.sendall(hello_frame[:3])  # a header cut short
        await asyncio.sleep(0.1)  # pacing: the rest comes in a later read
        raw.sock.sendall(hello_frame[3:])
        got = await asyncio.to_thread(frames_of, raw, 4)
        kinds = [json.loads(bytes(f.data))["type"] for f in got]
        assert kinds == ["welcome", "msg", "msg", "msg"]
        ack = [client(Opcode.TEXT, b'{"type":"ack","cursor":%d}' % n) for n in (1, 2, 3)]
        raw.sock.sendall(ack[0] + client(Opcode.PING, b"hi"))
        pong = await asyncio.to_thread(frames_of, raw, 1)
        assert [(f.opcode, f.data) for f in pong] == [(Opcode.PONG, b"hi")]
        raw.sock.sendall(ack[1][:7])
        await asyncio.sleep(0.1)  # pacing: the rest comes in a later read
        raw.sock.sendall(ack[1][7:] + ack[2])
        with relay.client() as c:
            with contextlib.suppress(TimeoutError):
                await wait_until_async(
                    lambda: c.show_device(device["pin"])["acked_cursor"] == 3, 5.0, 0.1
                )
            assert c.show_device(device["pin"])["acked_cursor"] == 3
            c.push(device["pin"], {"n": 3}, ttl=600)
        (last,) = await asyncio.to_thread(frames_of, raw, 1)
        assert json.loads(bytes(last.data))["cursor"] == 4
    finally:
        raw.close()


# --- the bypass's bookkeeping, on a LinkServer in this process (real sockets, a
# real SQLite store): whether websockets' parser stands at a frame boundary.


@pytest.fixture
async def link_server(tmp_path: Path) -> AsyncIterator[LinkServer]:
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    metrics = Metrics()
    server = LinkServer(
        store=store,
        router=LocalRouter(),
        config=LinkConfig(),
        metrics=metrics,
        clock=time.time,
        auth=Authenticator(store, FailureLimiter(), metrics, time.time, None),
    )
    try:
        yield server
    finally:
        await server.close()
        await store.close()


async def open_link(
    server: LinkServer, first: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, LinkProtocol]:
    """A WebSocket handshake by hand, ``first`` sent in the same write as the request."""
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/link HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n" + first
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * TIMEOUT_FACTOR)
    assert head.startswith(b"HTTP/1.1 101"), head
    (link,) = server.connections
    return reader, writer, link


async def settle(link: LinkProtocol, want: bool) -> bool:
    """``link._fast`` once it is ``want`` (or what it is after a second)."""
    with contextlib.suppress(TimeoutError):
        await wait_until_async(lambda: link._fast is want, 1.0, 0.01)
    return link._fast


async def test_the_bypass_comes_back_once_the_parser_is_on_a_boundary_again(
    link_server: LinkServer,
) -> None:
    reader, writer, link = await open_link(link_server)
    try:
        assert await settle(link, True)  # the request ended its chunk
        ping = client(Opcode.PING, b"hello")
        writer.write(ping[:3])  # the parser is now inside a frame
        await writer.drain()
        assert not await settle(link, False)
        writer.write(ping[3:] + ping)  # the rest, then a whole frame: on a boundary
        await writer.drain()
        assert await settle(link, True)
        pongs = await asyncio.wait_for(reader.readexactly(2 * 7), 5 * TIMEOUT_FACTOR)
        assert pongs == 2 * text_pong(b"hello")
    finally:
        writer.close()


async def test_frames_in_the_same_write_as_the_request_are_counted(
    link_server: LinkServer,
) -> None:
    # A ping whose mask is a blank line: the request's write ends in "\r\n\r\n" while
    # the parser is inside the ping.
    mask = b"\r\n\r\n"
    ping = bytes([0x89, 0x80 | 4]) + mask + bytes(b ^ m for b, m in zip(b"ping", mask, strict=True))
    reader, writer, link = await open_link(link_server, first=ping[:6])
    try:
        assert not await settle(link, False)
        writer.write(ping[6:])
        await writer.drain()
        assert await settle(link, True)
        pong = await asyncio.wait_for(reader.readexactly(6), 5 * TIMEOUT_FACTOR)
        assert pong == text_pong(b"ping")
    finally:
        writer.close()


async def test_a_fragmented_message_fails_the_link(link_server: LinkServer) -> None:
    """Even when its first fragment is whole JSON, and even with the bypass on."""
    reader, writer, link = await open_link(link_server)
    try:
        assert await settle(link, True)
        # (Both fragments in one write would be websockets' to refuse: 1002.)
        writer.write(client(Opcode.TEXT, b'{"type":"ack","cursor":0}', fin=False))
        first, error = await server_frame(reader)
        assert first == 0x81
        assert json.loads(error)["code"] == "bad_request"
        assert "fragmented" in json.loads(error)["message"]
        first, close = await server_frame(reader)
        assert first == 0x88 and int.from_bytes(close[:2], "big") == 4400
    finally:
        writer.close()


def text_pong(payload: bytes) -> bytes:
    return Frame(Opcode.PONG, payload).serialize(mask=False, extensions=[])


async def server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, payload) of one unmasked frame under 64 KiB."""
    head = await asyncio.wait_for(reader.readexactly(2), 5 * TIMEOUT_FACTOR)
    n = head[1]
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    return head[0], await asyncio.wait_for(reader.readexactly(n), 5 * TIMEOUT_FACTOR)


@pytest.mark.parametrize("path", ["bypass", "parser"])
async def test_invalid_utf8_in_a_text_frame_fails_the_link_with_1007(
    link_server: LinkServer, path: str
) -> None:
    """As websockets' own connections refuse it (RFC 6455 §8.1), whichever path reads
    the frame: the bypass (a run of whole text frames) or websockets' parser (here:
    the frame follows a ping in the same write)."""
    reader, writer, link = await open_link(link_server)
    try:
        assert await settle(link, True)
        bad = client(Opcode.TEXT, b'{"type":"hello","pin":"\xc3(","token":"t"}')
        writer.write(bad if path == "bypass" else client(Opcode.PING, b"") + bad)
        await writer.drain()
        first, payload = await server_frame(reader)
        if path == "parser":
            assert first == 0x8A  # the pong comes first
            first, payload = await server_frame(reader)
        assert first == 0x88
        assert int.from_bytes(payload[:2], "big") == 1007
        assert payload[2:] == b"invalid continuation byte at position 23"
        assert await asyncio.wait_for(reader.read(), 5 * TIMEOUT_FACTOR) == b""  # closed
    finally:
        writer.close()
