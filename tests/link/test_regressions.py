"""One test per bug found in review, so none comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Opcode

from pinrelay.client.device import Device, Message
from pinrelay.core import frames
from pinrelay.link.server import LinkConfig
from pinrelay.testing.wait import scaled, wait_until_async
from tests.conftest import RelayFactory
from tests.linkclient import RawLink, closed_with, error_then_close, link, raw_link, recv, send
from tests.relayproc import RelayProc, free_port


@pytest.mark.shared_relay
async def test_non_ascii_close_reason_fits_a_control_frame(relay: RelayProc) -> None:
    ws = await raw_link(relay)
    await ws.send(json.dumps({"type": "é" * 100}))
    error, code = await error_then_close(ws)
    assert code == 4000 + error.status  # not 1006: the close frame was well formed


@pytest.mark.shared_relay
async def test_failed_hello_does_not_replace_a_healthy_link(relay: RelayProc) -> None:
    device = relay.create_device()
    healthy, _ = await link(relay, device)
    hello = frames.encode(frames.Hello(pin=device["pin"], token=device["token"]))
    bad = RawLink(relay)
    try:
        # hello and a premature ack in one TCP write: the link fails before auth ends.
        bad.send_texts(hello, frames.encode(frames.Ack(cursor=0)))
        texts = [
            f for f in await asyncio.to_thread(bad.read_until_closed) if f.opcode is Opcode.TEXT
        ]
        assert [frames.decode_server(f.data).__class__ for f in texts] == [frames.Error]
    finally:
        bad.close()
    with relay.client() as c:
        c.push(device["pin"], "still mine", ttl=60)
    m = await recv(healthy)
    assert isinstance(m, frames.Msg)
    await healthy.close()


@pytest.mark.shared_relay
async def test_oversized_frame_gets_an_error_frame(relay: RelayProc) -> None:
    ws = await raw_link(relay)
    over = LinkConfig().max_frame + 1  # over the limit, under 4x it: an error frame
    await ws.send(json.dumps({"type": "hello", "pin": "x" * over, "token": "t"}))
    error, code = await error_then_close(ws)
    assert (error.code, code) == ("too_large", 4413)


@pytest.mark.shared_relay
async def test_batch_ttl0_to_unknown_pin_is_404(relay: RelayProc) -> None:
    with relay.client() as c:
        [result] = c.push_batch([{"to": "0BADF00D", "data": 1, "ttl": 0}])
    assert result["status"] == 404


async def test_link_auth_failures_do_not_lock_out_the_api(relay: RelayProc) -> None:
    for _ in range(11):
        ws = await raw_link(relay)
        await send(ws, frames.Hello(pin="0BADF00D", token="nope"))
        await error_then_close(ws)
    async with httpx.AsyncClient(headers=relay.admin_headers()) as http:
        r = await http.get(f"{relay.url}/v1/keys")
    assert r.status_code == 200


async def test_sdk_honours_retry_after_at_capacity(relay_factory: RelayFactory) -> None:
    relay = relay_factory(extra=["--max-links", "1"])
    holder_dev, waiting_dev = relay.create_device(), relay.create_device()
    holder, _ = await link(relay, holder_dev)
    sdk = Device(
        waiting_dev["pin"], waiting_dev["token"], lambda m: None, url=relay.url, backoff_base=0.05
    )
    task = asyncio.create_task(sdk.run())

    async def metrics() -> str:
        async with httpx.AsyncClient(headers=relay.admin_headers()) as http:
            return (await http.get(f"{relay.url}/metrics")).text

    async def refused() -> bool:
        lines = (await metrics()).splitlines()
        return any(x.startswith("pinrelay_links_refused_total ") for x in lines) and (
            "pinrelay_links_refused_total 0.0" not in lines
        )

    await wait_until_async(refused, 10.0, 0.05, "the SDK's link refused at capacity")
    # Proves a retry does NOT come within this window: Retry-After is 5 s, the SDK's
    # own back-off 50 ms.
    await asyncio.sleep(2.5)
    await sdk.stop()
    task.cancel()
    # Retry-After: 5 was honoured: one refusal in 2.5 s, not one per 50 ms back-off.
    assert "pinrelay_links_refused_total 1.0" in await metrics()
    await holder.close()


async def test_sdk_ignores_frame_types_it_does_not_know() -> None:
    """Forward compatibility (PROTOCOL "Evolution"), against a scripted peer."""
    port = free_port()

    async def peer(ws: ServerConnection) -> None:
        await ws.recv()  # hello
        await ws.send(json.dumps({"type": "hint-v9", "before": "welcome"}))
        await ws.send(
            json.dumps(
                {
                    "type": "welcome",
                    "session": "s",
                    "pin": "0A0B0C0D",
                    "cursor": 0,
                    "window": 8,
                    "heartbeat_s": 30,
                    "max_frame": 16384,
                    "node": "n",
                    "region": "r",
                    "version": "9.9",
                    "future_field": True,
                }
            )
        )
        await ws.send(json.dumps({"type": "receipt-v9", "whatever": [1, 2]}))
        await ws.send(
            json.dumps(
                {
                    "type": "msg",
                    "id": "01M8367V4GTQNAZ16WY4GNMH0X",
                    "cursor": 1,
                    "kind": "push",
                    "data": {"ok": True},
                    "topic": None,
                    "urgency": "normal",
                    "sent_at": "2026-11-23T03:12:21.648Z",
                    "expires_at": "2099-01-01T00:00:00.000Z",
                }
            )
        )
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()

    got: list[Message] = []
    async with serve(peer, "127.0.0.1", port):
        sdk = Device("0A0B0C0D", "t", got.append, link_urls=[f"ws://127.0.0.1:{port}/v1/link"])
        task = asyncio.create_task(sdk.run())
        await wait_until_async(lambda: got, 5.0, 0.05, "the msg after unknown frames")
        await sdk.stop()
        task.cancel()
    assert [m.data for m in got] == [{"ok": True}]


async def test_last_seen_is_written_soon_after_a_hello_and_after_a_close(
    relay: RelayProc,
) -> None:
    # Last-seen writes are coalesced and rate-limited (a reconnect storm must not
    # spend the store on them), but they still land within a moment.
    devices = [relay.create_device() for _ in range(3)]
    with relay.client() as c:
        assert all(c.show_device(d["pin"])["last_seen"] is None for d in devices)
    links = [(await link(relay, d))[0] for d in devices]

    async def seen() -> list[str | None]:
        with relay.client() as c:
            return [
                (await asyncio.to_thread(c.show_device, d["pin"]))["last_seen"] for d in devices
            ]

    async def all_seen() -> list[str | None] | None:
        now = await seen()
        return now if all(now) else None

    first = await wait_until_async(all_seen, 5.0, 0.05, "last_seen after the hellos")
    assert all(first), first
    await asyncio.sleep(0.01)  # so the closes' last_seen is a later millisecond
    for ws in links:
        await ws.close()

    def moved_on(later: list[str | None]) -> bool:
        # RFC 3339 in UTC with milliseconds: later instants sort later as strings.
        return all(b is not None and b > str(a) for a, b in zip(first, later, strict=True))

    async def seen_later() -> list[str | None] | None:
        now = await seen()
        return now if moved_on(now) else None

    later = await wait_until_async(
        seen_later, 5.0, 0.05, lambda: f"last_seen moved on after the closes (first {first})"
    )
    assert moved_on(later), (first, later)


async def test_wrong_hellos_from_one_source_do_not_lock_the_device_out(relay: RelayProc) -> None:
    """Issue 11, hole 6: ten wrong hellos from anywhere locked the right token out for
    60 s.  Failures count per source and per source + PIN, never per PIN alone."""
    device = relay.create_device()

    async def hello_from(source: str, token: str) -> tuple[str, int | None]:
        ws = await connect(
            relay.link_url, ping_interval=None, open_timeout=10, local_addr=(source, 0)
        )
        await send(ws, frames.Hello(pin=device["pin"], token=token))
        frame = await recv(ws)
        if isinstance(frame, frames.Welcome):
            await ws.close()
            return "welcome", None
        assert isinstance(frame, frames.Error), frame
        return frame.code, await closed_with(ws)

    wrong = [await hello_from("127.0.0.2", "guess") for _ in range(11)]
    assert wrong == [("unauthorized", 4401)] * 10 + [("rate_limited", 4429)]
    assert await hello_from("127.0.0.3", device["token"]) == ("welcome", None)
    # The attacker's source and PIN stay limited, even with the right token.
    assert await hello_from("127.0.0.2", device["token"]) == ("rate_limited", 4429)
    # Other PINs from that source still get an answer: its own limit is 100.
    other = relay.create_device()
    ws = await connect(relay.link_url, open_timeout=10, local_addr=("127.0.0.2", 0))
    await send(ws, frames.Hello(pin=other["pin"], token=other["token"]))
    assert isinstance(await recv(ws), frames.Welcome)
    await ws.close()


async def _run_until(device: Device, done: asyncio.Event) -> None:
    task = asyncio.create_task(device.run())
    try:
        await asyncio.wait_for(done.wait(), scaled(15))
    finally:
        await device.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), scaled(5))
        if not task.done():
            task.cancel()


def _push_backlog(relay: RelayProc, pin: str, n: int) -> None:
    with relay.client() as c:
        c.push_batch([{"to": pin, "data": {"n": i}, "ttl": 600} for i in range(n)])


async def _the_rest(relay: RelayProc, device: dict[str, Any], after: int, total: int) -> list[int]:
    """The cursors a fresh run of the device is handed: what was not acknowledged."""
    if after >= total:
        return []
    got: list[Message] = []
    done = asyncio.Event()

    def on_message(m: Message) -> None:
        got.append(m)
        if m.cursor >= total:
            done.set()

    await _run_until(Device(device["pin"], device["token"], on_message, url=relay.url), done)
    return [m.cursor for m in got]


@pytest.mark.shared_relay
@pytest.mark.parametrize("inbox", [False, True], ids=["link", "inbox"])
async def test_sdk_hands_over_nothing_after_stop(relay: RelayProc, inbox: bool) -> None:
    """`listen --count 1` printed a whole burst of backlog but acknowledged only the
    first message: the SDK kept handing over frames that were already buffered when
    stop() had closed the link, so they were shown, never acknowledged, and shown
    again by the next run (the tour of issue 14)."""
    device = relay.create_device()
    _push_backlog(relay, device["pin"], 40)
    got: list[Message] = []
    first = asyncio.Event()

    def on_message(m: Message) -> None:
        got.append(m)
        first.set()

    sdk = Device(device["pin"], device["token"], on_message, url=relay.url, inbox=inbox)
    await _run_until(sdk, first)
    handed = [m.cursor for m in got]
    assert handed == list(range(1, len(handed) + 1))
    # Everything handed over was acknowledged, and nothing else: a new run gets the rest.
    assert await _the_rest(relay, device, handed[-1], 40) == list(range(len(handed) + 1, 41))


@pytest.mark.shared_relay
@pytest.mark.parametrize("inbox", [False, True], ids=["link", "inbox"])
async def test_stop_receiving_from_the_callback_takes_exactly_n(
    relay: RelayProc, inbox: bool
) -> None:
    device = relay.create_device()
    _push_backlog(relay, device["pin"], 40)
    got: list[Message] = []
    enough = asyncio.Event()

    def on_message(m: Message) -> None:
        got.append(m)
        if len(got) == 3:
            sdk.stop_receiving()
            enough.set()

    sdk = Device(device["pin"], device["token"], on_message, url=relay.url, inbox=inbox)
    await _run_until(sdk, enough)
    assert [m.cursor for m in got] == [1, 2, 3]
    assert await _the_rest(relay, device, 3, 40) == list(range(4, 41))
