"""The sender (webhooks.py) when the store cannot be reached (PROTOCOL "Webhooks",
rule 4 of the sender): over a real SQLite store that is closed meanwhile, an event
the board hears is kept in memory and delivered to a local receiver all the same,
retried until answered; once the store is open again it is written to the outbox,
marked done, so no relay sends it again."""

from __future__ import annotations

import time
from pathlib import Path

from pinrelay.core.incidents import open_incident
from pinrelay.core.webhooks import Webhook, delivery_id, entry_for
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until_async
from pinrelay.webhooks import WebhookSender
from tests.webhooks.receiver import receiving

SECRET = "s" * 24


async def test_an_event_heard_while_the_store_is_away_is_delivered_and_kept(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    with receiving() as receiver:
        hook = Webhook(id="W000000000001", tenant=None, url=receiver.url, secret=SECRET)
        await store.put_webhook(hook, 20)
        sender = WebhookSender(
            store, time.time, "me", retry_base_s=0.05, retry_cap_s=0.2, lease_s=1.0, poll_s=0.1
        )
        sender.start()
        try:
            await wait_until_async(lambda: "W000000000001" in sender.working, 5)
            await store.close()  # away: every call raises
            receiver.status = 503
            incident = open_incident(
                "I000000000001", "store", "critical", "Down", int(time.time() * 1000)
            )
            await sender.heard("opened", incident)
            await wait_until_async(lambda: len(receiver.got) >= 2, 10)  # retried from memory
            receiver.status = 200
            await wait_until_async(lambda: len(receiver.accepted()) == 1, 10)
            got = receiver.accepted()[0]
            assert got.headers["idempotency-key"] == delivery_id(hook.id, incident)
            await store.open()  # back: what was heard is written, done
            await wait_until_async(lambda: sender.in_memory == 0, 10)
            assert await store.pending_webhooks(hook.id, 10) == []
            # A relay that hears it late adds nothing.
            await store.enqueue_webhooks([entry_for(hook, "opened", incident)])
            assert await store.pending_webhooks(hook.id, 10) == []
            assert len(receiver.accepted()) == 1
        finally:
            await sender.stop()
            await store.close()
