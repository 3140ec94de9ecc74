"""How delivered receipts reach the store: few commits on the round trip.

A chat round trip waits for the commits of the message and of its delivered receipt
(bench/RESULTS.md, "Chat round trip"), so the receipt and its unread entry go in one
write, and acks that queue up while receipts are being stored are settled by
one write, not one each.  Real SQLite stores; no relay process needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from pinrelay.chat import Chat
from pinrelay.core.chat import Delivered, chat_data
from pinrelay.core.model import Accepted, Limits, StoredMessage
from pinrelay.delivery import AckWriter, Delivery
from pinrelay.ingest import Ingest
from pinrelay.metrics import Metrics
from pinrelay.router.local import LocalRouter
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until_async

SENDER, READER = "0B0B0B01", "0B0B0B02"
NOW = 1_700_000_000.0
FAR_MS = int(NOW * 1000) + 365 * 24 * 3_600_000


class Groups:
    """The writes of each group commit the store made, in order."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, seconds: float, writes: int) -> None:
        self.sizes.append(writes)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, Groups]]:
    groups = Groups()
    s = SqliteStore(tmp_path / "pinrelay.db", observer=groups)
    await s.open()
    try:
        for pin in (SENDER, READER):
            await s.create_device(pin, "h", None, int(NOW * 1000))
        yield s, groups
    finally:
        await s.close()


def chat_service(store: SqliteStore) -> Chat:
    ingest = Ingest(store, LocalRouter(), lambda: NOW, Limits(), Metrics())
    return Chat(ingest, lambda: NOW)


def chat_message(n: int) -> StoredMessage:
    return StoredMessage(
        READER,
        f"01CHAT{n:04d}",
        chat_data(f"text {n}"),
        None,
        "normal",
        int(NOW * 1000),
        FAR_MS,
        kind="chat",
        sender=SENDER,
        cursor=n,
    )


async def test_a_receipt_and_its_unread_entry_are_one_commit(
    store: tuple[SqliteStore, Groups],
) -> None:
    s, groups = store
    chat = chat_service(s)
    chats = [Delivered(f"01CHAT{n:04d}", SENDER, None, n) for n in (1, 2)]
    before = len(groups.sizes)
    await chat.delivered(READER, chats)
    # One write (the receipts' append carries the unread entries), so one commit: one
    # fsync on the round trip instead of two in series.
    assert groups.sizes[before:] == [1]
    receipts = await s.read(SENDER, 0, 10, int(NOW * 1000))
    assert [(m.kind, m.sender) for m in receipts] == [("receipt", READER)] * 2
    unread = await s.find_unread(READER, [c.id for c in chats], int(NOW * 1000))
    assert sorted(u.id for u in unread) == [c.id for c in chats]


async def test_acks_waiting_for_receipts_are_settled_by_one_write(
    store: tuple[SqliteStore, Groups],
) -> None:
    s, _ = store
    calls: list[list[str]] = []
    first_call = asyncio.Event()
    release = asyncio.Event()

    async def on_acked(reader: str, chats: Sequence[Delivered]) -> None:
        calls.append([c.id for c in chats])
        first_call.set()
        await release.wait()  # a slow commit: the next acks queue up meanwhile

    acks = AckWriter(s, delay=0.0)
    sent: list[int] = []
    delivery = Delivery(
        s,
        READER,
        acked=0,
        window=16,
        send=lambda batch: sent.extend(m.cursor for m in batch),
        clock=lambda: NOW,
        metrics=Metrics(),
        acks=acks,
        on_acked=on_acked,
    )
    results, _ = await s.append([chat_message(n) for n in range(1, 5)])
    assert [r.cursor for r in results if isinstance(r, Accepted)] == [1, 2, 3, 4]
    delivery.wake()
    await wait_until_async(lambda: sent == [1, 2, 3, 4], 5.0, 0.01, "the chats delivered")
    delivery.ack(1)
    await asyncio.wait_for(first_call.wait(), 5.0)
    for cursor in (2, 3, 4):
        delivery.ack(cursor)
    release.set()
    await asyncio.wait_for(delivery.settled(), 5.0)
    assert calls == [["01CHAT0001"], ["01CHAT0002", "01CHAT0003", "01CHAT0004"]]

    async def all_acked() -> bool:
        device = await s.get_device(READER)
        return device is not None and device.acked_cursor == 4

    await wait_until_async(all_acked, 5.0, 0.01, "the last ack stored after its receipts")
    await acks.flush()
