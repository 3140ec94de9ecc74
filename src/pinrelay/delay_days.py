"""Delivery delays per tenant and UTC day, for the delay targets of service levels
(core/credits.py rule 5; PROTOCOL "Service credits"; DECISIONS 59).

Every relay records a reading every 10 s (figures.py), with the delay counts of the
messages it delivered per tenant (core/readings.py ``tenant_delays``).  A month of
them is 260,000 readings per relay: too many to read for each credits call, and
kept only 90 days.  So each UTC day, once settled, is summed once and kept in the
store (``Store.put_delay_day``, 400 days).  A day is settled SETTLED_MS after it
ends: no relay still holds a reading of it (figures.py holds them an hour at most
while the store is away).  Any relay may sum a day; two that do write the same.
The figures recorder sums yesterday once it is settled; a credits call sums any
settled day still missing and adds the days not settled yet from their readings.
"""

from __future__ import annotations

from pinrelay.core.credits import month_bounds
from pinrelay.core.readings import add_counts, tenant_totals
from pinrelay.store.base import Store

DAY_MS = 86_400_000
#: How long after its end a day's readings are all in the store.
SETTLED_MS = 2 * 3_600_000

Delays = dict[str, tuple[int, ...]]


def day_of(ms: int) -> int:
    """The start of the UTC day holding ``ms``."""
    return ms - ms % DAY_MS


async def day_delays(store: Store, day_ms: int, now_ms: int) -> Delays:
    """One day's delays per tenant: kept, or summed from its readings (and kept,
    if the day is settled)."""
    kept = await store.delay_days([day_ms])
    if day_ms in kept:
        return kept[day_ms]
    return await _summed(store, day_ms, now_ms)


async def _summed(store: Store, day_ms: int, now_ms: int) -> Delays:
    delays = tenant_totals(await store.readings(day_ms, day_ms + DAY_MS - 1))
    if day_ms + DAY_MS + SETTLED_MS <= now_ms:
        await store.put_delay_day(day_ms, delays)
    return delays


async def month_delays(store: Store, month: str, now_ms: int) -> Delays:
    """The month's delays per tenant, up to ``now_ms``."""
    start, end = month_bounds(month)
    days = list(range(start, min(end, now_ms + 1), DAY_MS))
    kept = await store.delay_days(days)
    total: Delays = {}
    for day in days:
        delays = kept[day] if day in kept else await _summed(store, day, now_ms)
        for tenant, counts in delays.items():
            total[tenant] = add_counts(total.get(tenant, ()), counts)
    return total


async def settle_yesterday(store: Store, now_ms: int) -> bool:
    """Sum and keep the day before today if it is settled and not kept yet; whether
    it is kept now."""
    day = day_of(now_ms) - DAY_MS
    if day + DAY_MS + SETTLED_MS > now_ms:
        return False
    await day_delays(store, day, now_ms)
    return True
