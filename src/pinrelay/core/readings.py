"""What a relay measures of itself every few seconds (monitors.py fills it in).

Monitors judge each reading red or green (core/monitors.py); the figures recorder
keeps them for incident reports and their charts.  Counts are since the previous
reading of the same relay, so readings of several relays add up.

Pure: a record, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import zip_longest

from msgspec import Struct, field

#: Upper bounds (ms) of the delivery-delay buckets of :attr:`Readings.delay_counts`;
#: the last bucket counts everything above the last bound.
DELAY_BOUNDS_MS: tuple[int, ...] = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    900_000,
    3_600_000,
)


def delay_bucket(delay_ms: int) -> int:
    """The index in :attr:`Readings.delay_counts` of a message delivered ``delay_ms``
    after it was accepted."""
    for n, bound in enumerate(DELAY_BOUNDS_MS):
        if delay_ms <= bound:
            return n
    return len(DELAY_BOUNDS_MS)


class Readings(Struct, frozen=True, kw_only=True):
    """One relay's figures at ``at_ms``."""

    at_ms: int
    node: str
    region: str
    #: Authenticated device links open now.
    links: int
    #: Messages stored (Store.stats, counted every 10 s; a cluster also counts
    #: acknowledged ones until their TTL removes them); None: not counted yet.
    backlog: int | None = None
    #: The delivery lag: the longest a message written to a link since the previous
    #: reading waited for it while the device was linked (from its acceptance, or
    #: the link's start if later: time offline is not the relay's delay), or, if
    #: longer, how long a linked device has been owed a message not sent yet, or the
    #: feed of new messages behind its streams (a cluster; DECISIONS 63); 0: none.
    lag_ms: int = 0
    #: Messages written to links since the previous reading.
    delivered: int = 0
    #: Those messages by that wait, one count per bucket
    #: of DELAY_BOUNDS_MS plus one for the rest; empty: none delivered.
    delay_counts: tuple[int, ...] = ()
    #: The same counts per tenant of the devices (tenant-less devices: none), for
    #: the delay targets of service levels (core/credits.py rule 5).
    tenant_delays: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Messages that expired unacknowledged since the previous reading.
    expired: int = 0
    #: Requests and links refused to shed load since the previous reading.
    shed: int = 0
    #: How long the store's probe write took (None: it failed or is still waiting).
    store_ms: int | None = None
    #: Bytes free on the data folder's file system (None: unknown).
    disk_free: int | None = None


def add_counts(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """Two runs of delay counts (by DELAY_BOUNDS_MS bucket) added."""
    return tuple(x + y for x, y in zip_longest(a, b, fillvalue=0))


def tenant_totals(readings: Iterable[Readings]) -> dict[str, tuple[int, ...]]:
    """The delay counts per tenant of ``readings``, added up."""
    total: dict[str, tuple[int, ...]] = {}
    for r in readings:
        for tenant, counts in r.tenant_delays.items():
            total[tenant] = add_counts(total.get(tenant, ()), counts)
    return total
