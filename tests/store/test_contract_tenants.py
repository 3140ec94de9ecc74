"""The Store contract for tenants (core/tenants.py, issue 15).

Runs on every engine (tests/store/conftest.py, ``store``): tenants are stored and
seen from a second store on the same data; devices and keys carry their tenant
(``default`` unless told); a deletion leaves a tombstone; appends restricted to a
tenant reach only its devices and those that granted it; a device moves between
tenants with its backlog and cursor.
"""

from __future__ import annotations

import dataclasses

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Accepted, Scope
from pinrelay.core.tenants import DEFAULT_TENANT, Quotas, Tenant
from pinrelay.store.base import MAX_GRANTS, UNKNOWN_DEVICE, Rejected, Store

from .conftest import Reopen
from .test_contract import NOW, A, B, C, key, msg, read_all

T1, T2 = "aaaaaaaaaaaa", "bbbbbbbbbbbb"


def tenant(tenant_id: str, **extra: object) -> Tenant:
    fields: dict[str, object] = {"name": f"name-{tenant_id}", "created_ms": NOW, **extra}
    return Tenant(id=tenant_id, **fields)  # type: ignore[arg-type]


async def test_default_tenant_exists_from_the_start(store: Store) -> None:
    default = await store.get_tenant(DEFAULT_TENANT)
    assert default is not None and default.live and not default.suspended
    assert [t.id for t in await store.list_tenants()] == [DEFAULT_TENANT]


async def test_create_get_list_update(store: Store, reopen: Reopen) -> None:
    quotas = Quotas(devices=10, rate=5.0, burst=20, stored_bytes=1 << 20, links=3)
    await store.create_tenant(tenant(T1, quotas=quotas))
    await store.create_tenant(tenant(T2))
    with pytest.raises(PinrelayError) as taken:
        await store.create_tenant(tenant(T1))
    assert taken.value.code is ErrorCode.CONFLICT
    assert await store.get_tenant(T1) == tenant(T1, quotas=quotas)
    assert await store.get_tenant("cccccccccccc") is None
    assert [t.id for t in await store.list_tenants()] == sorted([DEFAULT_TENANT, T1, T2])

    suspended = tenant(T2, name="renamed", suspended=True)
    assert await store.update_tenant(suspended)
    assert not await store.update_tenant(tenant("cccccccccccc"))
    other = await elsewhere(store, reopen)
    assert await other.get_tenant(T2) == suspended
    assert await other.get_tenant(T1) == tenant(T1, quotas=quotas)


async def test_delete_leaves_a_tombstone_and_the_devices(store: Store, reopen: Reopen) -> None:
    await store.create_tenant(tenant(T1))
    assert await store.create_device(A, "hash-a", None, NOW, tenant=T1) is not None
    await store.append([msg(A, 1)], tenant=T1)
    assert await store.update_tenant(tenant(T1, deleted_ms=NOW + 1))
    gone = await store.get_tenant(T1)
    assert gone is not None and not gone.live
    # A tombstone is never updated again, nor its id reused.
    assert not await store.update_tenant(tenant(T1))
    with pytest.raises(PinrelayError):
        await store.create_tenant(tenant(T1))
    # The device keeps its data; it still names the deleted tenant.
    other = await elsewhere(store, reopen)
    device = await other.get_device(A)
    assert device is not None and device.tenant == T1
    assert [m.data for m in await read_all(other, A)] == [b'{"n":1}']


async def test_devices_and_keys_carry_their_tenant(store: Store, reopen: Reopen) -> None:
    await store.create_tenant(tenant(T1))
    made = await store.create_device(A, "hash-a", "label", NOW, tenant=T1)
    assert made is not None and made.tenant == T1
    assert (await store.create_device(B, "hash-b", None, NOW)).tenant == DEFAULT_TENANT  # type: ignore[union-attr]
    assert (await store.create_device(C, "hash-c", None, NOW, tenant=None)).tenant is None  # type: ignore[union-attr]
    await store.create_key(dataclasses.replace(key("k1", scope=Scope.BROADCAST), tenant=T1))
    await store.create_key(key("k2"))
    other = await elsewhere(store, reopen)
    assert [(await other.get_device(p)).tenant for p in (A, B, C)] == [T1, DEFAULT_TENANT, None]  # type: ignore[union-attr]
    found = await other.find_key("hash-k1")
    assert found is not None and found.tenant == T1 and found.scope is Scope.BROADCAST
    assert {k.id: k.tenant for k in await other.list_keys()} == {"k1": T1, "k2": DEFAULT_TENANT}


async def elsewhere(store: Store, reopen: Reopen) -> Store:
    """The same data through a new store (SQLite: the file's one store, reopened)."""
    await store.close()
    return await reopen()


def _outcome(result: Accepted | Rejected) -> str:
    return "stored" if isinstance(result, Accepted) else result.reason


