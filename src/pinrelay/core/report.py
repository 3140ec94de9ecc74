"""An incident's report: what it cost, from the relays' recorded figures (issue 16).

:func:`report` takes an incident, the readings (core/readings.py) every relay
recorded around it (figures.py keeps them in the store), and the notifications
sent, and computes, by these rules:

1. The incident's window runs from ``started_ms`` to ``resolved_ms`` (an open one:
   to ``now_ms``).  Detection delay is ``opened_ms - started_ms`` (0 for an
   operator's incident, opened when it was started).
2. The relays in scope are those of the incident's region (None: every relay).
   A reading counts what happened since the previous reading of its relay, so the
   readings taken in ``(start, end]`` count what happened during the incident, and
   the sums of several relays add up.
3. Devices affected (an estimate): the links each relay in scope held when the
   incident started (its last reading at or before the start, else its first one
   after), summed.  Tenants affected: the incident's, or ``"all"``.
4. Messages delayed: those delivered during the incident later than
   ``delayed_over_ms`` after they were accepted (a bound of DELAY_BOUNDS_MS, so the
   count is exact).  The delay distribution is the delay buckets summed; a
   percentile is the upper bound of the bucket it falls in (None: above the last
   bound, or nothing delivered).
5. A region's impaired time: how long, during the window, at least one of its
   relays reported a delivery lag above ``delayed_over_ms`` (each reading stands
   for the interval since its relay's previous reading).
6. Messages expired undelivered: the readings' ``expired``, summed (should be 0).
7. Notifications: what the caller says was sent (webhooks, devices), else the
   incident's timeline (each update was shown on the status page when written).

Pure: no I/O, no clock (``now_ms`` is passed in).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

from msgspec import Struct

from pinrelay.core.incidents import Component, Incident, IncidentState, Severity
from pinrelay.core.readings import DELAY_BOUNDS_MS, Readings

#: Delivered later than this (ms) after acceptance is "delayed" (rule 4).
DELAYED_OVER_MS = 1_000
#: Readings fetched before the start and after the end, for the chart's context.
MARGIN_MS = 15 * 60_000

Event = Literal["opened", "updated", "resolved"]


class Notification(Struct, frozen=True, kw_only=True):
    """One notice sent about the incident (rule 7)."""

    at_ms: int
    event: Event
    #: Where it went: ``status`` (the status page and its feed), ``devices``,
    #: ``webhook`` ...
    channel: str
    #: How many recipients, when counted.
    count: int | None = None
    text: str | None = None


class RegionTime(Struct, frozen=True, kw_only=True):
    region: str
    #: Relays of the region that recorded readings in the window.
    relays: int
    #: Rule 5.
    impaired_ms: int


class Report(Struct, frozen=True, kw_only=True):
    incident: str
    state: IncidentState
    component: Component
    severity: Severity
    region: str | None
    started_ms: int
    opened_ms: int
    detection_delay_ms: int
    #: None: still open (the figures run to ``now_ms``).
    ended_ms: int | None
    duration_ms: int
    regions: tuple[RegionTime, ...]
    devices_affected: int
    tenants_affected: tuple[str, ...] | Literal["all"]
    delivered: int
    delayed: int
    delayed_over_ms: int
    delay_bounds_ms: tuple[int, ...]
    delay_counts: tuple[int, ...]
    delay_p50_ms: int | None
    delay_p90_ms: int | None
    delay_p99_ms: int | None
    expired: int
    notifications: tuple[Notification, ...]
    #: Readings the figures came from, and the relays that recorded them.
    readings: int
    relays: tuple[str, ...]


def window(incident: Incident, now_ms: int) -> tuple[int, int]:
    """The readings a report needs: from ``MARGIN_MS`` before the start to as long
    after the end (rule 1)."""
    end = incident.resolved_ms if incident.resolved_ms is not None else now_ms
    return incident.started_ms - MARGIN_MS, end + MARGIN_MS


def in_scope(incident: Incident, readings: Iterable[Readings]) -> list[Readings]:
    """The readings of the relays the incident covers (rule 2), oldest first."""
    kept = [r for r in readings if incident.region is None or r.region == incident.region]
    kept.sort(key=lambda r: (r.at_ms, r.node))
    return kept


def percentile(counts: Sequence[int], p: float) -> int | None:
    """The upper bound of the bucket holding the ``p`` quantile (rule 4)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(p * total))
    seen = 0
    for n, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return DELAY_BOUNDS_MS[n] if n < len(DELAY_BOUNDS_MS) else None
    return None


