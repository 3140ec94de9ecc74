"""Two SDK devices chat while their relay is SIGKILLed and restarted at random
moments (issue 13): each application sees every message once, in order; every
sent message ends ``delivered``, and ``read`` for those marked read (as they
arrive, while the kills go on); no state change is repeated.

The same scenario runs against a cluster in tests/chat/test_chat_cluster.py.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pinrelay.client.chat import Change, Outgoing
from pinrelay.client.device import Device, Message
from pinrelay.testing.wait import wait_until_async
from tests.chat.test_chat_link import befriend
from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR

#: Messages each way (the issue's 1,000; PINRELAY_CHAT_N to change it).
N = int(os.environ.get("PINRELAY_CHAT_N", "1000"))
#: Every READ_EVERY-th message received is marked read.
READ_EVERY = 10


@dataclass
class Side:
    name: str
    device: Device
    got: list[str] = field(default_factory=list)
    got_ids: dict[str, str] = field(default_factory=dict)
    handles: list[Outgoing] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)
    raw_receipts: list[tuple[str, str]] = field(default_factory=list)
    #: Every receipt message the link brought (each stored one once: the SDK drops a
    #: redelivered message by id), before the SDK drops repeated states.
    stored_receipts: list[tuple[str, str]] = field(default_factory=list)


def make_side(name: str, url: str, dev: dict[str, Any], link_urls: list[str] | None = None) -> Side:
    side: Side

    async def on_message(m: Message) -> None:
        if m.kind == "chat":
            side.got.append(m.data["text"])
            side.got_ids[m.data["text"]] = m.id
            if (len(side.got) - 1) % READ_EVERY == 0:
                await side.device.read(m.id)  # while the kills go on

    def on_receipt(message_id: str, state: str, _by: str | None) -> None:
        side.raw_receipts.append((message_id, state))

    device = Device(
        dev["pin"],
        dev["token"],
        on_message,
        url=url,
        link_urls=link_urls,
        backoff_base=0.05,
        backoff_max=0.5,
        on_receipt=on_receipt,
    )
    side = Side(name, device)
    hand_on = device._receipt

    def receipt(message: Message) -> None:
        side.stored_receipts.append((message.data["id"], message.data["state"]))
        hand_on(message)

    device._receipt = receipt  # type: ignore[method-assign]
    return side


async def run_pair(
    a: Side, b: Side, chaos: Callable[[], Coroutine[Any, Any, None]], n: int = N
) -> tuple[Side, Side]:
    """Both sides send ``n`` messages while ``chaos`` runs; then check everything."""
    runners = [asyncio.create_task(s.device.run()) for s in (a, b)]
    chaos_task = asyncio.create_task(chaos())

    def watch(side: Side, handle: Outgoing) -> None:
        def changed(h: Outgoing, change: Change) -> None:
            side.changes.setdefault(h.client_id, []).append(change.state)

        handle.on_change = changed

    try:

        async def sender(src: Side, dst: Side) -> None:
            for i in range(n):
                handle = await src.device.send(dst.device.pin, f"{src.name}-{i}")
                watch(src, handle)
                src.handles.append(handle)
                if i % 50 == 49:
                    await asyncio.sleep(0.2)  # spread over the kills (about 4 s)

        await asyncio.gather(sender(a, b), sender(b, a))
        expected = {side.name: [f"{side.name}-{i}" for i in range(n)] for side in (a, b)}

        def received() -> bool:
            return len(a.got) >= n and len(b.got) >= n

        await wait_until_async(received, 120 * TIMEOUT_FACTOR, 0.1, "every message received")
        chaos_task.cancel()
        for side, other in ((a, b), (b, a)):
            assert side.got == expected[other.name]  # once each, in send order

        def settled() -> bool:
            for side in (a, b):
                for i, h in enumerate(side.handles):
                    want = "read" if i % READ_EVERY == 0 else "delivered"
                    if h.state != want:
                        return False
            return True

        def states() -> str:
            counts = {
                side.name: Counter(
                    (i % READ_EVERY == 0, h.state) for i, h in enumerate(side.handles)
                )
                for side in (a, b)
            }
            return f"every receipt; (marked read, state) counts: {counts}"

        await wait_until_async(settled, 60 * TIMEOUT_FACTOR, 0.1, states)
        for side in (a, b):
            for i, h in enumerate(side.handles):
                want = ["sent", "delivered"] + (["read"] if i % READ_EVERY == 0 else [])
                assert side.changes[h.client_id] == want, (side.name, i, h)
    finally:
        chaos_task.cancel()
        for s in (a, b):
            await s.device.stop()
        for t in runners:
            t.cancel()
        await asyncio.gather(*runners, chaos_task, return_exceptions=True)
    return a, b


async def test_chat_through_sigkills_sqlite(relay_factory: RelayFactory) -> None:
    relay = relay_factory(extra=["--sends-per-minute", "1000000"])
    da, db = relay.create_device(), relay.create_device()
    befriend(relay, da, db)
    rng = random.Random()
    kills = 0

    async def chaos() -> None:
        nonlocal kills
        while True:
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            relay.kill()
            kills += 1
            await asyncio.to_thread(relay.start)

    a = make_side("a", relay.url, da)
    b = make_side("b", relay.url, db)
    await run_pair(a, b, chaos)
    assert kills >= 2
    print(
        f"{kills} kills; stored receipts a={len(a.stored_receipts)} b={len(b.stored_receipts)}"
        f" (expected {N + N // READ_EVERY} each)"
    )
    # SQLite stores a receipt with the ack (or the read) that caused it, in one
    # transaction: none is stored twice, whenever the kills came.
    for side in (a, b):
        repeated = {k: n for k, n in Counter(side.stored_receipts).items() if n > 1}
        assert not repeated, (side.name, repeated)
        assert len(side.stored_receipts) == N + N // READ_EVERY
