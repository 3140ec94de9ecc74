"""Small helpers to drive the device link by hand in tests (no SDK)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from pinrelay.core import frames
from tests.relayproc import TIMEOUT_FACTOR, RelayProc


async def raw_link(relay: RelayProc) -> ClientConnection:
    return await connect(relay.link_url, ping_interval=None, open_timeout=10)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> frames.ServerFrame:
    """The next frame but system messages (an incident's news, not stored: a test
    that opens incidents gets them too; tests/link/test_system_messages.py reads them)."""
    async with asyncio.timeout(timeout * TIMEOUT_FACTOR):
        while True:
            frame = frames.decode_server_any(await ws.recv())
            if not isinstance(frame, frames.SystemMsg):
                return frame


async def send(ws: ClientConnection, frame: frames.ClientFrame | dict[str, Any]) -> None:
    if isinstance(frame, dict):
        import json

        await ws.send(json.dumps(frame))
    else:
        await ws.send(frames.encode(frame).decode())


async def link(
    relay: RelayProc, device: dict[str, Any], *, cursor: int = 0, window: int | None = None
) -> tuple[ClientConnection, frames.Welcome]:
    ws = await raw_link(relay)
    await send(
        ws, frames.Hello(pin=device["pin"], token=device["token"], cursor=cursor, window=window)
    )
    welcome = await recv(ws)
    assert isinstance(welcome, frames.Welcome), welcome
    return ws, welcome


async def closed_with(ws: ClientConnection, timeout: float = 5.0) -> int | None:
    """Wait for the relay to close the link; its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout * TIMEOUT_FACTOR)
    except websockets.ConnectionClosed:
        pass
    return ws.close_code


async def error_then_close(ws: ClientConnection) -> tuple[frames.Error, int | None]:
    frame = await recv(ws)
    assert isinstance(frame, frames.Error), frame
    return frame, await closed_with(ws)


class RawLink:
    """A WebSocket client on a plain socket, for what a library would not do:
    several frames in one TCP write, or never answering pings."""

    def __init__(self, relay: RelayProc) -> None:
        import socket

        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.proto = ClientProtocol(parse_uri(relay.link_url), max_size=2**20)
        self.sock = socket.create_connection(("127.0.0.1", relay.link_port))
        self.sock.settimeout(5 * TIMEOUT_FACTOR)
        self.proto.send_request(self.proto.connect())
        self._flush()
        while self.proto.handshake_exc is None and not self.proto.events_received():
            self.proto.receive_data(self.sock.recv(65536))

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.proto.data_to_send()))

    def send_texts(self, *frames_: bytes) -> None:
        """Every frame in one TCP write."""
        for f in frames_:
            self.proto.send_text(f)
        self._flush()

    def read_until_closed(self) -> list[Any]:
        """Every frame until the relay closes the TCP connection.

        The client's side of the close handshake is sent, as a client would: without
        it the relay waits CLOSE_TIMEOUT (5 s) before it drops the connection, as long
        as this socket's own timeout.
        """
        from websockets.frames import Frame

        got: list[Any] = []
        while data := self.sock.recv(65536):
            self.proto.receive_data(data)
            got.extend(e for e in self.proto.events_received() if isinstance(e, Frame))
            with contextlib.suppress(OSError):
                self._flush()
        return got

    def close(self) -> None:
        self.sock.close()


async def ack_all(ws: ClientConnection) -> None:
    """Acknowledge every message the link gets, until cancelled (run as a task)."""
    while True:
        frame = await recv(ws, 60)
        if isinstance(frame, frames.Msg) and frame.cursor is not None:
            await send(ws, frames.Ack(cursor=frame.cursor))
