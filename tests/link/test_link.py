"""The device link against a real relay process on 127.0.0.1 (docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
import websockets
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from pinrelay.core import frames
from pinrelay.link.server import REFUSAL_SLACK
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.conftest import RelayFactory
from tests.linkclient import RawLink, closed_with, error_then_close, link, raw_link, recv, send
from tests.relayproc import TIMEOUT_FACTOR, RelayProc


async def wait_shown(
    relay: RelayProc, pin: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET the device until ``check`` holds for what it shows (an ack is written
    asynchronously); what it shows then."""

    def shown() -> dict[str, Any] | None:
        with relay.client() as c:
            device = c.show_device(pin)
        return device if check(device) else None

    return await wait_until_async(shown, 5.0, 0.05, f"device {pin} as expected")


def push(
    relay: RelayProc, pin: str, data: object, *, ttl: int = 3600, **fields: str
) -> dict[str, object]:
    with relay.client() as c:
        return c.push(pin, data, ttl=ttl, **fields)


class TestHello:
    @pytest.mark.shared_relay
    async def test_welcome_then_backlog_in_order(self, relay: RelayProc) -> None:
        device = relay.create_device()
        for n in range(5):
            push(relay, device["pin"], {"n": n})
        ws, welcome = await link(relay, device)
        assert welcome.pin == device["pin"]
        assert welcome.heartbeat_s > 0
        assert welcome.window == 64
        got = [await recv(ws) for _ in range(5)]
        assert all(isinstance(m, frames.Msg) for m in got)
        msgs = [m for m in got if isinstance(m, frames.Msg)]
        assert [msgspec.json.decode(m.data) for m in msgs] == [{"n": n} for n in range(5)]
        assert [m.cursor for m in msgs] == [1, 2, 3, 4, 5]
        await send(ws, frames.Ack(cursor=5))
        shown = await wait_shown(relay, device["pin"], lambda d: d["acked_cursor"] >= 5)
        assert shown["backlog"] == 0
        assert shown["acked_cursor"] == 5
        assert shown["online"] is True
        await ws.close()

    @pytest.mark.shared_relay
    async def test_live_push_arrives(self, relay: RelayProc) -> None:
        device = relay.create_device()
        ws, _ = await link(relay, device)
        push(relay, device["pin"], "live", topic="news", urgency="high")
        m = await recv(ws)
        assert isinstance(m, frames.Msg)
        assert (m.topic, m.urgency, bytes(m.data)) == ("news", "high", b'"live"')
        await ws.close()

    @pytest.mark.shared_relay
    async def test_frame_before_hello_is_refused(self, relay: RelayProc) -> None:
        ws = await raw_link(relay)
        await send(ws, frames.Ack(cursor=1))
        error, code = await error_then_close(ws)
        assert (error.code, error.status, code) == ("bad_request", 400, 4400)

    @pytest.mark.shared_relay
    @pytest.mark.parametrize(
        "payload",
        ["not json", '{"type":"nope"}', '{"type":"hello"}', "[]", '{"type":"hello","pin":1}'],
    )
    async def test_malformed_hello(self, relay: RelayProc, payload: str) -> None:
        ws = await raw_link(relay)
        await ws.send(payload)
        error, code = await error_then_close(ws)
        assert error.status in (400, 422)
        assert code == 4000 + error.status

    @pytest.mark.shared_relay
    async def test_binary_frame_is_refused(self, relay: RelayProc) -> None:
        ws = await raw_link(relay)
        await ws.send(b'{"type":"ack","cursor":0}')
        _, code = await error_then_close(ws)
        assert code == 4400

    @pytest.mark.shared_relay
    async def test_wrong_token_and_unknown_pin_look_the_same(self, relay: RelayProc) -> None:
        device = relay.create_device()
        answers = []
        for pin, token in ((device["pin"], "wrong"), ("0BADF00D", device["token"])):
            ws = await raw_link(relay)
            await send(ws, frames.Hello(pin=pin, token=token))
            error, code = await error_then_close(ws)
            answers.append((error.code, error.message, code))
        assert answers[0] == answers[1] == ("unauthorized", "unknown PIN or wrong token", 4401)

    async def test_failed_auth_is_rate_limited_per_pin(self, relay: RelayProc) -> None:
        device = relay.create_device()
        codes = []
        for _ in range(11):
            ws = await raw_link(relay)
            await send(ws, frames.Hello(pin=device["pin"], token="guess"))
            _, code = await error_then_close(ws)
            codes.append(code)
        assert codes[:10] == [4401] * 10
        assert codes[10] == 4429
        # Even the right token waits now, from this source: the source and PIN are
        # slowed down (other sources are not: test_regressions).
        ws = await raw_link(relay)
        await send(ws, frames.Hello(pin=device["pin"], token=device["token"]))
        error, code = await error_then_close(ws)
        assert code == 4429 and error.retry_after_ms is not None and error.retry_after_ms > 0

    @pytest.mark.shared_relay
    async def test_cursor_ahead_of_device_is_refused(self, relay: RelayProc) -> None:
        device = relay.create_device()
        push(relay, device["pin"], 1)
        ws = await raw_link(relay)
        await send(ws, frames.Hello(pin=device["pin"], token=device["token"], cursor=2))
        error, code = await error_then_close(ws)
        assert (error.code, code) == ("invalid", 4422)

    @pytest.mark.shared_relay
    async def test_hello_cursor_acknowledges(self, relay: RelayProc) -> None:
        device = relay.create_device()
        for n in range(3):
            push(relay, device["pin"], n)
        ws, welcome = await link(relay, device, cursor=2)
        assert welcome.cursor == 2
        m = await recv(ws)
        assert isinstance(m, frames.Msg) and m.cursor == 3
        await ws.close()

    @pytest.mark.shared_relay
    async def test_unknown_path_and_plain_http(self, relay: RelayProc) -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(f"ws://127.0.0.1:{relay.link_port}/nope")
        assert info.value.response.status_code == 404


