"""core/uptime.py: uptime per component over 90 UTC days from incidents, checked
against hand calculations (no loop)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pinrelay.core.incidents import Component, Incident, Severity, open_incident, resolve
from pinrelay.core.uptime import DAY_MS, DAYS, component_uptime, percent, segments, uptimes

H = 3_600_000
#: 2027-01-15T00:00:00Z (a midnight), and "now" six hours later.
MIDNIGHT = 1_800_000_000_000 // DAY_MS * DAY_MS
NOW = MIDNIGHT + 6 * H
_n = iter(range(1, 10**6))


def inc(component: Component, severity: Severity, start: int, end: int | None = None) -> Incident:
    made = open_incident(f"I{next(_n):012d}", component, severity, "x", start)
    return made if end is None else resolve(made, None, end)


def test_no_incident_is_100_everywhere() -> None:
    found = uptimes([], NOW)
    assert [u.component for u in found] == ["store", "cluster", "links", "delivery"]
    for u in found:
        assert len(u.days) == DAYS and u.uptime == 100.0
        assert {d.state for d in u.days} == {"operational"}
        assert u.days[-1].start_ms == MIDNIGHT and u.days[-1].span_ms == 6 * H
        assert u.days[0].start_ms == MIDNIGHT - 89 * DAY_MS and u.days[0].span_ms == DAY_MS


def test_an_outage_across_midnight_counts_on_both_days() -> None:
    # 23:30 two days ago to 00:30 yesterday: half an hour on each.
    start = MIDNIGHT - DAY_MS - H // 2
    u = component_uptime("store", [inc("store", "critical", start, start + H)], NOW)
    before, yesterday, today = u.days[-3:]
    assert before.outage_ms == yesterday.outage_ms == H // 2 and today.outage_ms == 0
    assert before.state == yesterday.state == "outage" and today.state == "operational"
    assert before.uptime == 97.91  # 1 - 1800/86400 = 97.916..., rounded down
    span = 89 * DAY_MS + 6 * H
    assert u.uptime == percent(span - H, span) == 99.95  # 99.9533...


def test_overlapping_incidents_count_once_in_the_worst_state() -> None:
    day = MIDNIGHT - DAY_MS
    found = [
        inc("links", "major", day + 10 * H, day + 14 * H),
        inc("links", "critical", day + 11 * H, day + 12 * H),
        inc("links", "critical", day + 11 * H + H // 2, day + 12 * H + H // 2),
        inc("links", "minor", day + 13 * H, day + 15 * H),
    ]
    u = component_uptime("links", found, NOW)
    d = u.days[-2]
    # outage 11:00-12:30; degraded 10:00-11:00, 12:30-15:00.
    assert (d.outage_ms, d.degraded_ms) == (H + H // 2, H + 2 * H + H // 2)
    assert segments(found, NOW) == [
        (day + 10 * H, day + 11 * H, "degraded"),
        (day + 11 * H, day + 12 * H + H // 2, "outage"),
        (day + 12 * H + H // 2, day + 15 * H, "degraded"),
    ]


def test_degraded_time_is_up_but_shown() -> None:
    u = component_uptime("delivery", [inc("delivery", "major", MIDNIGHT - 5 * H, NOW)], NOW)
    assert u.uptime == 100.0
    assert [d.state for d in u.days[-2:]] == ["degraded", "degraded"]
    assert (u.days[-2].degraded_ms, u.days[-1].degraded_ms) == (5 * H, 6 * H)


def test_an_open_incident_counts_until_now() -> None:
    u = component_uptime("cluster", [inc("cluster", "critical", NOW - 2 * H)], NOW)
    today = u.days[-1]
    assert today.outage_ms == 2 * H and today.span_ms == 6 * H
    assert today.uptime == 66.66  # 4 of 6 hours


def test_the_window_is_90_days_and_other_components_are_not_counted() -> None:
    first = MIDNIGHT - 89 * DAY_MS
    found = [
        inc("store", "critical", first - 20 * DAY_MS, first - 10 * DAY_MS),  # before
        inc("store", "minor", first - DAY_MS, first + H),  # ends in the first day
        inc("links", "critical", NOW - H, NOW),  # another component
        inc("store", "critical", NOW + H, NOW + 2 * H),  # not begun (a skewed clock)
    ]
    u = component_uptime("store", found, NOW)
    assert u.days[0].degraded_ms == H and u.days[0].state == "degraded"
    assert all(d.outage_ms == 0 for d in u.days) and u.uptime == 100.0


def test_a_second_of_outage_is_not_100() -> None:
    u = component_uptime("store", [inc("store", "critical", NOW - 1000, NOW)], NOW)
    assert u.uptime == 99.99 and u.days[-1].uptime == 99.99
    assert percent(0, 0) == 100.0 and percent(5, 10) == 50.0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["minor", "major", "critical"]),
            st.integers(-100 * DAY_MS, 7 * H),
            st.integers(0, 10 * DAY_MS),
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_days_add_up_to_the_union_of_the_incidents(
    spec: list[tuple[Severity, int, int, bool]],
) -> None:
    found = [
        inc("store", sev, NOW + off, NOW + off + length if done else None)
        for sev, off, length, done in spec
    ]
    u = component_uptime("store", found, NOW)
    first = MIDNIGHT - 89 * DAY_MS
    covered = [(max(s, first), e) for s, e, _ in segments(found, NOW) if e > first]
    total = sum(e - s for s, e in covered if e > s)
    assert sum(d.outage_ms + d.degraded_ms for d in u.days) == total
    for d in u.days:
        assert 0 <= d.outage_ms + d.degraded_ms <= d.span_ms
        assert 0.0 <= d.uptime <= 100.0
    assert 0.0 <= u.uptime <= 100.0
    segs = segments(found, NOW)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(segs))
