"""Failed receipts on the cluster through relay kills (store/jetstream/expiry.py).

Two relays share the cluster and its expiry consumer.  A sends 20 chats with ttls of
2-4 s: 10 to B, whose link acknowledges them at once, and 10 to C, which never
links.  Each relay is SIGKILLed and restarted while the chats expire (a relay may
die holding notices, or between storing a receipt and acknowledging its notice).
Then A reads its backlog: exactly one ``failed`` per chat to C, none for B's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import msgspec
import nats as nats_client

from pinrelay.core import frames
from pinrelay.store.jetstream.expiry import CONSUMER
from pinrelay.testing.wait import TIMEOUT_FACTOR
from tests.chat.conftest import Links
from tests.chat.test_chat_link import answer, befriend, chat_send
from tests.cluster.conftest import StartRelay
from tests.linkclient import recv, send
from tests.natsproc import NatsCluster

#: The relays' default stream (all relays of this module share it).
STREAM = "PINRELAY"


async def notices_settled(nats_cluster: NatsCluster) -> bool:
    """Every expiry notice so far was handed out and acknowledged."""
    nc = await nats_client.connect(nats_cluster.urls)
    try:
        info = await nc.jetstream().consumer_info(STREAM, CONSUMER)
        return not (info.num_pending or info.num_ack_pending)
    finally:
        await nc.close()


async def test_one_failed_receipt_per_expired_chat_through_relay_kills(
    start_relay: StartRelay, links: Links, nats: NatsCluster
) -> None:
    fast = ["--sends-per-minute", "1000000"]
    r1, r2 = start_relay("n1", extra=fast), start_relay("n2", extra=fast)
    a, b, c = r1.create_device(), r1.create_device(), r1.create_device()
    befriend(r1, a, b)
    befriend(r1, a, c)
    ws_a, _ = await links(r1, a)
    ws_b, _ = await links(r2, b)
    rng = random.Random()
    sent: dict[str, str] = {}  # chat id -> recipient PIN
    t0 = time.monotonic()
    for i in range(20):
        to = (b if i % 2 == 0 else c)["pin"]
        await send(ws_a, chat_send(to, f"chat {i}", f"x{i}", ttl=2 + i % 3))
        got = await answer(ws_a)
        assert isinstance(got, frames.Sent), got
        sent[got.id] = to
    last_send = time.monotonic()
    await ws_a.close()  # A reads its receipts at the end
    chats_b = {i for i, to in sent.items() if to == b["pin"]}
    seen: set[str] = set()
    while seen != chats_b:  # B acknowledges each chat at once (contact notices too)
        frame = await recv(ws_b)
        if isinstance(frame, frames.Msg):
            if frame.kind == "chat":
                seen.add(frame.id)
            await send(ws_b, frames.Ack(cursor=frame.cursor))
    # Before the first of them expired (reads stop handing a chat out at its expiry).
    # The shortest ttl is 2 s, not 1: the 20 sends and B's acks through the cluster
    # must fit in it, and 1 s left a loaded host little room.
    assert time.monotonic() - t0 < 2.0, "B got its chats too late for this test"

    # The schedules fire 1 s after each expiry: 3-5 s after the sends.
    for relay, at in ((r1, rng.uniform(2.8, 4.0)), (r2, rng.uniform(4.0, 5.2))):
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        relay.kill()
        await asyncio.to_thread(relay.start)

    # Every notice handed out and acknowledged (a killed relay's come again to the
    # other after expiry.ACK_WAIT_S, and an unfinished receipt's lease is taken over).
    # The last schedule fires by 5 s (4 s ttl, 1 s grace) after the last send, on a
    # whole second.
    deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
    while not (time.monotonic() > last_send + 6 and await notices_settled(nats)):
        assert time.monotonic() < deadline, "expiry notices still pending"
        await asyncio.sleep(0.2)

    ws_a, _ = await links(r1, a)
    receipts: Counter[tuple[str, str]] = Counter()
    while True:
        try:
            frame = await recv(ws_a, timeout=1.5)
        except TimeoutError:
            break
        if isinstance(frame, frames.Msg):
            if frame.kind == "receipt":
                data = msgspec.json.decode(frame.data)
                receipts[data["id"], data["state"]] += 1
            await send(ws_a, frames.Ack(cursor=frame.cursor))
    for chat_id, to in sent.items():
        if to == c["pin"]:
            assert receipts[chat_id, "failed"] == 1, (chat_id, receipts)
            assert receipts[chat_id, "delivered"] == 0
        else:
            assert receipts[chat_id, "failed"] == 0, (chat_id, receipts)
            assert receipts[chat_id, "delivered"] >= 1  # a crash may repeat it