@pytest.mark.shared_relay
class TestWindowAndAcks:
    async def test_never_more_than_window_in_flight(self, relay: RelayProc) -> None:
        device = relay.create_device()
        for n in range(6):
            push(relay, device["pin"], n)
        ws, welcome = await link(relay, device, window=2)
        assert welcome.window == 2
        first = [await recv(ws) for _ in range(2)]
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.5)
        assert [m.cursor for m in first if isinstance(m, frames.Msg)] == [1, 2]
        await send(ws, frames.Ack(cursor=1))
        m = await recv(ws)
        assert isinstance(m, frames.Msg) and m.cursor == 3
        await ws.close()

    async def test_unacked_are_redelivered_in_order(self, relay: RelayProc) -> None:
        device = relay.create_device()
        for n in range(4):
            push(relay, device["pin"], n)
        ws, _ = await link(relay, device)
        got = [await recv(ws) for _ in range(4)]
        await send(ws, frames.Ack(cursor=2))
        await wait_shown(relay, device["pin"], lambda d: d["acked_cursor"] >= 2)
        await ws.close()
        ws, welcome = await link(relay, device)
        assert welcome.cursor == 2
        again = [await recv(ws) for _ in range(2)]
        assert [m.cursor for m in again if isinstance(m, frames.Msg)] == [3, 4]
        assert [m.id for m in again if isinstance(m, frames.Msg)] == [
            m.id for m in got[2:] if isinstance(m, frames.Msg)
        ]
        await ws.close()

    async def test_ack_beyond_sent_is_a_protocol_error(self, relay: RelayProc) -> None:
        device = relay.create_device()
        ws, _ = await link(relay, device)
        await send(ws, frames.Ack(cursor=7))
        error, code = await error_then_close(ws)
        assert (error.code, code) == ("invalid", 4422)

    async def test_second_frame_type_in_open_state(self, relay: RelayProc) -> None:
        device = relay.create_device()
        ws, _ = await link(relay, device)
        await send(ws, frames.Hello(pin=device["pin"], token=device["token"]))
        _, code = await error_then_close(ws)
        assert code == 4400


