"""Move requests on the cluster engine (store/jetstream/devices.py): what the contract
suite cannot see, on real nats-server processes.

- a request made through one relay reaches another relay's cache with no request of
  its own, and so does its acceptance;
- with the records cached, a request costs one request (the device record's
  compare-and-set), an acceptance three (that, and the two tenants' device counts),
  and reading a pending move none (DECISIONS 49).
"""

from __future__ import annotations

import pytest

from pinrelay.store.base import Move
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.wait import wait_until_async

from .test_contract import NOW, A
from .test_jetstream import OpenStore, open_store
from .test_jetstream_social import Requests
from .test_jetstream_tenants import T1, T2, tenant

__all__ = ["open_store"]

LATER = NOW + 60_000


async def _pending(store: JetStreamStore, expected: Move | None) -> bool:
    return await store.pending_move(A) == expected


async def _tenant_is(store: JetStreamStore, expected: str) -> bool:
    device = await store.get_device(A)
    return device is not None and device.tenant == expected


async def test_a_move_costs_one_request_and_reaches_another_relay(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, other = await open_store(), await open_store()
    for t in (T1, T2):
        await one.create_tenant(tenant(t))
    await one.create_device(A, "hash-A", None, NOW, tenant=T1)
    assert await other.get_device(A) is not None  # cached on both
    for t in (T1, T2):
        assert await other.get_tenant(t) is not None
    count = Requests(one, monkeypatch)
    assert await one.request_move(A, Move(T2, LATER))
    assert count.taken["requests"] == 1
    assert await one.pending_move(A) == Move(T2, LATER)
    assert count.taken == {"requests": 0, "messages": 0}

    seen = Requests(other, monkeypatch)
    await wait_until_async(lambda: _pending(other, Move(T2, LATER)), 5.0)
    assert seen.taken["requests"] == 0
    assert await other.accept_move(A, T2, NOW)
    # The device record, the two tenants' counts, and its list of channels (read
    # to leave the old tenant's channels: it joined none).
    assert seen.taken["requests"] == 4
    await wait_until_async(lambda: _tenant_is(one, T2), 5.0)
    assert await one.pending_move(A) is None
    assert not await one.accept_move(A, T2, NOW)  # used up, as the leader's copy says
