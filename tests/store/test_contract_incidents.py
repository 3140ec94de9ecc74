"""The Store contract for incidents (core/incidents.py, issue 16).

Runs on every engine (tests/store/conftest.py, ``store``): an incident is kept
whole and durably; a change is stored only as the next revision of an open
incident (compare-and-set), so of two writers that read the same revision one
wins, and a resolved incident is never reopened by a stale writer; a retried
write is idempotent; the listing has open and recently resolved ones, newest first.
"""

from __future__ import annotations

import pytest

from pinrelay.core.incidents import Incident, add_update, open_incident, resolve
from pinrelay.store.base import Store

from .conftest import Reopen
from .test_contract import NOW
from .test_contract_tenants import T1, elsewhere

I1, I2, I3 = "I000000000001", "I000000000002", "I000000000003"


def opened(iid: str = I1, at: int = NOW, **kw: object) -> Incident:
    return open_incident(iid, "store", "major", "Writes are slow", at, **kw)  # type: ignore[arg-type]


async def test_an_incident_is_kept_whole_and_survives_a_reopen(
    store: Store, reopen: Reopen
) -> None:
    first = opened(region="eu-west", tenants=[T1])
    assert await store.put_incident(first)
    assert await store.get_incident(I1) == first
    assert await store.get_incident(I2) is None
    assert await store.get_incident("not an id") is None
    again = await elsewhere(store, reopen)
    assert await again.get_incident(I1) == first
    assert (await again.get_incident(I1) or first).tenants == (T1,)


async def test_only_the_next_revision_of_an_open_incident_is_stored(store: Store) -> None:
    first = opened()
    assert await store.put_incident(first)
    assert await store.put_incident(first)  # a retry: nothing changes, True
    assert not await store.put_incident(opened(at=NOW + 5))  # another rev 1 of the same id
    a = add_update(first, "Found the disk", NOW + 10)
    b = add_update(first, "Still looking", NOW + 11)
    assert await store.put_incident(a)
    assert not await store.put_incident(b)  # read rev 1 too: lost the race
    assert await store.get_incident(I1) == a
    skipped = add_update(add_update(a, "x", NOW + 20), "y", NOW + 21)  # rev 4 over rev 2
    assert not await store.put_incident(skipped)
    b2 = add_update(a, "Still looking", NOW + 11)  # read again, re-applied
    assert await store.put_incident(b2)
    assert [u.text for u in b2.updates] == ["Writes are slow", "Found the disk", "Still looking"]
    assert await store.get_incident(I1) == b2


async def test_a_resolved_incident_is_never_reopened_by_a_stale_writer(store: Store) -> None:
    first = opened()
    assert await store.put_incident(first)
    done = resolve(first, "Fixed", NOW + 100)
    assert await store.put_incident(done)
    stale = add_update(first, "late news", NOW + 50)  # rev 2, state open
    assert not await store.put_incident(stale)
    forged = Incident(**{**_fields(done), "state": "open", "rev": done.rev + 1})  # type: ignore[arg-type]
    assert not await store.put_incident(forged)
    assert await store.put_incident(done)  # the same write retried: still True
    kept = await store.get_incident(I1)
    assert kept == done and kept.state == "resolved" and kept.resolved_ms == NOW + 100


def _fields(incident: Incident) -> dict[str, object]:
    return {f: getattr(incident, f) for f in incident.__struct_fields__}


async def test_the_listing_has_open_and_recent_incidents_newest_first(store: Store) -> None:
    old = opened(I1, at=NOW)
    assert await store.put_incident(old)
    assert await store.put_incident(resolve(old, None, NOW + 1_000))
    assert await store.put_incident(opened(I2, at=NOW + 2_000))
    assert await store.put_incident(opened(I3, at=NOW + 3_000))
    assert [i.id for i in await store.list_incidents(0, 10)] == [I3, I2, I1]
    # Resolved before the window: left out; open ones stay, however old.
    assert [i.id for i in await store.list_incidents(NOW + 1_001, 10)] == [I3, I2]
    assert [i.id for i in await store.list_incidents(NOW + 1_000, 10)] == [I3, I2, I1]
    assert [i.id for i in await store.list_incidents(0, 2)] == [I3, I2]


async def test_a_probe_is_stored_and_fails_once_the_store_is_closed(
    store: Store, reopen: Reopen
) -> None:
    await store.probe("node-1", NOW)
    await store.probe("node-1", NOW + 1)  # the same relay's next: replaces it
    await store.probe("node-2", NOW + 1)
    again = await elsewhere(store, reopen)  # closes the first
    await again.probe("node-1", NOW + 2)
    with pytest.raises(Exception):  # noqa: B017 - whatever a closed store raises
        await store.probe("node-1", NOW + 3)
