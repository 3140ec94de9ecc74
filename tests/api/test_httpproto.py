"""The coalescing transport under the HTTP API, on real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from pinrelay.api.httpproto import CoalescingTransport
from tests.relayproc import RelayProc


class _Server(asyncio.Protocol):
    def __init__(self, ready: asyncio.Future[CoalescingTransport]) -> None:
        self.ready = ready

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.ready.set_result(CoalescingTransport(transport, asyncio.get_running_loop()))


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[tuple[CoalescingTransport, asyncio.StreamReader]]:
    """A coalescing server-side transport and the client's reader, on loopback."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[CoalescingTransport] = loop.create_future()
    server = await loop.create_server(lambda: _Server(ready), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    transport = await ready
    try:
        yield transport, reader
    finally:
        transport.abort()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_writes_of_one_turn_go_out_together_in_order() -> None:
    async with _pair() as (transport, reader):
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"")
        transport.write(b"body")
        assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
        await asyncio.sleep(0)  # the end of this turn of the loop (what the test is about)
        transport.write(b"; next")
        assert await reader.readexactly(29) == b"HTTP/1.1 200 OK\r\n\r\nbody; next"


async def test_close_sends_what_was_written_first() -> None:
    async with _pair() as (transport, reader):
        transport.write(b"last words")
        transport.close()
        assert await reader.read() == b"last words"  # then EOF
        assert transport.is_closing()  # delegated to the real transport


async def test_abort_drops_what_was_not_sent() -> None:
    async with _pair() as (transport, reader):
        transport.write(b"never")
        transport.abort()
        assert await reader.read() == b""


def test_a_relay_answers_keep_alive_requests_through_it(relay: RelayProc) -> None:
    # Many requests on one connection: each answer complete, none mixed with the next.
    with httpx.Client(base_url=relay.url) as http:
        for _ in range(50):
            assert http.get("/v1/info").json()["version"]
            assert http.get("/healthz").status_code == 200


async def test_write_now_keeps_order_behind_deferred_writes() -> None:
    async with _pair() as (transport, reader):
        transport.write_now(b"first;")  # nothing waits: straight to the socket
        assert transport.get_write_buffer_size() == 0
        transport.write(b"deferred;")
        transport.write_now(b"after")  # must not overtake what waits for the turn's end
        await asyncio.sleep(0)  # the end of this turn of the loop (what the test is about)
        assert await reader.readexactly(20) == b"first;deferred;after"
