"""The Store contract for webhooks (core/webhooks.py, issue 16, DECISIONS 56).

Runs on every engine: a subscription is kept whole and counted per tenant; an
outbox entry is enqueued once whatever the number of relays enqueueing it, also
after it was answered; pending entries come in key order; a lease is held by one
owner until it expires; deleting a subscription drops its outbox.
"""

from __future__ import annotations

import msgspec
import pytest

from pinrelay.core.errors import PinrelayError
from pinrelay.core.incidents import add_update, open_incident, resolve
from pinrelay.core.webhooks import Webhook, entry_for
from pinrelay.store.base import Store

from .conftest import Reopen
from .test_contract import NOW
from .test_contract_tenants import T1, elsewhere

W1, W2, W3 = "W000000000001", "W000000000002", "W000000000003"
SECRET = "s" * 32


def hook(wid: str = W1, tenant: str | None = T1, at: int = NOW) -> Webhook:
    return Webhook(id=wid, tenant=tenant, url="http://127.0.0.1:9/h", secret=SECRET, created_ms=at)


async def test_a_subscription_is_kept_whole_counted_and_deleted(
    store: Store, reopen: Reopen
) -> None:
    await store.put_webhook(hook(), 2)
    await store.put_webhook(hook(W2, at=NOW + 1), 2)
    await store.put_webhook(hook(W3, tenant=None), 2)  # the relay's admin: counted apart
    with pytest.raises(PinrelayError) as err:
        await store.put_webhook(hook("W000000000004"), 2)
    assert err.value.code.status == 409
    assert await store.get_webhook(W1) == hook()
    assert await store.get_webhook("nope") is None
    again = await elsewhere(store, reopen)
    assert [h.id for h in await again.list_webhooks()] == [W1, W3, W2]  # (created, id)
    assert await again.delete_webhook(W1)
    assert not await again.delete_webhook(W1)
    assert await again.get_webhook(W1) is None
    assert {h.id for h in await again.list_webhooks()} == {W2, W3}


async def test_the_outbox_keeps_one_entry_per_delivery_in_order(store: Store) -> None:
    await store.put_webhook(hook(), 20)
    first = open_incident("I000000000001", "store", "major", "Slow", NOW)
    second = add_update(first, "Still slow", NOW + 10)
    other = open_incident("I000000000002", "links", "minor", "Few links", NOW + 5)
    done = resolve(second, "Fixed", NOW + 20)
    h = hook()
    entries = [
        entry_for(h, "resolved", done),
        entry_for(h, "opened", first),
        entry_for(h, "updated", second),
        entry_for(h, "opened", other),
    ]
    await store.enqueue_webhooks(entries)
    await store.enqueue_webhooks(entries[:2])  # a second relay: nothing more
    pending = await store.pending_webhooks(W1, 10)
    assert [(e.incident.id, e.incident.rev) for e in pending] == [
        (first.id, 1),
        (other.id, 1),
        (first.id, 2),
        (first.id, 3),
    ]
    assert pending[0] == entries[1]
    assert [e.id for e in await store.pending_webhooks(W1, 2)] == [pending[0].id, pending[1].id]
    await store.webhook_done(W1, pending[0].key, NOW + 30)
    await store.enqueue_webhooks([entries[1]])  # heard late: still done
    assert [e.id for e in await store.pending_webhooks(W1, 10)] == [e.id for e in pending[1:]]
    assert await store.prune_webhooks(NOW + 30) == 0
    assert await store.prune_webhooks(NOW + 31) == 1
    # No subscription: no entries (a deleted one's late events are dropped).
    await store.enqueue_webhooks([entry_for(hook(W2), "opened", first)])
    assert await store.pending_webhooks(W2, 10) == []
    assert await store.delete_webhook(W1)
    assert await store.pending_webhooks(W1, 10) == []


async def test_a_lease_has_one_owner_until_it_expires(store: Store) -> None:
    await store.put_webhook(hook(), 20)
    assert await store.lease_webhook(W1, "a", NOW, 1000)
    assert not await store.lease_webhook(W1, "b", NOW + 500, 1000)
    assert await store.lease_webhook(W1, "a", NOW + 500, 1000)  # renewed to NOW + 1500
    assert not await store.lease_webhook(W1, "b", NOW + 1400, 1000)
    assert await store.lease_webhook(W1, "b", NOW + 1501, 1000)  # expired: taken over
    assert not await store.lease_webhook(W1, "a", NOW + 1600, 1000)
    await store.lease_webhook(W1, "b", NOW + 1700, 0)  # let go
    assert await store.lease_webhook(W1, "a", NOW + 1700, 1000)


async def test_an_entry_delivered_while_the_store_was_away_is_added_done(store: Store) -> None:
    await store.put_webhook(hook(), 20)
    first = open_incident("I000000000001", "store", "major", "Slow", NOW)
    done = msgspec.structs.replace(entry_for(hook(), "opened", first), done_ms=NOW + 1)
    await store.enqueue_webhooks([done])
    assert await store.pending_webhooks(W1, 10) == []
    await store.enqueue_webhooks([entry_for(hook(), "opened", first)])  # still done
    assert await store.pending_webhooks(W1, 10) == []
    assert await store.prune_webhooks(NOW + 2) == 1
