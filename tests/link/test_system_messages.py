"""System messages (PROTOCOL "System messages", link/system.py) on a real relay on
SQLite; the cluster test is in test_system_messages_on_cluster.py.

Linked devices a tenant-scoped incident affects hear it opened, updated and
resolved; others hear nothing.  Updates are held back to one per
``--incident-notify-every``, the newest text going out when the interval allows.
A device that links during an incident hears it after ``welcome`` and before its
backlog.  The SDK hands it to ``on_system`` and never acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.frames import Frame, Opcode

from pinrelay.client.device import Device, Message, SystemMessage
from pinrelay.core import frames
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.wait import wait_until_async
from tests.api.test_incidents import _ok, open_incident
from tests.api.test_tenants import Tenant
from tests.conftest import RelayFactory
from tests.link.test_backpressure import hello, pings
from tests.linkclient import RawLink, link, send
from tests.relayproc import TIMEOUT_FACTOR, RelayProc
from tests.test_cli import run

MSG_FIELDS = {
    "type",
    "id",
    "cursor",
    "kind",
    "data",
    "topic",
    "urgency",
    "sent_at",
    "expires_at",
    "from",
}


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


async def api(
    http: httpx.Client, method: str, path: str, body: Any = None, status: int = 200
) -> Any:
    """One request, off the event loop (the links' frames are read meanwhile)."""
    return _ok(await asyncio.to_thread(http.request, method, path, json=body), status)


async def next_frames(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every frame until a ``pong`` answers the ping sent now: what the relay wrote
    to the link before it read the ping."""
    await send(ws, frames.Ping())
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout * TIMEOUT_FACTOR):
        while True:
            raw = await ws.recv()
            frame = json.loads(raw)
            if frame["type"] == "pong":
                return got
            # Each frame is one the SDK's decoder takes (stored or system).
            frames.decode_server_any(raw)
            got.append(frame)


async def system_until(
    ws: ClientConnection, count: int, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Read frames until ``count`` system messages came; those."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout * TIMEOUT_FACTOR):
        while len(got) < count:
            frame = json.loads(await ws.recv())
            if frame["type"] == "msg" and frame["kind"] == "system":
                got.append(frame)
    return got


async def take(ws: ClientConnection, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` frames."""
    async with asyncio.timeout(timeout * TIMEOUT_FACTOR):
        return [json.loads(await ws.recv()) for _ in range(count)]


def check_system(frame: dict[str, Any], incident: dict[str, Any], event: str, text: str) -> None:
    assert set(frame) == MSG_FIELDS, frame
    assert frame["type"] == "msg" and frame["kind"] == "system"
    assert frame["cursor"] is None and frame["topic"] is None and frame["from"] is None
    assert frame["urgency"] == "high"
    data = frame["data"]
    assert data["incident"] == incident["id"]
    assert data["event"] == event and data["text"] == text
    assert data["component"] == incident["component"]
    assert frame["id"].startswith(incident["id"] + ".")
    sent = parse_rfc3339(frame["sent_at"])
    assert parse_rfc3339(frame["expires_at"]) - sent == 86_400_000


async def test_affected_devices_hear_open_update_resolve_and_others_nothing(
    relay: RelayProc, admin: httpx.Client
) -> None:
    one, two = Tenant(admin, "one"), Tenant(admin, "two")
    a, b, plain = one.device(), two.device(), relay.create_device()
    ws_a, _ = await link(relay, a)
    ws_b, _ = await link(relay, b)
    ws_p, _ = await link(relay, plain)
    try:
        await _open_update_resolve(admin, one, ws_a, ws_b, ws_p)
    finally:
        for ws in (ws_a, ws_b, ws_p):
            await ws.close()


async def _open_update_resolve(
    admin: httpx.Client,
    one: Tenant,
    ws_a: ClientConnection,
    ws_b: ClientConnection,
    ws_p: ClientConnection,
) -> None:
    # A tenant's incident: its devices only.  The relay tells its links before it
    # answers the request: the frames are on their way when the 201 comes.
    mine = open_incident(admin, component="delivery", severity="major", tenants=[one.id])
    [opened] = await system_until(ws_a, 1)
    check_system(opened, mine, "opened", "Writes fail")
    assert opened["id"] == f"{mine['id']}.1"
    assert opened["sent_at"] == mine["updates"][0]["at"]
    assert await next_frames(ws_b) == [] and await next_frames(ws_p) == []
    # An update (the first since the open is held back by the default 300 s)...
    await api(admin, "POST", f"/v1/incidents/{mine['id']}/updates", {"text": "Fixing"}, 201)
    assert await next_frames(ws_a) == []
    # ...and the resolve, which always goes out at once, with its text.
    await api(admin, "POST", f"/v1/incidents/{mine['id']}/resolve", {"text": "Fixed"})
    [resolved] = await system_until(ws_a, 1)
    check_system(resolved, mine, "resolved", "Fixed")
    assert resolved["id"] == f"{mine['id']}.4"  # 3 entries, and resolved
    assert await next_frames(ws_b) == [] and await next_frames(ws_p) == []
    # The incident's report lists what this relay told its devices, and when.
    report = await api(admin, "GET", f"/v1/incidents/{mine['id']}/report")
    devices = [n for n in report["notifications"] if n["channel"] == "devices"]
    assert [(n["event"], n["count"], n["text"]) for n in devices] == [
        ("opened", 1, "Writes fail"),
        ("resolved", 1, "Fixed"),
    ]
    assert [n["event"] for n in report["notifications"] if n["channel"] == "status"] == [
        "opened",
        "updated",
        "resolved",
    ]
    # Everyone's incident: every device, with or without a tenant.
    public = open_incident(admin, component="links", severity="minor", text="Links drop")
    for ws in (ws_a, ws_b, ws_p):
        [frame] = await system_until(ws, 1)
        check_system(frame, public, "opened", "Links drop")
    await api(admin, "POST", f"/v1/incidents/{public['id']}/resolve")  # no text
    for ws in (ws_a, ws_b, ws_p):
        [frame] = await system_until(ws, 1)
        check_system(frame, public, "resolved", "Resolved.")
    # An incident of another region than the relay's ("local"): nobody here.
    open_incident(admin, region="eu-west")
    for ws in (ws_a, ws_b, ws_p):
        assert await next_frames(ws) == []
    # One of the relay's own region: everyone linked here.
    here = open_incident(admin, region="local", text="Here")
    for ws in (ws_a, ws_b, ws_p):
        [frame] = await system_until(ws, 1)
        check_system(frame, here, "opened", "Here")


async def test_updates_are_held_back_to_one_per_interval(relay_factory: RelayFactory) -> None:
    relay = relay_factory(extra=["--incident-notify-every", "2"])
    device = relay.create_device()
    ws, _ = await link(relay, device)
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        # The interval starts when the relay sends "opened": after asking_at, and
        # before opened_at (which a stalled test reads late).
        asking_at = time.monotonic()
        made = open_incident(admin)
        [opened] = await system_until(ws, 1)
        opened_at = time.monotonic()
        check_system(opened, made, "opened", "Writes fail")
        updates = f"/v1/incidents/{made['id']}/updates"
        for text in ("first", "second", "third"):
            await api(admin, "POST", updates, {"text": text}, 201)
        assert await next_frames(ws) == []  # inside the interval: held back
        # When the interval allows, the newest text, once.
        [held] = await system_until(ws, 1, timeout=10)
        assert time.monotonic() - asking_at >= 1.5
        check_system(held, made, "updated", "third")
        assert held["id"] == f"{made['id']}.4"
        # Resolved at once, though within the interval.
        await api(admin, "POST", updates, {"text": "fourth"}, 201)
        await api(admin, "POST", f"/v1/incidents/{made['id']}/resolve", {"text": "Done"})
        [resolved] = await system_until(ws, 1)
        assert time.monotonic() - opened_at < 4 * TIMEOUT_FACTOR
        check_system(resolved, made, "resolved", "Done")
        # The held-back "fourth" is not sent after the resolve.
        assert await next_frames(ws) == []
        # An update after the interval goes out at once.
        other = open_incident(admin, text="Again")
        await system_until(ws, 1)
        await asyncio.sleep(2.1)  # the interval, on purpose: nothing to poll for
        await api(admin, "POST", f"/v1/incidents/{other['id']}/updates", {"text": "now"}, 201)
        [now] = await system_until(ws, 1)
        check_system(now, other, "updated", "now")
    await ws.close()


async def test_a_device_that_links_hears_incidents_before_its_backlog(
    relay: RelayProc, admin: httpx.Client
) -> None:
    device = relay.create_device()
    with relay.client() as c:
        for n in range(3):
            c.push(device["pin"], {"n": n}, ttl=600)
    gone = open_incident(admin, component="links", text="Was down")
    await api(admin, "POST", f"/v1/incidents/{gone['id']}/resolve", {"text": "Back"})
    made = open_incident(admin, text="Down now")
    await api(admin, "POST", f"/v1/incidents/{made['id']}/updates", {"text": "Still"}, 201)
    ws, _ = await link(relay, device)
    got = await take(ws, 5)
    kinds = [(f["kind"], f["cursor"]) for f in got]
    # The incidents, each at its newest revision; then the stored messages.
    assert kinds == [("system", None), ("system", None), ("push", 1), ("push", 2), ("push", 3)]
    news = {f["data"]["incident"]: f for f in got[:2]}
    check_system(news[gone["id"]], gone, "resolved", "Back")
    check_system(news[made["id"]], made, "updated", "Still")
    assert news[made["id"]]["id"] == f"{made['id']}.2"
    # A system message takes no window slot and an ack covers the stored ones only;
    # a client that acks one by its null cursor is not failed, and changes nothing.
    await send(ws, {"type": "ack", "cursor": None})
    await send(ws, frames.Ack(cursor=3))
    assert await next_frames(ws) == []
    await ws.close()
    shown = await api(admin, "GET", f"/v1/devices/{device['pin']}")
    assert shown["acked_cursor"] in (0, 3)  # written within ACK_DELAY_S


async def test_the_sdk_hands_system_messages_over_once_and_never_acks_them(
    relay: RelayProc, admin: httpx.Client
) -> None:
    device = relay.create_device()
    with relay.client() as c:
        for n in range(2):
            c.push(device["pin"], {"n": n}, ttl=600)
    made = open_incident(admin, text="Slow")
    seen: list[Message | SystemMessage] = []

    async def on_system(m: SystemMessage) -> None:
        seen.append(m)

    sdk = Device(
        device["pin"],
        device["token"],
        seen.append,
        url=relay.url,
        link_urls=[relay.link_url],
        on_system=on_system,
    )
    task = asyncio.create_task(sdk.run())
    try:
        await wait_until_async(lambda: len(seen) >= 3, timeout=10)
        first = seen[0]
        assert isinstance(first, SystemMessage)
        assert (first.incident, first.event, first.text) == (made["id"], "opened", "Slow")
        assert first.id == f"{made['id']}.1" and first.urgency == "high"
        assert [m.cursor for m in seen[1:] if isinstance(m, Message)] == [1, 2]
        await api(admin, "POST", f"/v1/incidents/{made['id']}/resolve", {"text": "Fast"})
        await wait_until_async(lambda: len(seen) >= 4, timeout=10)
        last = seen[3]
        assert isinstance(last, SystemMessage) and (last.event, last.text) == ("resolved", "Fast")
        assert sdk.cursor == 2 and sdk.links_opened == 1
    finally:
        await sdk.stop()
        await task
    # stop() acked what was handed over: the stored messages; the relay took the ack.

    async def acked() -> bool:
        shown = await api(admin, "GET", f"/v1/devices/{device['pin']}")
        return bool(shown["acked_cursor"] == 2)

    await wait_until_async(acked, timeout=10)
    # Linked again: the resolved incident (in the last hour) comes again with the
    # same id, and the SDK drops it.
    again = Device(
        device["pin"],
        device["token"],
        seen.append,
        url=relay.url,
        link_urls=[relay.link_url],
        cursor=sdk.cursor,
        on_system=on_system,
    )
    again._seen = sdk._seen  # the same application, its memory of ids kept
    task = asyncio.create_task(again.run())
    try:
        await wait_until_async(lambda: again.duplicates >= 1, timeout=10)
        assert len(seen) == 4
    finally:
        await again.stop()
        await task


async def test_the_inbox_answers_with_the_news_first(relay: RelayProc, admin: httpx.Client) -> None:
    one, two = Tenant(admin, "one"), Tenant(admin, "two")
    a, b = one.device(), two.device()
    made = open_incident(admin, tenants=[one.id], text="Slow inbox")

    async def inbox(device: dict[str, Any]) -> Any:
        auth = {"Authorization": f"Bearer {device['token']}"}
        url = f"{relay.url}/v1/devices/{device['pin']}/inbox"
        async with httpx.AsyncClient(timeout=30) as http:
            return _ok(await http.get(url, headers=auth))

    answer = await inbox(a)
    assert list(answer) == ["system", "messages", "cursor"]
    [news] = answer["system"]
    check_system(news, made, "opened", "Slow inbox")
    assert answer["messages"] == [] and answer["cursor"] == 0
    assert (await inbox(b))["system"] == []
    # The SDK polling the inbox hands it over once, however many answers hold it.
    seen: list[Message | SystemMessage] = []

    def has(count: int) -> bool:
        return len(seen) >= count

    sdk = Device(
        a["pin"], a["token"], seen.append, url=relay.url, inbox=True, on_system=seen.append
    )
    task = asyncio.create_task(sdk.run())
    try:
        await wait_until_async(lambda: len(seen) >= 1, timeout=10)
        path = f"/v1/devices/{a['pin']}/messages"
        with one.client("push") as push:
            for n in range(2):
                await api(push, "POST", path, {"data": n, "ttl": 600}, 201)
                await wait_until_async(partial(has, n + 2), timeout=10)
        assert isinstance(seen[0], SystemMessage) and seen[0].incident == made["id"]
        assert [m.cursor for m in seen[1:] if isinstance(m, Message)] == [1, 2]
        assert sdk.duplicates >= 2 and sdk.cursor == 2
    finally:
        await sdk.stop()
        task.cancel()  # a long poll in progress ends with its wait (up to 25 s)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_listen_shows_the_news_before_the_messages(relay: RelayProc, admin: httpx.Client) -> None:
    device = relay.create_device()
    with relay.client() as c:
        c.push(device["pin"], {"a": 1}, ttl=600)
    made = open_incident(admin, text="Late <b>today</b>")
    creds = ("--pin", device["pin"], "--token", device["token"], "--count", "1")
    r = run("listen", *creds, "--json", url=relay.url)
    assert r.returncode == 0, r.stderr
    news, msg = (json.loads(line) for line in r.stdout.splitlines())
    assert (news["id"], news["cursor"], news["kind"]) == (f"{made['id']}.1", None, "system")
    assert news["data"]["text"] == "Late <b>today</b>" and msg["cursor"] == 1
    with relay.client() as c:
        c.push(device["pin"], {"a": 2}, ttl=600)
    r = run("listen", *creds, url=relay.url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and f"incident {made['id']} opened Late <b>today</b>" in lines[0]
    assert "#2" in lines[1]


def test_a_link_that_does_not_read_gets_the_news_once_it_drains(
    relay: RelayProc, admin: httpx.Client
) -> None:
    """Rule 5: a link whose outgoing buffer is full is not written to (nothing is
    queued for it); once it reads again it gets the incidents then current."""
    device = relay.create_device()
    raw = RawLink(relay)
    try:
        raw.sock.sendall(hello(device))
        sock = raw.sock
        sock.setblocking(False)
        # Pings, never reading: the pongs fill the relay's buffer; it stops reading.
        chunk = pings(500)
        rest = b""  # what is left of the chunk being sent (sent whole, later)
        blocked_since: float | None = None
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while blocked_since is None or time.monotonic() - blocked_since < 0.5:
            assert time.monotonic() < deadline, "the relay kept reading"
            try:
                rest = (rest or chunk)[sock.send(rest or chunk) :]
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                select.select([], [sock], [], 0.05)
        made = open_incident(admin, text="While you were away")  # the relay is paused
        # Read again (and finish the chunk in progress): the buffer drains.
        texts: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while not any(t.get("kind") == "system" for t in texts):
            assert time.monotonic() < deadline, texts
            if rest:
                with contextlib.suppress(BlockingIOError):
                    rest = rest[sock.send(rest) :]
            select.select([sock], [], [], 0.1)
            try:
                data = sock.recv(256 * 1024)
            except BlockingIOError:
                continue
            assert data, "the relay closed the link"
            raw.proto.receive_data(data)
            for event in raw.proto.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    texts.append(json.loads(bytes(event.data)))
        assert texts[0]["type"] == "welcome"
        [news] = [t for t in texts if t.get("kind") == "system"]
        check_system(news, made, "opened", "While you were away")
    finally:
        raw.close()
