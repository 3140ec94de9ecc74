"""Web Push end to end from the SDK's side: a device subscribes through the SDK,
pywebpush (with py_vapid for VAPID) pushes to a real relay process, and the
application callback gets the plaintext once, in order (issue 14).

The relay's own checks of bad pushes are in tests/api; here only what the SDK and
an application see."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pywebpush
from py_vapid import Vapid

from pinrelay.cli_webpush import application_server_key
from pinrelay.client.device import Device, Message
from pinrelay.client.http import ApiError
from pinrelay.client.keys import FileKeyStore, KeyStore, MemoryKeyStore, SubscriptionKeys
from pinrelay.client.webpush import WebPushSubscription
from pinrelay.testing.wait import wait_until_async
from tests.client.test_webpush_open import MAX_PLAINTEXT
from tests.relayproc import RelayProc

# Every test makes devices and subscriptions of its own: one relay for the module
# (tests/conftest.py), as test_webpush_sdk_on_cluster.py has one on the cluster.
pytestmark = pytest.mark.shared_relay


class App:
    """An application on a Device: what its callback was handed."""

    def __init__(self, relay: RelayProc, dev: dict[str, Any], keys: KeyStore | None = None):
        self.got: list[Message] = []
        self.device = Device(
            dev["pin"],
            dev["token"],
            self.got.append,
            url=relay.url,
            keys=keys,
            backoff_base=0.05,
            backoff_max=0.5,
        )

    @property
    def webpush(self) -> list[Message]:
        return [m for m in self.got if m.kind == "webpush"]

    @property
    def payloads(self) -> list[bytes | None]:
        return [m.webpush.payload for m in self.webpush if m.webpush is not None]

    async def wait_for(self, n: int) -> None:
        await wait_until_async(
            lambda: len(self.webpush) >= n,
            timeout=15,
            message=lambda: f"{n} webpush messages, got {self.payloads}",
        )


@contextlib.asynccontextmanager
async def running(app: App) -> AsyncIterator[App]:
    task = asyncio.create_task(app.device.run())
    try:
        yield app
    finally:
        await app.device.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 5)
        if not task.done():
            task.cancel()


async def push(sub: WebPushSubscription, data: bytes | str, **kwargs: Any) -> Any:
    """pywebpush, as an application server calls it (in a thread: it is blocking)."""
    kwargs.setdefault("ttl", 600)
    return await asyncio.to_thread(pywebpush.webpush, sub.to_json(), data, **kwargs)


def backlog(relay: RelayProc, pin: str) -> int:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=10) as c:
        r = c.get(f"/v1/devices/{pin}")
    r.raise_for_status()
    count: int = r.json()["backlog"]
    return count


async def all_acked(relay: RelayProc, pin: str) -> None:
    """Until the device's backlog is 0: the relay stores a link's acks a moment after
    they arrive (batched; on the cluster, settled when the link ends)."""
    await wait_until_async(lambda: backlog(relay, pin) == 0, 10.0, 0.05, f"{pin}'s backlog is 0")


async def test_pywebpush_without_vapid_reaches_the_callback_once_in_order(
    relay: RelayProc,
) -> None:
    dev = relay.create_device()
    app = App(relay, dev)
    sub = await app.device.subscribe()
    assert sub.endpoint == f"{relay.url}/push/{sub.id}"
    assert sub.keys == app.device.webpush.keys.load(sub.id).public()  # type: ignore[union-attr]
    assert sub.application_server_key is None
    # Three while the device is offline, three while it listens.
    sent = [f"message {i} ✓".encode() for i in range(6)]
    for data in sent[:3]:
        response = await push(sub, data)
        assert response.status_code == 201
        assert response.headers["Location"].startswith(f"{relay.url}/push/{sub.id}/messages/")
    async with running(app):
        await app.wait_for(3)
        for data in sent[3:]:
            await push(sub, data)
        await app.wait_for(6)
    assert app.payloads == sent
    assert len({m.id for m in app.webpush}) == 6
    first = app.webpush[0]
    assert first.webpush is not None
    assert (first.webpush.subscription, first.webpush.urgency) == (sub.id, "normal")
    assert first.webpush.error is None and app.device.undecryptable == 0
    await all_acked(relay, dev["pin"])


async def test_urgency_and_topic_reach_the_application(relay: RelayProc) -> None:
    dev = relay.create_device()
    app = App(relay, dev)
    sub = await app.device.subscribe()
    await push(sub, "old news", headers={"Topic": "inbox", "Urgency": "low"})
    await push(sub, "news", headers={"Topic": "inbox", "Urgency": "high"})  # replaces it
    await push(sub, "other", headers={"Urgency": "very-low"})
    async with running(app):
        await app.wait_for(2)
        await push(sub, "last")
        await app.wait_for(3)
    seen = [
        (m.webpush.payload, m.webpush.topic, m.webpush.urgency) for m in app.webpush if m.webpush
    ]
    assert seen == [
        (b"news", "inbox", "high"),
        (b"other", None, "very-low"),
        (b"last", None, "normal"),
    ]


async def test_vapid_restricted_subscription(relay: RelayProc) -> None:
    dev = relay.create_device()
    app = App(relay, dev)
    vapid = Vapid()
    vapid.generate_keys()
    key = application_server_key(vapid)
    sub = await app.device.subscribe(application_server_key=key)
    assert sub.application_server_key == key
    claims = {"sub": "mailto:ops@example.com"}
    async with running(app):
        response = await push(sub, "signed", vapid_private_key=vapid, vapid_claims=claims)
        assert response.status_code == 201
        await app.wait_for(1)
        with pytest.raises(pywebpush.WebPushException) as unsigned:
            await push(sub, "unsigned")
        assert unsigned.value.response is not None
        assert unsigned.value.response.status_code == 401
        other = Vapid()
        other.generate_keys()
        with pytest.raises(pywebpush.WebPushException) as wrong:
            await push(sub, "wrong key", vapid_private_key=other, vapid_claims=dict(claims))
        assert wrong.value.response is not None
        assert wrong.value.response.status_code == 403
        await push(sub, "signed again", vapid_private_key=vapid, vapid_claims=dict(claims))
        await app.wait_for(2)
    assert app.payloads == [b"signed", b"signed again"]


async def test_an_unrestricted_subscription_takes_vapid_signed_pushes_too(
    relay: RelayProc,
) -> None:
    dev = relay.create_device()
    app = App(relay, dev)
    sub = await app.device.subscribe()
    vapid = Vapid()
    vapid.generate_keys()
    await push(sub, "signed", vapid_private_key=vapid, vapid_claims={"sub": "mailto:a@b.c"})
    async with running(app):
        await app.wait_for(1)
    assert app.payloads == [b"signed"]


async def test_the_largest_payload_passes_and_a_larger_one_is_refused(relay: RelayProc) -> None:
    dev = relay.create_device()
    app = App(relay, dev)
    sub = await app.device.subscribe()
    biggest = bytes(range(256)) * (MAX_PLAINTEXT // 256) + b"\xff" * (MAX_PLAINTEXT % 256)
    await push(sub, biggest)
    with pytest.raises(pywebpush.WebPushException) as too_big:
        await push(sub, biggest + b"!")
    assert too_big.value.response is not None and too_big.value.response.status_code == 413
    async with running(app):
        await app.wait_for(1)
    assert app.payloads == [biggest]


async def test_an_undecryptable_push_is_reported_and_does_not_block_the_next(
    relay: RelayProc, caplog: pytest.LogCaptureFixture
) -> None:
    dev = relay.create_device()
    app = App(relay, dev)
    lost, kept = await app.device.subscribe(), await app.device.subscribe()
    app.device.webpush.keys.forget(lost.id)  # as if the application lost that key
    await push(lost, "cannot be read")
    await push(kept, "can be read")
    with caplog.at_level("WARNING", logger="pinrelay.client.device"):
        async with running(app):
            await app.wait_for(2)
    bad, good = app.webpush
    assert bad.webpush is not None and good.webpush is not None
    assert (bad.webpush.subscription, bad.webpush.payload) == (lost.id, None)
    assert bad.webpush.error == f"no keys for subscription {lost.id} in this device's key store"
    assert good.webpush.payload == b"can be read"
    assert app.device.undecryptable == 1
    await all_acked(relay, dev["pin"])  # acknowledged, not redelivered forever
    assert any(bad.id in r.getMessage() for r in caplog.records)


async def test_keys_in_a_file_outlive_the_process(relay: RelayProc, tmp_path: Path) -> None:
    """Subscribe in one run of the application, receive in the next."""
    dev = relay.create_device()
    path = tmp_path / "keys.json"
    first = App(relay, dev, FileKeyStore(path))
    sub = await first.device.subscribe()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await push(sub, "for the next run")
    second = App(relay, dev, FileKeyStore(path))
    async with running(second):
        await second.wait_for(1)
    assert second.payloads == [b"for the next run"]


async def test_inbox_mode_decrypts_too(relay: RelayProc) -> None:
    dev = relay.create_device()
    got: list[Message] = []
    store = MemoryKeyStore()
    device = Device(dev["pin"], dev["token"], got.append, url=relay.url, inbox=True, keys=store)
    sub = await device.subscribe()
    await push(sub, "polled")
    task = asyncio.create_task(device.run())
    try:
        await wait_until_async(lambda: got, timeout=15, message="a message over the inbox")
    finally:
        await device.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [m] = got
    assert m.webpush is not None and m.webpush.payload == b"polled"


async def test_list_and_delete(relay: RelayProc) -> None:
    dev = relay.create_device()
    app = App(relay, dev)
    a = await app.device.webpush.subscribe()
    b = await app.device.subscribe()
    assert [s.id for s in await app.device.webpush.list()] == [a.id, b.id]
    await app.device.webpush.delete(a.id)
    assert app.device.webpush.keys.load(a.id) is None
    assert app.device.webpush.keys.load(b.id) is not None
    assert [s.id for s in await app.device.webpush.list()] == [b.id]
    with pytest.raises(pywebpush.WebPushException) as gone:
        await push(a, "too late")
    assert gone.value.response is not None and gone.value.response.status_code == 410
    with pytest.raises(ApiError) as missing:
        await app.device.webpush.delete(a.id)
    assert missing.value.status == 404


class BrokenStore(MemoryKeyStore):
    def save(self, subscription: str, keys: SubscriptionKeys) -> None:
        raise OSError("disk full")


async def test_a_subscription_whose_keys_cannot_be_kept_is_taken_back(relay: RelayProc) -> None:
    """Nobody could read what is pushed to it: subscribe deletes it and raises."""
    app = App(relay, relay.create_device(), BrokenStore())
    with pytest.raises(OSError, match="disk full"):
        await app.device.subscribe()
    assert await app.device.webpush.list() == []


async def test_a_receipt_says_delivered_only_once_the_application_had_it(
    relay: RelayProc,
) -> None:
    """RFC 8030 §6 receipts complete with the device's ack, which the SDK sends after
    the callback returned: "delivered" means the application saw the plaintext."""
    dev = relay.create_device()
    release = asyncio.Event()
    seen: list[bytes | None] = []

    async def slow_app(m: Message) -> None:
        if m.webpush is not None:
            seen.append(m.webpush.payload)
            await release.wait()

    device = Device(dev["pin"], dev["token"], slow_app, url=relay.url)
    sub = await device.subscribe()
    response = await push(sub, "tell me", headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    receipt = response.headers["Link"].split(">")[0].lstrip("<")
    async with httpx.AsyncClient(timeout=30) as http:
        task = asyncio.create_task(device.run())
        try:
            await wait_until_async(lambda: seen, timeout=15, message="the app got the push")
            assert seen == [b"tell me"]
            held = await http.get(receipt, params={"wait": 0})
            assert held.status_code == 204  # in the callback: not acknowledged yet
            release.set()
            done = await http.get(receipt, params={"wait": 20})
            assert done.status_code == 200, done.text
            assert done.json()["state"] == "delivered"
            assert done.json()["message"] == response.headers["Location"]
        finally:
            release.set()
            await device.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5)
            if not task.done():
                task.cancel()
