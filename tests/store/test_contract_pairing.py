"""The Store contract for pairing codes (api/pairing.py): kept by hash, used once,
and only a device's newest one.

Runs on every engine (tests/store/conftest.py, ``store``): a code is redeemed at
most once however many redemptions race, on one store or on two opened on the same
data (two relays of a cluster), and a reopened store still knows it.
"""

from __future__ import annotations

import asyncio

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import hash_secret
from pinrelay.store.base import PAIRING_KEEP_MS, Redemption, Store

from .conftest import ENGINE, Reopen
from .test_contract import NOW, A, B, add_devices

TEN_MIN = 600_000
CODE = hash_secret("ABCDE-FGHJK")
OTHER = hash_secret("ZZZZZ-ZZZZZ")


async def test_a_code_redeems_once_for_its_pin(store: Store) -> None:
    await add_devices(store, A)
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    assert await store.redeem_pairing(CODE, NOW + 1) == Redemption("redeemed", A)
    assert await store.redeem_pairing(CODE, NOW + 2) == Redemption("used")


async def test_unknown_and_expired(store: Store) -> None:
    await add_devices(store, A)
    assert await store.redeem_pairing(OTHER, NOW) == Redemption("unknown")
    assert await store.redeem_pairing("not a hash at all", NOW) == Redemption("unknown")
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    assert await store.redeem_pairing(CODE, NOW + TEN_MIN) == Redemption("expired")
    # Expired stays expired: never redeemed later.
    assert await store.redeem_pairing(CODE, NOW + TEN_MIN + 1) == Redemption("expired")


async def test_codes_are_separate(store: Store) -> None:
    await add_devices(store, A, B)
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    await store.create_pairing(OTHER, B, NOW + TEN_MIN)
    assert await store.redeem_pairing(OTHER, NOW) == Redemption("redeemed", B)
    assert await store.redeem_pairing(CODE, NOW) == Redemption("redeemed", A)


async def test_a_hash_taken_by_another_code_is_a_conflict(store: Store) -> None:
    await add_devices(store, A, B)
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    with pytest.raises(PinrelayError) as info:
        await store.create_pairing(CODE, B, NOW + TEN_MIN)
    assert info.value.code is ErrorCode.CONFLICT
    assert await store.redeem_pairing(CODE, NOW) == Redemption("redeemed", A)


async def test_a_newer_code_replaces_the_devices_earlier_ones(
    store: Store, reopen: Reopen, request: pytest.FixtureRequest
) -> None:
    """Only a device's newest code can be used: the order they were made in decides,
    not their expiry (a relay whose clock is behind makes a later code with an
    earlier one).  Another device's codes and a used code are not touched."""
    await add_devices(store, A, B)
    second, third = hash_secret("22222-22222"), hash_secret("33333-33333")
    other_relay = store
    if request.node.stash[ENGINE] != "sqlite":
        other_relay = await reopen()  # made on another relay of the cluster
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    await store.create_pairing(OTHER, B, NOW + TEN_MIN)
    await other_relay.create_pairing(second, A, NOW + TEN_MIN - 5_000)
    assert await store.redeem_pairing(CODE, NOW + 1) == Redemption("replaced")
    assert await store.redeem_pairing(CODE, NOW + 2) == Redemption("replaced")
    assert await other_relay.redeem_pairing(second, NOW + 3) == Redemption("redeemed", A)
    assert await store.redeem_pairing(OTHER, NOW + 4) == Redemption("redeemed", B)
    await store.create_pairing(third, A, NOW + TEN_MIN)
    assert await store.redeem_pairing(second, NOW + 5) == Redemption("used")
    assert await other_relay.redeem_pairing(third, NOW + 6) == Redemption("redeemed", A)


async def test_racing_redemptions_one_wins(
    store: Store, reopen: Reopen, request: pytest.FixtureRequest
) -> None:
    await add_devices(store, A)
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    stores = [store] * 8
    if request.node.stash[ENGINE] != "sqlite":
        # Two relays of a cluster (SQLite has one store per file: its lock).
        stores = [store, await reopen()] * 4
    results = await asyncio.gather(*(s.redeem_pairing(CODE, NOW + 1) for s in stores))
    assert sorted(r.outcome for r in results) == ["redeemed"] + ["used"] * 7
    assert [r.pin for r in results if r.outcome == "redeemed"] == [A]


async def test_kept_across_a_reopen(store: Store, reopen: Reopen) -> None:
    await add_devices(store, A)
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    await store.close()
    again = await reopen()
    assert await again.redeem_pairing(CODE, NOW) == Redemption("redeemed", A)
    assert await again.redeem_pairing(CODE, NOW) == Redemption("used")


async def test_forgotten_after_the_keep_time_on_sqlite(
    store: Store, request: pytest.FixtureRequest
) -> None:
    # The cluster engine forgets by the bucket's max age (wall-clock time), not sweep.
    await add_devices(store, A)
    await store.create_pairing(CODE, A, NOW + TEN_MIN)
    await store.sweep(NOW + TEN_MIN + PAIRING_KEEP_MS - 1)
    assert await store.redeem_pairing(CODE, NOW + TEN_MIN + 1) == Redemption("expired")
    await store.sweep(NOW + TEN_MIN + PAIRING_KEEP_MS)
    expected = "unknown" if request.node.stash[ENGINE] == "sqlite" else "expired"
    assert (await store.redeem_pairing(CODE, NOW + TEN_MIN + 1)).outcome == expected
