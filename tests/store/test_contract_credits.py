"""The Store contract for service levels, make-good claims and codes (issue 16).

Runs on every engine: a service level is kept per tenant and removed; a tenant's
devices are listed in PIN order, a page at a time; the first claim of a make-good
holds it; a (broadcast, PIN) keeps the first code issued for it; a code is redeemed
once.  All of it survives a reopen.
"""

from __future__ import annotations

from pinrelay.core.credits import ServiceLevel
from pinrelay.core.makegood import Code
from pinrelay.store.base import Store

from .conftest import Reopen
from .test_contract import NOW
from .test_contract_tenants import T1, T2, elsewhere, tenant

LEVEL = ServiceLevel(availability=99.9, fee=10_000, currency="EUR", credits=[(99.9, 10.0)])
B1 = "01JAAAAAAAAAAAAAAAAAAAAAAA"


def code(value: str, pin: str, broadcast: str = B1) -> Code:
    return Code(
        code=value, tenant=T1, pin=pin, incident="I000000000001", broadcast=broadcast,
        created_ms=NOW,
    )  # fmt: skip


async def test_service_levels_are_kept_and_removed(store: Store, reopen: Reopen) -> None:
    await store.create_tenant(tenant(T1))
    assert await store.service_levels() == {}
    await store.put_service_level(T1, LEVEL)
    assert await store.service_levels() == {T1: LEVEL}
    again = await elsewhere(store, reopen)
    assert await again.service_levels() == {T1: LEVEL}
    await again.put_service_level(T1, None)
    assert await again.service_levels() == {}


async def test_a_tenants_devices_come_in_pin_order_a_page_at_a_time(store: Store) -> None:
    for t in (T1, T2):
        await store.create_tenant(tenant(t))
    mine = ["0000000A", "0000000C", "0000000E", "000000F0"]
    for pin in mine:
        assert await store.create_device(pin, "h", None, NOW, tenant=T1) is not None
    for pin in ("0000000B", "0000000D"):
        assert await store.create_device(pin, "h", None, NOW, tenant=T2) is not None
    assert await store.tenant_devices(T1, "", 2) == mine[:2]
    assert await store.tenant_devices(T1, mine[1], 2) == mine[2:]
    assert await store.tenant_devices(T1, mine[3], 2) == []
    assert await store.tenant_devices(T2, "", 10) == ["0000000B", "0000000D"]


async def test_the_first_claim_holds_a_make_good(store: Store) -> None:
    first = await store.claim_makegood("I000000000001", T1, B1)
    assert first == B1
    assert await store.claim_makegood("I000000000001", T1, "01JBBBBBBBBBBBBBBBBBBBBBBB") == B1
    other = "01JCCCCCCCCCCCCCCCCCCCCCCC"
    assert await store.claim_makegood("I000000000001", T2, other) == other


async def test_a_device_keeps_its_first_code_and_a_code_redeems_once(
    store: Store, reopen: Reopen
) -> None:
    issued = await store.issue_codes(
        [code("AAAAAAAAAAAA", "0000000A"), code("BBBBBBBBBBBB", "0000000B")]
    )
    assert [c.code for c in issued] == ["AAAAAAAAAAAA", "BBBBBBBBBBBB"]
    # The page again (a resumed fan-out) with new codes: the first ones stand.
    again = await store.issue_codes(
        [code("CCCCCCCCCCCC", "0000000A"), code("DDDDDDDDDDDD", "0000000B")]
    )
    assert [c.code for c in again] == ["AAAAAAAAAAAA", "BBBBBBBBBBBB"]
    assert await store.get_code("CCCCCCCCCCCC") is None
    assert (await store.get_code("AAAAAAAAAAAA")) == code("AAAAAAAAAAAA", "0000000A")
    got, first = await store.redeem_code("AAAAAAAAAAAA", NOW + 5)
    assert first and got is not None and got.redeemed_ms == NOW + 5
    got, first = await store.redeem_code("AAAAAAAAAAAA", NOW + 9)
    assert not first and got is not None and got.redeemed_ms == NOW + 5
    assert await store.redeem_code("ZZZZZZZZZZZZ", NOW) == (None, False)
    later = await elsewhere(store, reopen)
    stored = await later.get_code("AAAAAAAAAAAA")
    assert stored is not None and stored.redeemed_ms == NOW + 5
    assert (await later.redeem_code("AAAAAAAAAAAA", NOW + 20))[1] is False
    assert (await later.redeem_code("BBBBBBBBBBBB", NOW + 20))[1] is True