@pytest.mark.shared_relay
class TestLinkOwnership:
    async def test_second_link_replaces_the_first(self, relay: RelayProc) -> None:
        device = relay.create_device()
        first, _ = await link(relay, device)
        second, _ = await link(relay, device)
        error, code = await error_then_close(first)
        assert (error.code, code) == ("replaced", 4409)
        push(relay, device["pin"], "to the new link")
        m = await recv(second)
        assert isinstance(m, frames.Msg)
        await second.close()

    async def test_token_rotation_closes_the_link(self, relay: RelayProc) -> None:
        device = relay.create_device()
        ws, _ = await link(relay, device)
        with relay.client() as c:
            rotated = c.rotate_token(device["pin"])
        error, code = await error_then_close(ws)
        assert (error.code, code) == ("unauthorized", 4401)
        stale = await raw_link(relay)
        await send(stale, frames.Hello(pin=device["pin"], token=device["token"]))
        _, code = await error_then_close(stale)
        assert code == 4401
        fresh, _ = await link(relay, {"pin": device["pin"], "token": rotated["token"]})
        await fresh.close()

    async def test_deleting_the_device_closes_the_link(self, relay: RelayProc) -> None:
        device = relay.create_device()
        ws, _ = await link(relay, device)
        with relay.client() as c:
            c.delete_device(device["pin"])
        error, code = await error_then_close(ws)
        assert (error.code, code) == ("not_found", 4404)


