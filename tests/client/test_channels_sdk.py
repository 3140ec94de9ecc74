"""Broadcasts from the SDK's side (issue 15): a device joins a channel through
``device.channels``, a broadcast arrives as a message whose ``broadcast`` names the
channel and the tenant's value, and the unsubscribe action it carries works: the
next broadcast does not come."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from pinrelay.client.device import Device, Message
from pinrelay.client.http import ApiError
from pinrelay.testing.wait import wait_until_async
from tests.api.test_tenants import Tenant
from tests.relayproc import RelayProc

pytestmark = pytest.mark.shared_relay


async def test_join_receive_and_unsubscribe(relay: RelayProc) -> None:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        t = Tenant(admin, "sdk")
        dev = t.device()
    async with httpx.AsyncClient(base_url=relay.url, timeout=30) as http:
        headers = {"Authorization": f"Bearer {t.keys['broadcast']}"}
        made = await http.post(
            "/v1/channels", json={"name": "goals", "class": "service"}, headers=headers
        )
        channel = made.json()["id"]

        async def broadcast(n: int) -> str:
            r = await http.post(
                f"/v1/channels/{channel}/messages",
                json={"data": {"n": n}, "ttl": 60},
                headers=headers,
            )
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        got: list[Message] = []
        device = Device(dev["pin"], dev["token"], got.append, url=relay.url, backoff_base=0.05)
        listed = await device.channels.join(channel)
        assert [(c.id, c.joined) for c in listed.channels] == [(channel, True)]
        await device.channels.refuse("marketing")
        assert await device.channels.refusals() == ["marketing"]
        with pytest.raises(ApiError) as nowhere:
            await device.channels.join("C000000000000")
        assert nowhere.value.status == 404

        task = asyncio.create_task(device.run())
        try:
            first = await broadcast(1)
            await wait_until_async(lambda: len(got) >= 1, timeout=15, message="the broadcast")
            (message,) = got
            info = message.broadcast
            assert message.id == first and info is not None
            assert (info.channel, info.name, info.klass, info.data) == (
                channel,
                "goals",
                "service",
                {"n": 1},
            )
            await device.channels.unsubscribe(message)
            assert (await device.channels.list()).channels[0].joined is False

            second = await broadcast(2)

            async def done() -> bool:
                r = await http.get(f"/v1/broadcasts/{second}", headers=headers)
                return bool(r.json()["done_at"])

            await wait_until_async(done, timeout=15, message="the second fan-out to end")
            # The device's backlog is empty: the second broadcast went to nobody.
            inbox = await http.get(
                f"/v1/devices/{dev['pin']}/inbox",
                headers={"Authorization": f"Bearer {dev['token']}"},
            )
            assert [m["id"] for m in inbox.json()["messages"] if m["id"] == second] == []
            assert [m.id for m in got] == [first]
        finally:
            await device.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5)
            if not task.done():
                task.cancel()
