"""Service levels and the credits a tenant is owed (PROTOCOL "Service credits").

A tenant's service level names what the relay promises it (an availability
target, optionally a delivery-delay target), what it pays (a monthly fee in
integer minor units) and a credit table: rows of (availability below %, credit %
of the fee).  Rules:

1. The month is a UTC calendar month, in milliseconds [start, end).  For a month
   not over yet, ``end`` is ``now``: availability so far.
2. Downtime counts the incidents that affect the tenant (Incident.affects: they name
   it or name no tenant), each from ``started_ms`` to ``resolved_ms`` (open: until
   ``now``), clipped to the month.  A ``critical`` incident (an outage) counts every
   minute; a ``major`` one (degraded service) counts half of each minute
   (:data:`WEIGHT`); a ``minor`` one counts nothing.
3. Overlapping incidents count once: at each instant the heaviest weight among the
   incidents then open counts, never their sum.
4. Availability = 100 * (1 - downtime / length of the month so far), in percent.
5. The delay target ("``percent`` % of messages delivered within ``delay_ms``") is
   assessed only from delivery-delay counts (core/readings.py ``delay_counts``)
   when the caller has them; else it is "not assessed".  Delivered within the
   target = the messages in the buckets whose upper bound is at most ``delay_ms``
   (a target between two bounds counts only the buckets below it: a message in
   the bucket that straddles the target may have been later than it).
6. Credit: the row with the lowest "below" that the measured value is still under
   (the table's highest matching row) gives its %; availability and delay are each
   looked up (delay only when under its own target), and the larger % is owed:
   ``fee * % / 100``, rounded down to a whole minor unit.

Pure: no I/O, no clock (``now_ms`` is passed in).
"""

from __future__ import annotations

import calendar
import itertools
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated

from msgspec import Meta, Struct

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import Incident, Severity
from pinrelay.core.readings import DELAY_BOUNDS_MS

#: How much of each minute an open incident of each severity counts as down (rule 2).
WEIGHT: dict[Severity, float] = {"critical": 1.0, "major": 0.5, "minor": 0.0}
#: ``YYYY-MM`` from 1970 on.
MONTH_PATTERN = r"^(19[7-9]\d|[2-9]\d{3})-(0[1-9]|1[0-2])$"
MONTH_RE = re.compile(MONTH_PATTERN)
Percent = Annotated[float, Meta(ge=0, le=100)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
#: Most rows of a credit table.
MAX_ROWS = 20


class DelayTarget(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``percent`` % of messages delivered within ``delay_ms`` (e.g. p99 within 1 s)."""

    delay_ms: Annotated[int, Meta(gt=0)]
    percent: Percent = 99.0


class ServiceLevel(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the relay promises one tenant, and what it owes when it falls short."""

    #: Availability promised over a month, in percent (e.g. 99.9).
    availability: Percent
    #: Monthly fee, in integer minor units of ``currency`` (e.g. cents).
    fee: Annotated[int, Meta(ge=0)]
    currency: Currency
    #: Rows of [availability below %, credit % of the fee].
    credits: Annotated[list[tuple[Percent, Percent]], Meta(min_length=1, max_length=MAX_ROWS)]
    delay: DelayTarget | None = None


class Credit(Struct, frozen=True, kw_only=True):
    """What one tenant is owed for one month."""

    tenant: str
    month: str
    #: Measured availability, percent (rule 4).
    availability: float
    #: Minutes counted as down (rule 2-3), and the minutes of the month so far.
    downtime_minutes: float
    minutes: float
    #: Percent of messages delivered within the delay target; None: not assessed.
    delivered_within: float | None
    credit_percent: float
    #: ``fee * credit_percent / 100``, in minor units, rounded down.
    amount: int
    currency: str
    #: Incidents that counted (their ids).
    incidents: tuple[str, ...] = ()


def month_bounds(month: str) -> tuple[int, int]:
    """The UTC month ``YYYY-MM`` as [start, end) in milliseconds."""
    m = MONTH_RE.fullmatch(month)
    if m is None:
        raise PinrelayError(f"not a month (YYYY-MM, from 1970): {month!r}", ErrorCode.INVALID)
    year, mon = int(m[1]), int(m[2])
    start = calendar.timegm((year, mon, 1, 0, 0, 0)) * 1000
    days = calendar.monthrange(year, mon)[1]
    return start, start + days * 86_400_000


def month_of(now_ms: int) -> str:
    """The UTC month ``YYYY-MM`` holding ``now_ms``."""
    t = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    return f"{t.year:04d}-{t.month:02d}"


def downtime_ms(
    incidents: Iterable[Incident], tenant: str, start_ms: int, end_ms: int, now_ms: int
) -> tuple[float, tuple[str, ...]]:
    """Weighted milliseconds down in [start_ms, end_ms) (rules 2-3), and the ids of
    the incidents that counted."""
    spans: list[tuple[int, int, float]] = []
    ids: list[str] = []
    for i in incidents:
        weight = WEIGHT[i.severity]
        if weight <= 0 or not (not i.tenants or tenant in i.tenants):
            continue
        lo = max(i.started_ms, start_ms)
        hi = min(now_ms if i.resolved_ms is None else i.resolved_ms, end_ms)
        if hi > lo:
            spans.append((lo, hi, weight))
            ids.append(i.id)
    # Sweep: between two consecutive edges, the heaviest span open counts (rule 3).
    edges = sorted({e for lo, hi, _ in spans for e in (lo, hi)})
    total = 0.0
    for a, b in itertools.pairwise(edges):
        w = max((wt for lo, hi, wt in spans if lo <= a and b <= hi), default=0.0)
        total += (b - a) * w
    return total, tuple(sorted(ids))


def delivered_within(delay_counts: Sequence[int], delay_ms: int) -> float | None:
    """Percent of the counted messages delivered within ``delay_ms`` (rule 5);
    None if none were counted."""
    total = sum(delay_counts)
    if total == 0:
        return None
    inside = sum(
        n for n, bound in zip(delay_counts, DELAY_BOUNDS_MS, strict=False) if bound <= delay_ms
    )
    return 100.0 * inside / total


def table_percent(credits: Sequence[tuple[float, float]], measured: float) -> float:
    """The credit % of the lowest threshold that ``measured`` is under (rule 6)."""
    matching = [(below, pct) for below, pct in credits if measured < below]
    return min(matching)[1] if matching else 0.0


def credit(
    level: ServiceLevel,
    tenant: str,
    month: str,
    incidents: Iterable[Incident],
    now_ms: int,
    delay_counts: Sequence[int] | None = None,
) -> Credit:
    """What ``tenant`` is owed for ``month`` under ``level`` (rules 1-6)."""
    start, end = month_bounds(month)
    end = max(start, min(end, now_ms))
    down, ids = downtime_ms(incidents, tenant, start, end, now_ms)
    length = end - start
    availability = 100.0 if length == 0 else 100.0 * (1 - down / length)
    percent = table_percent(level.credits, availability)
    within: float | None = None
    if level.delay is not None and delay_counts is not None:
        within = delivered_within(delay_counts, level.delay.delay_ms)
        if within is not None and within < level.delay.percent:
            percent = max(percent, table_percent(level.credits, within))
    return Credit(
        tenant=tenant,
        month=month,
        availability=availability,
        downtime_minutes=down / 60_000,
        minutes=length / 60_000,
        delivered_within=within,
        credit_percent=percent,
        amount=int(level.fee * percent // 100),
        currency=level.currency,
        incidents=ids,
    )
