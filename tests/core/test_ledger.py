"""core/ledger.py: the stored_bytes ledger counts by expiry slot, forgets past slots,
adds relays' ledgers up and never reports below zero."""

from __future__ import annotations

from pinrelay.core.ledger import SLOT_MS, StoredBytes, total

T = "aaaaaaaaaaaa"
NOW = 1_800_000_000_000


def test_pushes_and_acks_by_expiry_slot() -> None:
    ledger = StoredBytes()
    ledger.add(T, 100, NOW + 60_000)
    ledger.add(T, 50, NOW + 2 * SLOT_MS)
    ledger.remove(T, 100, NOW + 60_000)
    assert total(T, NOW, [ledger.own(T)]) == 50
    # Once its slot is past, an unacknowledged message counts no more.
    assert total(T, NOW + 3 * SLOT_MS, [ledger.own(T)]) == 0


def test_snapshots_only_when_changed_and_without_past_slots() -> None:
    ledger = StoredBytes({T: {NOW // SLOT_MS - 5: 10}})
    assert ledger.snapshot(NOW) is None
    ledger.add(T, 7, NOW + 1000)
    assert ledger.snapshot(NOW) == {T: {(NOW + 1000) // SLOT_MS: 7}}
    assert ledger.snapshot(NOW) is None
    ledger.remove(T, 7, NOW + 1000)
    assert ledger.snapshot(NOW) == {}


def test_relays_add_up_and_never_below_zero() -> None:
    here, there = StoredBytes(), StoredBytes()
    here.add(T, 300, NOW + 1000)
    there.remove(T, 100, NOW + 1000)  # acknowledged on another relay
    assert total(T, NOW, [here.own(T), there.own(T)]) == 200
    assert total(T, NOW, [there.own(T)]) == 0
    assert total("bbbbbbbbbbbb", NOW, [here.own("bbbbbbbbbbbb")]) == 0