class TestShutdownAndCapacity:
    async def test_sigterm_drains_every_link(self, relay: RelayProc) -> None:
        devices = [relay.create_device() for _ in range(3)]
        links = [(await link(relay, d))[0] for d in devices]
        stopping = asyncio.get_running_loop().run_in_executor(None, relay.terminate)
        for ws in links:
            drain = await recv(ws)
            assert isinstance(drain, frames.Drain)
            assert drain.reason == "shutdown"
            assert drain.retry_after_ms >= 1000
            assert await closed_with(ws) == 1001
        assert await stopping == 0

    async def test_sigterm_answers_a_waiting_inbox_long_poll(self, relay: RelayProc) -> None:
        """A long poll is answered "nothing yet" at once, not held for its minute or
        cut by the server's 5 s shutdown limit; the relay then exits by itself."""
        device = relay.create_device()
        headers = {"Authorization": f"Bearer {device['token']}"}
        async with httpx.AsyncClient(base_url=relay.url, timeout=90) as c:
            poll = asyncio.create_task(
                c.get(f"/v1/devices/{device['pin']}/inbox", params={"wait": 60}, headers=headers)
            )

            async def waiting() -> bool:
                text = (await c.get("/metrics", headers=relay.admin_headers())).text
                return "pinrelay_inbox_long_polls 1.0" in text.splitlines()

            await wait_until_async(waiting, 10, 0.05, "the long poll waiting")
            assert relay.proc is not None
            relay.proc.send_signal(signal.SIGTERM)
            answer = await asyncio.wait_for(poll, 30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["messages"] == []
            assert await asyncio.to_thread(relay.proc.wait, 30) == 0

    async def test_links_beyond_capacity_get_503(self, relay_factory: RelayFactory) -> None:
        relay = relay_factory(extra=["--max-links", "2"])
        devices = [relay.create_device() for _ in range(2)]
        held = [(await link(relay, d))[0] for d in devices]
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(relay.link_url, open_timeout=5)
        assert info.value.response.status_code == 503
        assert info.value.response.headers["Retry-After"]
        for ws in held:
            await ws.close()

    def test_connections_that_never_upgrade_are_bounded(self, relay_factory: RelayFactory) -> None:
        """Past the cap and its slack for 503s, a connection is dropped on accept: idle
        sockets cannot take the descriptors kept for the HTTP API (PROTOCOL "Capacity")."""
        relay = relay_factory(extra=["--max-links", "2", "--hello-timeout", "30"])
        socks = [
            socket.create_connection(("127.0.0.1", relay.link_port))
            for _ in range(2 + REFUSAL_SLACK + 20)
        ]
        try:

            def dropped(s: socket.socket) -> bool:
                s.setblocking(False)
                try:
                    return s.recv(1) == b""
                except BlockingIOError:
                    return False
                except ConnectionResetError:
                    return True

            gone = wait_until(
                lambda: n if (n := sum(map(dropped, socks))) >= 20 else None,
                timeout=10,
                message="connections past the cap dropped",
            )
            assert gone <= 20 + 1  # the first 2 + REFUSAL_SLACK are held for their 503
        finally:
            for s in socks:
                s.close()


class TestTimers:
    async def test_hello_timeout(self, relay_factory: RelayFactory) -> None:
        relay = relay_factory(extra=["--hello-timeout", "0.5"])
        ws = await raw_link(relay)
        error, code = await error_then_close(ws)
        assert (error.code, code) == ("hello_timeout", 4408)

    async def test_hello_timeout_is_what_it_says(self, relay_factory: RelayFactory) -> None:
        """Counted from the TCP connect, to within 0.9 s (it fired with the heartbeat
        walk, every 2 s at the default heartbeat: 10 s came out as 10-12 s).  Two
        links a second apart: on a 2 s walk at most one of them can be on time within
        any window under 1 s (the other is 1 s late or more); 0.9 s leaves a loaded CI
        host room to be late (0.6 s left it a stall of about half a second)."""
        relay = relay_factory(extra=["--hello-timeout", "1"])

        async def timed() -> tuple[float, str, int | None]:
            loop = asyncio.get_running_loop()
            started = loop.time()
            ws = await raw_link(relay)
            error, code = await error_then_close(ws)
            return loop.time() - started, error.code, code

        async def later() -> tuple[float, str, int | None]:
            await asyncio.sleep(1.0)  # the second link a second later (what the test is about)
            return await timed()

        for elapsed, error, code in await asyncio.gather(timed(), later()):
            assert (error, code) == ("hello_timeout", 4408)
            assert 1.0 <= elapsed < 1.0 + 0.9 * TIMEOUT_FACTOR, elapsed

    async def test_silent_link_is_dropped(self, relay_factory: RelayFactory) -> None:
        relay = relay_factory(extra=["--heartbeat", "0.5"])
        device = relay.create_device()
        # A raw socket that completes the handshake and hello, then never answers pings.
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        proto = ClientProtocol(parse_uri(relay.link_url))
        sock = socket.create_connection(("127.0.0.1", relay.link_port))
        try:
            proto.send_request(proto.connect())
            for chunk in proto.data_to_send():
                sock.sendall(chunk)
            proto.receive_data(sock.recv(65536))
            proto.send_text(frames.encode(frames.Hello(pin=device["pin"], token=device["token"])))
            for chunk in proto.data_to_send():
                sock.sendall(chunk)
            sock.settimeout(5 * TIMEOUT_FACTOR)
            started = asyncio.get_running_loop().time()
            while sock.recv(65536):  # welcome, pings ... then EOF
                pass
            elapsed = asyncio.get_running_loop().time() - started
            assert elapsed < 4 * TIMEOUT_FACTOR
        finally:
            sock.close()

    async def test_answering_pings_keeps_the_link(self, relay_factory: RelayFactory) -> None:
        # 1 s, not less: a loaded CI host can hold this process a few tenths of a
        # second, and the relay rightly drops a link whose pong is a heartbeat late.
        relay = relay_factory(extra=["--heartbeat", "1"])
        device = relay.create_device()
        ws, _ = await link(relay, device)
        # Waits out two heartbeats and a half (what the test is about); the client
        # library answers the pings by itself.
        await asyncio.sleep(2.5)
        push(relay, device["pin"], "still here")
        m = await recv(ws)
        assert isinstance(m, frames.Msg)
        await ws.close()


class TestApplicationPing:
    """PROTOCOL "Heartbeats": a ping frame for clients whose library hides pings."""

    @pytest.mark.shared_relay
    async def test_ping_is_answered_with_pong(self, relay: RelayProc) -> None:
        device = relay.create_device()
        ws, _ = await link(relay, device)
        await send(ws, frames.Ping(id="n-1"))
        assert await recv(ws) == frames.Pong(id="n-1")
        await send(ws, {"type": "ping"})
        assert await recv(ws) == frames.Pong(id=None)
        push(relay, device["pin"], "after pings")
        m = await recv(ws)
        assert isinstance(m, frames.Msg)
        await ws.close()

    @pytest.mark.shared_relay
    async def test_ping_before_welcome_is_refused(self, relay: RelayProc) -> None:
        ws = await raw_link(relay)
        await send(ws, frames.Ping())
        error, code = await error_then_close(ws)
        assert (error.code, code) == ("bad_request", 4400)

    async def test_ping_keeps_a_link_alive_without_websocket_pongs(
        self, relay_factory: RelayFactory
    ) -> None:
        """A client that never answers WebSocket pings but sends ping frames stays
        linked past 2 x heartbeat_s.

        The heartbeat is 1 s, not less: the relay rightly drops a client silent for
        two heartbeats, and a loaded CI host once held this test's process that long
        between two pings 0.1 s apart when the heartbeat was 0.3 s.
        """
        heartbeat = 1.0
        relay = relay_factory(extra=["--heartbeat", str(heartbeat)])
        device = relay.create_device()
        raw = RawLink(relay)
        try:
            raw.send_texts(frames.encode(frames.Hello(pin=device["pin"], token=device["token"])))
            texts: list[frames.ServerFrame] = []
            loop = asyncio.get_running_loop()
            end = loop.time() + 2 * heartbeat + 0.5
            n = 0
            while loop.time() < end:
                n += 1
                # What the relay said if it closed the link (an error frame), not
                # websockets' InvalidState.
                assert raw.proto.state is State.OPEN, texts
                raw.send_texts(frames.encode(frames.Ping(id=str(n))))
                texts += await asyncio.to_thread(_texts, raw)
                await asyncio.sleep(0.1)  # pacing the pings
            # A read may have returned only a WebSocket ping: the last pongs may still
            # be on their way (each read waits at most the socket's timeout).
            deadline = loop.time() + 5
            while len(texts) < n + 1 and loop.time() < deadline:
                texts += await asyncio.to_thread(_texts, raw)
            assert isinstance(texts[0], frames.Welcome)
            assert texts[1:] == [frames.Pong(id=str(i)) for i in range(1, n + 1)]
        finally:
            raw.close()


def _texts(raw: RawLink) -> list[frames.ServerFrame]:
    """The text frames of one read (WebSocket pings are left unanswered)."""
    raw.proto.receive_data(raw.sock.recv(65536))
    raw.proto.data_to_send()  # the pongs websockets queued: dropped, never sent
    return [
        frames.decode_server(e.data)
        for e in raw.proto.events_received()
        if isinstance(e, Frame) and e.opcode is Opcode.TEXT
    ]


async def test_metrics_count_links_and_messages(relay: RelayProc) -> None:
    device = relay.create_device()
    push(relay, device["pin"], 1)
    ws, _ = await link(relay, device)
    await recv(ws)
    await send(ws, frames.Ack(cursor=1))

    async def acked() -> str | None:
        async with httpx.AsyncClient(headers=relay.admin_headers()) as http:
            text = (await http.get(f"{relay.url}/metrics")).text
        return text if "pinrelay_messages_acked_total 0.0" not in text else None

    text = await wait_until_async(acked, 5.0, 0.05, "the ack counted")
    assert "pinrelay_links_open 1.0" in text
    assert 'pinrelay_messages_accepted_total{kind="push"} 1.0' in text
    assert "pinrelay_messages_delivered_total 1.0" in text
    assert "pinrelay_messages_acked_total 1.0" in text
    await ws.close()
