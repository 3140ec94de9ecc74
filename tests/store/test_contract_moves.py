"""The Store contract for a device's move to another tenant (PROTOCOL "Portability").

Runs on every engine (tests/store/conftest.py, ``store``): a move request is kept on
the device (durable: seen through a second store), replaced or withdrawn by the next
request, ignored once expired, and accepted once only, by the tenant it names,
moving the device with its backlog and cursor and dropping its grants.
"""

from __future__ import annotations

import asyncio

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Accepted
from pinrelay.core.tenants import DEFAULT_TENANT
from pinrelay.store.base import Move, Store

from .conftest import Reopen
from .test_contract import NOW, A, B, C, msg
from .test_contract_tenants import T1, T2, elsewhere, tenant

LATER = NOW + 60_000


async def _two_tenants(store: Store) -> None:
    await store.create_tenant(tenant(T1))
    await store.create_tenant(tenant(T2))
    assert await store.create_device(A, "hash-a", None, NOW, tenant=T1) is not None


async def test_a_request_is_kept_replaced_and_withdrawn(store: Store, reopen: Reopen) -> None:
    await _two_tenants(store)
    assert await store.pending_move(A) is None
    assert not await store.request_move(B, Move(T2, LATER))  # no such device
    assert await store.request_move(A, Move(DEFAULT_TENANT, LATER))
    assert await store.request_move(A, Move(T2, LATER))  # the last request counts
    store = await elsewhere(store, reopen)
    assert await store.pending_move(A) == Move(T2, LATER)
    assert not await store.accept_move(A, DEFAULT_TENANT, NOW)
    assert await store.request_move(A, None)
    assert await store.pending_move(A) is None
    assert not await store.accept_move(A, T2, NOW)
    device = await store.get_device(A)
    assert device is not None and device.tenant == T1


async def test_accepting_moves_the_device_with_its_data(store: Store, reopen: Reopen) -> None:
    await _two_tenants(store)
    await store.set_grant(A, DEFAULT_TENANT, True)
    first, _ = await store.append([msg(A, 1), msg(A, 2)], tenant=T1)
    assert isinstance(first[0], Accepted)
    await store.ack(A, first[0].cursor)
    assert await store.request_move(A, Move(T2, LATER))
    assert not await store.accept_move(B, T2, NOW)
    assert await store.accept_move(A, T2, NOW)
    assert not await store.accept_move(A, T2, NOW)  # used up
    store = await elsewhere(store, reopen)
    device = await store.get_device(A)
    assert device is not None and device.tenant == T2
    assert await store.pending_move(A) is None
    assert await store.grants_of(A) == []
    backlog = await store.read(A, first[0].cursor, 100, NOW)
    assert [m.data for m in backlog] == [b'{"n":2}']


async def test_an_expired_request_moves_nothing(store: Store) -> None:
    await _two_tenants(store)
    assert await store.request_move(A, Move(T2, LATER))
    assert not await store.accept_move(A, T2, LATER)
    device = await store.get_device(A)
    assert device is not None and device.tenant == T1
    assert await store.pending_move(A) == Move(T2, LATER)  # kept until replaced


async def test_a_tenantless_device_moves_the_same_way(store: Store) -> None:
    await _two_tenants(store)
    assert await store.set_device_tenant(A, None)
    assert await store.request_move(A, Move(T2, LATER))
    assert await store.accept_move(A, T2, NOW)
    device = await store.get_device(A)
    assert device is not None and device.tenant == T2


async def test_of_concurrent_acceptances_one_wins(store: Store) -> None:
    await _two_tenants(store)
    assert await store.request_move(A, Move(T2, LATER))
    won = await asyncio.gather(*(store.accept_move(A, T2, NOW) for _ in range(8)))
    assert sorted(won) == [False] * 7 + [True]


async def test_deleting_the_device_forgets_its_request(store: Store) -> None:
    await _two_tenants(store)
    assert await store.request_move(A, Move(T2, LATER))
    assert await store.delete_device(A)
    assert await store.pending_move(A) is None
    assert await store.create_device(A, "hash-a2", None, NOW, tenant=T1) is not None
    assert await store.pending_move(A) is None
    assert not await store.accept_move(A, T2, NOW)


async def test_the_receiving_tenants_devices_quota_holds(store: Store) -> None:
    await _two_tenants(store)
    assert await store.create_device(B, "hash-b", None, NOW, tenant=T2, max_devices=1)
    assert await store.request_move(A, Move(T2, LATER))
    with pytest.raises(PinrelayError) as over:
        await store.accept_move(A, T2, NOW, max_devices=1)
    assert over.value.code is ErrorCode.RATE_LIMITED and "devices quota" in str(over.value)
    assert await store.pending_move(A) == Move(T2, LATER)  # nothing moved or used up
    assert await store.accept_move(A, T2, NOW, max_devices=2)
    # The counts followed: T2 is full at 2, T1 has room for one again.
    with pytest.raises(PinrelayError):
        await store.create_device(C, "hash-c", None, NOW, tenant=T2, max_devices=2)
    assert await store.create_device(C, "hash-c", None, NOW, tenant=T1, max_devices=1)
