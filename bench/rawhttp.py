"""A lean HTTP/1.1 keep-alive client for pushing: one request at a time per connection.

httpx costs a few hundred microseconds of client CPU per request; on a 2-core
machine that CPU is taken from the relay being measured.  This client writes a
pre-built request and reads one Content-Length response, nothing more (the relay
always answers with Content-Length).  It is a bare ``asyncio.Protocol``: asyncio's
streams (readuntil, then readexactly) cost the pusher about twice the CPU per
request, and the pusher shares the machine with the relay (DECISIONS 28).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


class HttpError(Exception):
    pass


class _Response(asyncio.Protocol):
    """Reads responses into the waiting future, one at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None:
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end])
        at = head.lower().find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter = None
            if not waiter.done():
                waiter.set_exception(HttpError(f"no Content-Length in response: {head[:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        self.waiter = None
        if not waiter.done():
            waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpError(f"connection lost: {exc!r}"))

    def eof_received(self) -> bool | None:
        self.closed = True
        return None


class Connection:
    """``key``: sent as a bearer token with every request (None: no Authorization;
    a Web Push sender signs its own, in ``request_bytes``'s headers)."""

    def __init__(self, host: str, port: int, key: str | None) -> None:
        self.host = host
        self.port = port
        self._head = f"Host: {host}:{port}\r\n"
        if key is not None:
            self._head += f"Authorization: Bearer {key}\r\n"
        self._proto: _Response | None = None

    async def open(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, self._proto = await loop.create_connection(_Response, self.host, self.port)
        return self

    def request_bytes(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> bytes:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        return (
            f"{method} {path} HTTP/1.1\r\n{self._head}{extra}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send a request built by :meth:`request_bytes`; returns (status, body)."""
        proto = self._proto
        if proto is None or proto.closed or proto.transport is None:
            # The relay closes idle keep-alive connections (uvicorn: after 5 s).
            await self.close()
            await self.open()
            proto = self._proto
            assert proto is not None and proto.transport is not None
        if proto.waiter is not None:
            raise HttpError("one request at a time per connection")
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        proto.waiter = waiter
        proto.transport.write(request)
        try:
            return await waiter
        except BaseException:
            # Cancelled or failed: whatever arrives later would answer the next request.
            proto.waiter = None
            await self.close()
            raise

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return await self.send(self.request_bytes("POST", path, body))

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
