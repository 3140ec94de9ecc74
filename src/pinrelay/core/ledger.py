"""The ``stored_bytes`` quota's ledger: bytes of undelivered messages per tenant.

No store can tell cheaply how many bytes a tenant's undelivered messages hold (the
cluster keeps them in per-device subjects, with no per-tenant figure), so relays
keep a ledger of what they saw.  Each relay counts, per tenant, the bytes of the
pushes and broadcasts it stored (``add``) and of those its devices acknowledged
(``remove``), each under the *slot* its message expires in (10-minute slots).  A
slot in the past counts no more: a message that expired unacknowledged leaves the
total by itself, with no event to catch.  Relays write their ledgers to the store
every few seconds and add up each other's: an acknowledgement on one relay cancels
a push stored through another.

The figure errs high, which only refuses early: a message replaced by its topic,
deleted with its device, or acknowledged past what a relay delivered itself (a
``hello`` cursor, an inbox ack) still counts until it expires; a relay that dies
loses what it counted since its last write (a second or two).

Pure: the caller passes the clock's reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: The kinds of message the ledger counts: what a tenant's keys store.
COUNTED = frozenset({"push", "broadcast"})
#: Width of a slot: a message counts until the end of the slot it expires in.
SLOT_MS = 600_000

#: tenant -> slot (expiry // SLOT_MS) -> net bytes
Ledger = dict[str, dict[int, int]]


def slot_of(expires_ms: int) -> int:
    return expires_ms // SLOT_MS


class StoredBytes:
    """One relay's ledger (module doc)."""

    __slots__ = ("_changed", "_own")

    def __init__(self, own: Ledger | None = None) -> None:
        self._own: Ledger = {t: dict(s) for t, s in (own or {}).items()}
        self._changed = False

    def add(self, tenant: str, nbytes: int, expires_ms: int) -> None:
        slots = self._own.setdefault(tenant, {})
        slot = slot_of(expires_ms)
        slots[slot] = slots.get(slot, 0) + nbytes
        self._changed = True

    def remove(self, tenant: str, nbytes: int, expires_ms: int) -> None:
        self.add(tenant, -nbytes, expires_ms)

    def snapshot(self, now_ms: int) -> Ledger | None:
        """The ledger to write, without past slots; None if nothing changed since the
        last snapshot."""
        if not self._changed:
            return None
        self._changed = False
        now = slot_of(now_ms)
        for tenant in list(self._own):
            slots = {s: n for s, n in self._own[tenant].items() if s >= now and n}
            if slots:
                self._own[tenant] = slots
            else:
                del self._own[tenant]
        return {t: dict(s) for t, s in self._own.items()}

    def own(self, tenant: str) -> Mapping[int, int]:
        return self._own.get(tenant, {})


def total(tenant: str, now_ms: int, ledgers: Iterable[Mapping[int, int]]) -> int:
    """A tenant's undelivered bytes by ``ledgers`` (each relay's slots for it): the
    slots not yet past, summed; never below 0 (acks counted where their pushes were
    not, e.g. a push stored before this relay wrote its ledger)."""
    now = slot_of(now_ms)
    return max(0, sum(n for slots in ledgers for s, n in slots.items() if s >= now))
