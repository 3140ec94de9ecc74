"""The feed (issue 12): pushes through every relay reach a link in cursor order, once.

Each relay follows every message stream and hands a linked device its new messages
as they arrive, with no read (docs/DECISIONS.md, entry 32).  The danger it must not
fall into is the one that kept hand-off off the cluster before: appends finishing
out of order, on one relay and across relays, so that a message handed over early
makes the link skip an earlier one for good.  Here pushers on both relays race,
single and batched, to devices linked (by raw links, so nothing de-duplicates for
us) to one relay and to the other; every device must get every accepted message
exactly once, in strictly increasing cursor order, each with the cursor its push was
answered with.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from pinrelay.core import frames
from pinrelay.testing.wait import wait_until_async
from tests.cluster.conftest import StartRelay
from tests.linkclient import link, recv, send
from tests.relayproc import RelayProc

DEVICES = 6
PUSHERS_PER_RELAY = 4
PUSHES_PER_PUSHER = 30


async def push_some(relay: RelayProc, pins: list[str], seed: int) -> list[tuple[str, str, int]]:
    """Singles and small batches through ``relay``: (pin, id, cursor) of each accepted."""
    rng = random.Random(seed)
    accepted: list[tuple[str, str, int]] = []
    headers = relay.admin_headers()
    async with httpx.AsyncClient(base_url=relay.url, headers=headers, timeout=30) as http:
        for n in range(PUSHES_PER_PUSHER):
            if rng.random() < 0.5:
                pin = rng.choice(pins)
                r = await http.post(
                    f"/v1/devices/{pin}/messages", json={"data": {"n": n}, "ttl": 600}
                )
                assert r.status_code == 201, r.text
                body = r.json()
                accepted.append((pin, body["id"], body["cursor"]))
            else:
                batch = [
                    {"to": rng.choice(pins), "data": {"n": n, "i": i}, "ttl": 600}
                    for i in range(rng.randint(2, 6))
                ]
                r = await http.post("/v1/messages", json={"messages": batch})
                assert r.status_code == 200, r.text
                for item, result in zip(batch, r.json()["results"], strict=True):
                    assert result["status"] == 201, result
                    accepted.append((str(item["to"]), result["id"], result["cursor"]))
    return accepted


async def receive(relay: RelayProc, device: dict[str, Any], out: list[frames.Msg]) -> None:
    """Link to ``relay``; ack each message as it comes; keep every msg frame."""
    ws, _ = await link(relay, device, window=1024)
    try:
        while True:
            frame = await recv(ws, timeout=60)
            if isinstance(frame, frames.Msg):
                out.append(frame)
                await send(ws, frames.Ack(cursor=frame.cursor))
    finally:
        await ws.close()


def test_racing_pushes_through_both_relays_arrive_in_cursor_order_once(
    start_relay: StartRelay,
) -> None:
    a, b = start_relay("feed-a"), start_relay("feed-b")
    devices = [a.create_device(f"d{i}") for i in range(DEVICES)]
    pins = [d["pin"] for d in devices]
    got: dict[str, list[frames.Msg]] = {pin: [] for pin in pins}

    async def run() -> list[tuple[str, str, int]]:
        # Half the devices linked to each relay.
        receivers = [
            asyncio.create_task(receive(a if i % 2 else b, d, got[d["pin"]]))
            for i, d in enumerate(devices)
        ]
        try:
            pushes = await asyncio.gather(
                *(
                    push_some(relay, pins, seed)
                    for seed, relay in enumerate([a, b] * PUSHERS_PER_RELAY)
                )
            )
            accepted = [item for batch in pushes for item in batch]
            await wait_until_async(
                lambda: sum(len(v) for v in got.values()) >= len(accepted),
                60,
                message=f"all {len(accepted)} accepted messages delivered",
            )
            return accepted
        finally:
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)

    accepted = asyncio.run(run())
    for pin in pins:
        expected = sorted((cursor, mid) for p, mid, cursor in accepted if p == pin)
        seen = [(m.cursor, m.id) for m in got[pin]]
        assert seen == expected, f"{pin}: got {len(seen)} of {len(expected)}, or out of order"
