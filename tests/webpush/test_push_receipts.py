"""Push receipts (RFC 8030 §6): a push with ``Prefer: respond-async`` is answered 202
with a receipt subscription, whose long-poll reports the delivery once the device
acknowledged the message; durable across relay restarts and SIGKILLs."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from pywebpush import webpush

from tests.chat.conftest import Links
from tests.conftest import RelayFactory
from tests.relayproc import RelayProc
from tests.webpush.helpers import bearer, delete, next_webpush, subscribe

RECEIPT_REL = "urn:ietf:params:push:receipt"


def push_async(sub_info: dict[str, Any], text: str, **headers: str) -> tuple[str, str]:
    """(message resource, receipt subscription) of a respond-async push."""
    r = webpush(
        sub_info, text, ttl=3600, timeout=10, headers={"Prefer": "respond-async", **headers}
    )
    assert r.status_code == 202, r.text
    link = re.fullmatch(r'<([^>]+)>; rel="([^"]+)"', r.headers["Link"])
    assert link is not None and link.group(2) == RECEIPT_REL
    return r.headers["Location"], link.group(1)


async def poll(url: str, wait: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=wait + 10) as http:
        return await http.get(url, params={"wait": wait})


@pytest.mark.shared_relay
async def test_receipt_after_the_ack(relay: RelayProc, links: Links) -> None:
    device = relay.create_device()
    sub = subscribe(relay, device)
    location, receipt = push_async(sub.info, "tell me when")
    assert receipt.startswith(sub.info["endpoint"] + "/receipts/")
    pending = await poll(receipt, 0)
    assert pending.status_code == 204
    # A long-poll started before the device links is woken by its ack.
    waiting = asyncio.create_task(poll(receipt, 30))
    ws, _ = await links(relay, device)
    msg = await next_webpush(ws)
    assert sub.decrypt(msg) == b"tell me when"
    done = await asyncio.wait_for(waiting, 20)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "delivered" and done.json()["message"] == location
    # A push without respond-async is plain 201 with no receipt subscription.
    r = webpush(sub.info, "fire and forget", ttl=60, timeout=10)
    assert r.status_code == 201 and "Link" not in r.headers


@pytest.mark.shared_relay
async def test_receipt_over_the_inbox_ack(relay: RelayProc) -> None:
    device = relay.create_device()
    sub = subscribe(relay, device)
    _, receipt = push_async(sub.info, "via the inbox")
    async with httpx.AsyncClient(base_url=relay.url, timeout=10) as http:
        r = await http.get(f"/v1/devices/{device['pin']}/inbox", headers=bearer(device))
        cursor = r.json()["messages"][-1]["cursor"]
        r = await http.post(
            f"/v1/devices/{device['pin']}/ack", json={"cursor": cursor}, headers=bearer(device)
        )
        assert r.status_code == 204
    assert (await poll(receipt, 5)).status_code == 200


@pytest.mark.shared_relay
async def test_no_receipt_for_a_message_that_will_never_arrive(relay: RelayProc) -> None:
    device = relay.create_device()
    sub, other = subscribe(relay, device), subscribe(relay, device)
    location, receipt = push_async(sub.info, "withdrawn")
    assert delete(location) == 204
    assert (await poll(receipt, 0)).status_code == 404
    _, replaced = push_async(sub.info, "old", Topic="t")
    push_async(sub.info, "new", Topic="t")
    assert (await poll(replaced, 0)).status_code == 404
    _, kept = push_async(sub.info, "kept")
    # Another subscription's path, made-up ids: 404, problem+json.
    for url in (kept.replace(sub.info["id"], other.info["id"]), kept[:-3] + "999", kept + "x"):
        r = await poll(url, 0)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert (await poll(kept, 0)).status_code == 204


async def test_receipts_survive_restarts_and_sigkills(
    relay_factory: RelayFactory, links: Links
) -> None:
    relay = relay_factory()
    device = relay.create_device()
    sub = subscribe(relay, device)
    _, before = push_async(sub.info, "pushed before a restart")
    relay.stop()
    relay.start()
    ws, _ = await links(relay, device)
    assert sub.decrypt(await next_webpush(ws)) == b"pushed before a restart"
    assert (await poll(before, 10)).status_code == 200
    _, acked = push_async(sub.info, "acked before a SIGKILL")
    assert sub.decrypt(await next_webpush(ws)) == b"acked before a SIGKILL"
    assert (await poll(acked, 10)).status_code == 200
    relay.kill()
    relay.start()
    for receipt in (before, acked):
        r = await poll(receipt, 0)
        assert r.status_code == 200 and r.json()["state"] == "delivered"
