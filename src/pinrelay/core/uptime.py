"""Uptime per component over the last 90 UTC days, from incidents (PROTOCOL
"Incidents and status", docs/DECISIONS.md entry 60).

Rules:

1. An incident covers its component from ``started_ms`` (when the failure began,
   not when it was opened) until ``resolved_ms``, or until ``now_ms`` while open.
   Its severity gives the state of that time (core/incidents.py ``STATE_OF``):
   ``critical`` is ``outage``, ``minor`` and ``major`` are ``degraded``.
2. Incidents of one component that overlap count once: at each instant the
   component is in the worst state of the incidents covering it.
3. Uptime is the share of the time observed that is not ``outage``; ``degraded``
   time counts as up (the service works, worse), and is shown as such per day.
4. The window is the last :data:`DAYS` UTC days, today included: the days before
   are whole (86,400 s), today counts until ``now_ms``.  A day's state is the worst
   it had (any outage: ``outage``; else any degraded time: ``degraded``).
5. Percentages are rounded down to two decimals (:func:`percent`), so that 100 means
   no outage at all and a second of outage already shows as 99.99.

The caller picks the incidents (the status page: the public ones).  Pure: no I/O,
no clock (``now_ms`` is passed in).
"""

from __future__ import annotations

from collections.abc import Iterable

from msgspec import Struct

from pinrelay.core.incidents import (
    COMPONENTS,
    STATE_OF,
    Component,
    ComponentState,
    Incident,
)

#: Days of the window (rule 4).
DAYS = 90
DAY_MS = 86_400_000
_RANK: dict[ComponentState, int] = {"operational": 0, "degraded": 1, "outage": 2}
_STATE: tuple[ComponentState, ...] = ("operational", "degraded", "outage")


class Day(Struct, frozen=True, kw_only=True):
    """One UTC day of one component."""

    #: Its midnight (UTC), ms since the epoch.
    start_ms: int
    #: The time observed: a whole day, or today until now.
    span_ms: int
    outage_ms: int = 0
    #: Time degraded and not in outage.
    degraded_ms: int = 0

    @property
    def state(self) -> ComponentState:
        if self.outage_ms:
            return "outage"
        return "degraded" if self.degraded_ms else "operational"

    @property
    def uptime(self) -> float:
        return percent(self.span_ms - self.outage_ms, self.span_ms)


class ComponentUptime(Struct, frozen=True, kw_only=True):
    component: Component
    #: :data:`DAYS` days, oldest first; the last is today.
    days: tuple[Day, ...]

    @property
    def uptime(self) -> float:
        """Over the whole window (rule 3)."""
        span = sum(d.span_ms for d in self.days)
        return percent(span - sum(d.outage_ms for d in self.days), span)


def percent(up_ms: int, span_ms: int) -> float:
    """``up_ms`` of ``span_ms`` in percent, rounded down to two decimals (rule 5);
    100 for an empty span."""
    if span_ms <= 0:
        return 100.0
    return max(0, min(up_ms, span_ms)) * 10_000 // span_ms / 100


def segments(incidents: Iterable[Incident], now_ms: int) -> list[tuple[int, int, ComponentState]]:
    """The times ``incidents`` (of one component) cover, as non-overlapping
    ``(start_ms, end_ms, state)`` in order, each in the worst state covering it
    (rules 1 and 2); times no incident covers are left out."""
    events: list[tuple[int, int, int]] = []  # (time, +1 start / -1 end, rank)
    for i in incidents:
        end = i.resolved_ms if i.resolved_ms is not None else now_ms
        end = min(end, now_ms)
        if end <= i.started_ms:
            continue
        rank = _RANK[STATE_OF[i.severity]]
        events.append((i.started_ms, 1, rank))
        events.append((end, -1, rank))
    events.sort()
    counts = [0, 0, 0]
    out: list[tuple[int, int, ComponentState]] = []
    last = 0
    for at, delta, rank in events:
        worst = 2 if counts[2] else (1 if counts[1] else 0)
        if worst and at > last:
            if out and out[-1][1] == last and out[-1][2] == _STATE[worst]:
                out[-1] = (out[-1][0], at, _STATE[worst])  # the same state goes on
            else:
                out.append((last, at, _STATE[worst]))
        counts[rank] += delta
        last = at
    return out


def component_uptime(
    component: Component, incidents: Iterable[Incident], now_ms: int, days: int = DAYS
) -> ComponentUptime:
    """``component``'s days over the window ending ``now_ms`` (rules 1-4), from
    ``incidents`` (those of other components are skipped)."""
    today = now_ms // DAY_MS * DAY_MS
    first = today - (days - 1) * DAY_MS
    outage = [0] * days
    degraded = [0] * days
    mine = [i for i in incidents if i.component == component]
    for start, end, state in segments(mine, now_ms):
        start = max(start, first)
        while start < end:
            n = (start - first) // DAY_MS
            cut = min(end, first + (n + 1) * DAY_MS)
            if state == "outage":
                outage[n] += cut - start
            else:
                degraded[n] += cut - start
            start = cut
    return ComponentUptime(
        component=component,
        days=tuple(
            Day(
                start_ms=first + n * DAY_MS,
                span_ms=DAY_MS if n < days - 1 else now_ms - today,
                outage_ms=outage[n],
                degraded_ms=degraded[n],
            )
            for n in range(days)
        ),
    )


def uptimes(incidents: Iterable[Incident], now_ms: int, days: int = DAYS) -> list[ComponentUptime]:
    """Every component's (COMPONENTS order) over the window ending ``now_ms``."""
    found = list(incidents)
    return [component_uptime(c, found, now_ms, days) for c in COMPONENTS]
