"""The Store contract for Web Push subscriptions (pinrelay/webpush.py).

Runs on every engine (tests/store/conftest.py, ``store``): a subscription is found
by its id on any relay, listed for its device, made a tombstone by a delete (or by
deleting its device) so pushes can answer 410, and bounded per device.
"""

from __future__ import annotations

import asyncio

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import MAX_SUBSCRIPTIONS, PushReceipt, Store, Subscription

from .conftest import ENGINE, Reopen
from .test_contract import NOW, A, B, add_devices

KEY = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
AUTH = "tBHItJI5svbpez7KI4CCXg"


def sub(n: int, pin: str = A, **extra: str | None) -> Subscription:
    return Subscription(f"sub{n:019d}", pin, NOW + n, **extra)  # type: ignore[arg-type]


async def test_create_get_list(store: Store) -> None:
    await add_devices(store, A, B)
    first = sub(1, p256dh=KEY, auth=AUTH, vapid_key=KEY)
    await store.create_subscription(first)
    await store.create_subscription(sub(2))
    await store.create_subscription(sub(3, B))
    assert await store.get_subscription(first.id) == first
    assert await store.get_subscription("nosuchsubscription0000") is None
    assert [s.id for s in await store.subscriptions_of(A)] == [sub(1).id, sub(2).id]
    assert await store.subscriptions_of(B) == [sub(3, B)]


async def test_delete_leaves_a_tombstone(store: Store) -> None:
    await add_devices(store, A, B)
    await store.create_subscription(sub(1))
    await store.create_subscription(sub(2))
    # Only its own device deletes it.
    assert not await store.delete_subscription(B, sub(1).id, NOW + 10)
    assert await store.delete_subscription(A, sub(1).id, NOW + 10)
    assert not await store.delete_subscription(A, sub(1).id, NOW + 11)
    gone = await store.get_subscription(sub(1).id)
    assert gone is not None and gone.deleted_ms == NOW + 10 and gone.pin == A
    assert [s.id for s in await store.subscriptions_of(A)] == [sub(2).id]


async def test_deleting_the_device_ends_its_subscriptions(store: Store) -> None:
    await add_devices(store, A, B)
    await store.create_subscription(sub(1))
    await store.create_subscription(sub(2, B))
    assert await store.delete_device(A)
    gone = await store.get_subscription(sub(1).id)
    assert gone is not None and gone.deleted_ms is not None
    assert await store.subscriptions_of(A) == []
    kept = await store.get_subscription(sub(2, B).id)
    assert kept is not None and kept.deleted_ms is None


async def test_an_id_is_used_once(store: Store) -> None:
    await add_devices(store, A, B)
    await store.create_subscription(sub(1))
    with pytest.raises(PinrelayError) as info:
        await store.create_subscription(Subscription(sub(1).id, B, NOW))
    assert info.value.code is ErrorCode.CONFLICT
    assert await store.get_subscription(sub(1).id) == sub(1)


async def test_a_device_holds_a_bounded_number(store: Store) -> None:
    await add_devices(store, A)
    await asyncio.gather(*(store.create_subscription(sub(n)) for n in range(MAX_SUBSCRIPTIONS)))
    with pytest.raises(PinrelayError) as info:
        await store.create_subscription(sub(MAX_SUBSCRIPTIONS))
    assert info.value.code is ErrorCode.CONFLICT
    assert len(await store.subscriptions_of(A)) == MAX_SUBSCRIPTIONS
    # A deleted one frees its place.
    assert await store.delete_subscription(A, sub(0).id, NOW + 1)
    await store.create_subscription(sub(MAX_SUBSCRIPTIONS))
    assert len(await store.subscriptions_of(A)) == MAX_SUBSCRIPTIONS


async def test_kept_across_a_reopen(store: Store, reopen: Reopen) -> None:
    await add_devices(store, A)
    await store.create_subscription(sub(1, vapid_key=KEY))
    await store.close()
    again = await reopen()
    assert await again.get_subscription(sub(1).id) == sub(1, vapid_key=KEY)


async def test_a_delete_is_seen_by_every_relay(
    store: Store, reopen: Reopen, request: pytest.FixtureRequest
) -> None:
    await add_devices(store, A)
    await store.create_subscription(sub(1))
    # SQLite has one store per file (its lock): its one relay is the one asked.
    sqlite = request.node.stash[ENGINE] == "sqlite"
    other = store if sqlite else await reopen()
    assert await other.get_subscription(sub(1).id) == sub(1)  # now cached, if it caches
    assert await store.delete_subscription(A, sub(1).id, NOW + 5)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while True:
        got = await other.get_subscription(sub(1).id)
        assert got is not None
        if got.deleted_ms == NOW + 5:
            break
        assert loop.time() < deadline, "the other relay still pushes to a deleted subscription"
        await asyncio.sleep(0.05)


async def test_push_receipts(store: Store) -> None:
    await add_devices(store, A)
    first = PushReceipt("k1", "delivered", NOW, NOW + 1000)
    second = PushReceipt("k2", "delivered", NOW + 1, NOW + 2000)
    await store.put_push_receipts([first, second])
    await store.put_push_receipts([first])  # a crash repeats a receipt: no harm
    assert await store.get_push_receipt("k1", NOW) == first
    assert await store.get_push_receipt("k2", NOW) == second
    assert await store.get_push_receipt("k3", NOW) is None
    assert await store.get_push_receipt("k1", NOW + 1000) is None  # expired
    assert await store.get_push_receipt("k2", NOW + 1000) == second
