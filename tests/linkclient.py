"""Small helpers to drive the device link by hand in tests (no SDK)."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from pinrelay.core import frames
from tests.relayproc import TIMEOUT_FACTOR, RelayProc


async def raw_link(relay: RelayProc) -> ClientConnection:
    return await connect(relay.link_url, ping_interval=None, open_timeout=10)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> frames.ServerFrame:
    raw = await asyncio.wait_for(ws.recv(), timeout * TIMEOUT_FACTOR)
    return frames.decode_server(raw)


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