async def test_an_append_for_a_tenant_reaches_its_devices_and_grants(store: Store) -> None:
    await store.create_tenant(tenant(T1))
    await store.create_tenant(tenant(T2))
    await store.create_device(A, "hash-a", None, NOW, tenant=T1)
    await store.create_device(B, "hash-b", None, NOW, tenant=T2)
    await store.create_device(C, "hash-c", None, NOW, tenant=None)
    batch = [msg(A, 1), msg(B, 2), msg(C, 3), msg("DEADBEEF", 4)]
    results, _ = await store.append(batch, tenant=T1)
    assert [_outcome(r) for r in results] == ["stored", *[UNKNOWN_DEVICE] * 3]
    # No restriction: every device (the relay's own edges, its admin key).
    results, _ = await store.append([msg(A, 5), msg(B, 6), msg(C, 7)])
    assert [_outcome(r) for r in results] == ["stored"] * 3

    assert await store.set_grant(B, T1, True)
    assert not await store.set_grant("DEADBEEF", T1, True)
    assert await store.grants_of(B) == [T1]
    assert await store.grants_of("DEADBEEF") == []
    results, _ = await store.append([msg(B, 8)], tenant=T1)
    assert [_outcome(r) for r in results] == ["stored"]
    assert await store.set_grant(B, T1, False)
    assert await store.grants_of(B) == []
    results, _ = await store.append([msg(B, 9)], tenant=T1)
    assert [_outcome(r) for r in results] == [UNKNOWN_DEVICE]
    assert [m.data for m in await read_all(store, B)] == [b'{"n":6}', b'{"n":8}']


async def test_grants_are_bounded(store: Store) -> None:
    await store.create_device(A, "hash-a", None, NOW)
    tenants = [f"{n:012d}".translate(str.maketrans("0123456789", "abcdefghij")) for n in range(40)]
    for t in tenants[:MAX_GRANTS]:
        assert await store.set_grant(A, t, True)
    assert await store.set_grant(A, tenants[0], True)  # granted already: no change
    with pytest.raises(PinrelayError) as full:
        await store.set_grant(A, tenants[MAX_GRANTS], True)
    assert full.value.code is ErrorCode.CONFLICT
    # Both engines word it alike (the API's answer does not depend on the store).
    assert full.value.detail == f"a device may grant at most {MAX_GRANTS} tenants"
    assert await store.grants_of(A) == sorted(tenants[:MAX_GRANTS])


async def test_a_device_moves_with_its_backlog(store: Store, reopen: Reopen) -> None:
    await store.create_tenant(tenant(T1))
    await store.create_tenant(tenant(T2))
    await store.create_device(A, "hash-a", None, NOW, tenant=T1)
    await store.set_grant(A, DEFAULT_TENANT, True)
    first, _ = await store.append([msg(A, 1), msg(A, 2)], tenant=T1)
    assert isinstance(first[0], Accepted)
    await store.ack(A, first[0].cursor)
    assert await store.set_device_tenant(A, T2)
    assert not await store.set_device_tenant("DEADBEEF", T2)
    store = await elsewhere(store, reopen)
    moved = await store.get_device(A)
    assert moved is not None and moved.tenant == T2
    # A move drops the device's grants: the new tenant's terms are its own.
    assert await store.grants_of(A) == []
    results, _ = await store.append([msg(A, 3)], tenant=T1)
    assert [_outcome(r) for r in results] == [UNKNOWN_DEVICE]
    results, _ = await store.append([msg(A, 4)], tenant=T2)
    assert [_outcome(r) for r in results] == ["stored"]
    backlog = await store.read(A, first[0].cursor, 100, NOW)
    assert [m.data for m in backlog] == [b'{"n":2}', b'{"n":4}']
    assert await store.set_device_tenant(A, None)
    assert (await store.get_device(A)).tenant is None  # type: ignore[union-attr]


async def test_the_devices_quota_counts_creates_deletions_and_moves(
    store: Store, reopen: Reopen
) -> None:
    await store.create_tenant(tenant(T1))
    await store.create_tenant(tenant(T2))
    assert await store.create_device(A, "hash-a", None, NOW, tenant=T1, max_devices=2)
    assert await store.create_device(A, "hash-x", None, NOW, tenant=T1, max_devices=2) is None
    assert await store.create_device(B, "hash-b", None, NOW, tenant=T1, max_devices=2)
    with pytest.raises(PinrelayError) as over:
        await store.create_device(C, "hash-c", None, NOW, tenant=T1, max_devices=2)
    assert over.value.code is ErrorCode.RATE_LIMITED
    assert over.value.detail == f"tenant {T1} is over its devices quota of 2 devices"
    assert await store.get_device(C) is None
    # Through a second store on the same data (another relay): the same count.
    other = await elsewhere(store, reopen)
    with pytest.raises(PinrelayError):
        await other.create_device(C, "hash-c", None, NOW, tenant=T1, max_devices=2)
    assert await other.delete_device(A)
    assert await other.create_device(C, "hash-c", None, NOW, tenant=T1, max_devices=2)
    # A move takes the device out of one tenant's count and into the other's.
    assert await other.set_device_tenant(C, T2)
    assert await other.create_device(A, "hash-a", None, NOW, tenant=T1, max_devices=2)
    with pytest.raises(PinrelayError):
        await other.create_device("0000000D", "hash-d", None, NOW, tenant=T2, max_devices=1)
