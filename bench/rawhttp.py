"""A lean HTTP/1.1 keep-alive client for pushing: one request at a time per connection.

httpx costs a few hundred microseconds of client CPU per request; on a 2-core
machine that CPU is taken from the relay being measured.  This client writes a
pre-built request and reads one Content-Length response, nothing more (the relay
always answers with Content-Length).
"""

from __future__ import annotations

import asyncio
import contextlib


class HttpError(Exception):
    pass


class Connection:
    def __init__(self, host: str, port: int, key: str) -> None:
        self.host = host
        self.port = port
        self._head = f"Host: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    def request_bytes(self, method: str, path: str, body: bytes) -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\n{self._head}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Send a request built by :meth:`request_bytes`; returns (status, body)."""
        if self._reader is None or self._writer is None or self._reader.at_eof():
            # The relay closes idle keep-alive connections (uvicorn: after 5 s).
            await self.close()
            await self.open()
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        else:
            raise HttpError(f"no Content-Length in response: {head[:200]!r}")
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return await self.send(self.request_bytes("POST", path, body))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
            self._reader = None