def timeline_notices(incident: Incident) -> list[Notification]:
    """Rule 7's fallback: each timeline entry, shown on the status page when written."""
    last = len(incident.updates) - 1
    notices = []
    for n, u in enumerate(incident.updates):
        event: Event = "opened" if n == 0 else "updated"
        if n == last and n > 0 and incident.state == "resolved":
            event = "resolved"
        notices.append(Notification(at_ms=u.at_ms, event=event, channel="status", text=u.text))
    return notices


def _impaired_ms(readings: Sequence[Readings], start: int, end: int, over_ms: int) -> int:
    """Rule 5 for one region's readings (oldest first): the union of the intervals
    its relays reported a lag above ``over_ms``, clipped to ``[start, end]``."""
    previous: dict[str, int] = {}
    spans: list[tuple[int, int]] = []
    for r in readings:
        before = previous.get(r.node)
        previous[r.node] = r.at_ms
        if before is None or r.lag_ms <= over_ms:
            continue
        lo, hi = max(before, start), min(r.at_ms, end)
        if hi > lo:
            spans.append((lo, hi))
    spans.sort()
    total, reach = 0, start
    for lo, hi in spans:
        lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


def _links_at_start(readings: Sequence[Readings], start: int) -> int:
    """Rule 3: each relay's links at the start, summed."""
    before: dict[str, Readings] = {}
    after: dict[str, Readings] = {}
    for r in readings:  # oldest first
        if r.at_ms <= start:
            before[r.node] = r  # the last at or before the start
        else:
            after.setdefault(r.node, r)  # the first after it
    return sum((before.get(n) or after[n]).links for n in before.keys() | after.keys())


def report(
    incident: Incident,
    readings: Iterable[Readings],
    now_ms: int,
    *,
    sent: Sequence[Notification] = (),
    delayed_over_ms: int = DELAYED_OVER_MS,
) -> Report:
    """The report of ``incident`` from the ``readings`` of its window (:func:`window`)
    and the notifications ``sent`` (rules at the top)."""
    if delayed_over_ms not in DELAY_BOUNDS_MS:
        raise ValueError(f"delayed_over_ms must be one of {DELAY_BOUNDS_MS}")
    start = incident.started_ms
    end = incident.resolved_ms if incident.resolved_ms is not None else max(now_ms, start)
    opened = incident.opened_ms if incident.opened_ms is not None else start
    scoped = in_scope(incident, readings)
    during = [r for r in scoped if start < r.at_ms <= end]
    buckets = [0] * (len(DELAY_BOUNDS_MS) + 1)
    for r in during:
        for n, count in enumerate(r.delay_counts[: len(buckets)]):
            buckets[n] += count
    first_delayed = DELAY_BOUNDS_MS.index(delayed_over_ms) + 1
    regions = sorted({r.region for r in scoped} | ({incident.region} if incident.region else set()))
    region_times = []
    for region in regions:
        mine = [r for r in scoped if r.region == region]
        region_times.append(
            RegionTime(
                region=region,
                relays=len({r.node for r in mine if start < r.at_ms <= end}),
                impaired_ms=_impaired_ms(mine, start, end, delayed_over_ms),
            )
        )
    return Report(
        incident=incident.id,
        state=incident.state,
        component=incident.component,
        severity=incident.severity,
        region=incident.region,
        started_ms=start,
        opened_ms=opened,
        detection_delay_ms=max(0, opened - start),
        ended_ms=incident.resolved_ms,
        duration_ms=end - start,
        regions=tuple(region_times),
        devices_affected=_links_at_start(scoped, start),
        tenants_affected=incident.tenants or "all",
        delivered=sum(r.delivered for r in during),
        delayed=sum(buckets[first_delayed:]),
        delayed_over_ms=delayed_over_ms,
        delay_bounds_ms=DELAY_BOUNDS_MS,
        delay_counts=tuple(buckets),
        delay_p50_ms=percentile(buckets, 0.50),
        delay_p90_ms=percentile(buckets, 0.90),
        delay_p99_ms=percentile(buckets, 0.99),
        expired=sum(r.expired for r in during),
        notifications=tuple(sorted(sent or timeline_notices(incident), key=lambda n: n.at_ms)),
        readings=len(scoped),
        relays=tuple(sorted({r.node for r in scoped})),
    )
