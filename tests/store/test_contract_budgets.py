"""The Store contract for budgets (Store.take_budget; chat.py's invitations): a burst,
then one try every period/limit; a refused try counts not; tries through two stores
on the same data (two relays of a cluster) share one budget, and a reopened store
still has it.  Runs on every engine (tests/store/conftest.py, ``store``).
"""

from __future__ import annotations

import asyncio

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.store.base import BUDGET_PERIOD_MAX_MS, Store

from .conftest import ENGINE, Reopen
from .test_contract import NOW

MINUTE = 60_000


async def test_a_burst_then_one_every_period_over_limit(store: Store) -> None:
    # Three a minute: three at once, then one every 20 s.
    assert [await store.take_budget("invites_A", 3, MINUTE, NOW) for _ in range(4)] == [
        0,
        0,
        0,
        20_000,
    ]
    assert await store.take_budget("invites_A", 3, MINUTE, NOW + 19_999) == 1
    assert await store.take_budget("invites_A", 3, MINUTE, NOW + 20_000) == 0
    # The refusals above were not counted: the next try waits one step, not more.
    assert await store.take_budget("invites_A", 3, MINUTE, NOW + 20_000) == 20_000
    assert await store.take_budget("invites_B", 3, MINUTE, NOW) == 0  # its own budget
    for key, limit, period in (
        ("not a key!", 3, MINUTE),
        ("k" * 65, 3, MINUTE),
        ("k", 0, MINUTE),
        ("k", 3, BUDGET_PERIOD_MAX_MS + 1),
    ):
        with pytest.raises(PinrelayError) as info:
            await store.take_budget(key, limit, period, NOW)
        assert info.value.code is ErrorCode.INVALID


async def test_two_relays_share_one_budget_and_a_reopen_keeps_it(
    store: Store, reopen: Reopen, request: pytest.FixtureRequest
) -> None:
    stores = [store] * 10
    if request.node.stash[ENGINE] != "sqlite":
        # Two relays of a cluster (SQLite has one store per file: its lock).
        stores = [store, await reopen()] * 5
    waits = await asyncio.gather(*(s.take_budget("invites_C", 5, MINUTE, NOW) for s in stores))
    assert sorted(waits) == [0] * 5 + [12_000] * 5
    for s in {id(s): s for s in stores}.values():
        await s.close()
    again = await reopen()
    assert await again.take_budget("invites_C", 5, MINUTE, NOW + 11_999) == 1
    assert await again.take_budget("invites_C", 5, MINUTE, NOW + 12_000) == 0
