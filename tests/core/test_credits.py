"""core/credits.py and core/makegood.py: the credit rule by hand (no loop)."""

from __future__ import annotations

import pytest

from pinrelay.core.credits import (
    DelayTarget,
    ServiceLevel,
    credit,
    delivered_within,
    downtime_ms,
    month_bounds,
    month_of,
    table_percent,
)
from pinrelay.core.errors import PinrelayError
from pinrelay.core.incidents import Incident, open_incident, resolve
from pinrelay.core.makegood import is_code, new_code
from pinrelay.core.readings import DELAY_BOUNDS_MS

TABLE = [(99.9, 10.0), (99.0, 25.0), (95.0, 100.0)]
LEVEL = ServiceLevel(availability=99.9, fee=10_000, currency="EUR", credits=TABLE)
MIN = 60_000
START, END = month_bounds("2026-02")  # 28 days: 40,320 minutes


def incident(
    n: int, severity: str, start_min: int, end_min: int | None, tenants: tuple[str, ...] = ()
) -> Incident:
    at = START + start_min * MIN
    i = open_incident(f"I00000000000{n}", "store", severity, "x", at, tenants=tenants)  # type: ignore[arg-type]
    return i if end_min is None else resolve(i, None, START + end_min * MIN)


def test_a_month_is_its_utc_days() -> None:
    assert (END - START) // MIN == 40_320
    assert month_bounds("2024-02")[1] - month_bounds("2024-02")[0] == 29 * 86_400_000
    assert month_of(START) == "2026-02" and month_of(END - 1) == "2026-02"
    assert month_of(END) == "2026-03"
    for bad in ("2026-13", "2026-2", "1969-12", "March"):
        with pytest.raises(PinrelayError):
            month_bounds(bad)


def test_overlaps_count_once_at_the_heaviest_weight() -> None:
    # critical 0-100; major 50-150 (50-100 under the critical); minor 0-1000.
    spans = [
        incident(1, "critical", 0, 100),
        incident(2, "major", 50, 150),
        incident(3, "minor", 0, 1000),
    ]
    down, ids = downtime_ms(spans, "t", START, END, END)
    assert down == (100 + 50 * 0.5) * MIN
    assert ids == ("I000000000001", "I000000000002")
    # Two critical ones overlapping: their union, not their sum.
    both = [incident(1, "critical", 0, 100), incident(2, "critical", 60, 120)]
    assert downtime_ms(both, "t", START, END, END)[0] == 120 * MIN


def test_only_incidents_that_affect_the_tenant_count() -> None:
    spans = [incident(1, "critical", 0, 10, ("a",)), incident(2, "critical", 20, 30, ("b",))]
    assert downtime_ms(spans, "a", START, END, END)[0] == 10 * MIN
    assert downtime_ms(spans, "c", START, END, END)[0] == 0


def test_an_open_incident_counts_until_now_and_the_month_so_far() -> None:
    now = START + 1000 * MIN
    owed = credit(LEVEL, "t", "2026-02", [incident(1, "critical", 990, None)], now)
    assert owed.minutes == 1000 and owed.downtime_minutes == 10
    assert owed.availability == pytest.approx(99.0)  # not under 99.0: 10 %
    assert (owed.credit_percent, owed.amount) == (10.0, 1_000)


def test_the_table_gives_the_lowest_threshold_still_above() -> None:
    assert table_percent(TABLE, 99.95) == 0
    assert table_percent(TABLE, 99.9) == 0  # "below 99.9": 99.9 itself is not
    assert table_percent(TABLE, 99.5) == 10
    assert table_percent(TABLE, 98.0) == 25
    assert table_percent(TABLE, 10.0) == 100


def test_the_delay_target_is_assessed_only_with_figures() -> None:
    level = ServiceLevel(
        availability=99.9, fee=999, currency="USD", credits=TABLE,
        delay=DelayTarget(delay_ms=1_000, percent=99.0),
    )  # fmt: skip
    assert credit(level, "t", "2026-02", [], END).delivered_within is None
    counts = [0] * (len(DELAY_BOUNDS_MS) + 1)
    counts[DELAY_BOUNDS_MS.index(1_000)] = 970  # within 1 s
    counts[DELAY_BOUNDS_MS.index(2_500)] = 30  # later
    assert delivered_within(counts, 1_000) == 97.0
    assert delivered_within(counts, 1_500) == 97.0  # the straddling bucket is not counted
    owed = credit(level, "t", "2026-02", [], END, counts)
    # Availability 100 % (nothing owed); delay 97 % < 99 % target -> row "below 99.0": 25 %.
    assert (owed.delivered_within, owed.credit_percent, owed.amount) == (97.0, 25.0, 249)
    met = [0] * len(counts)
    met[0] = 1000
    assert credit(level, "t", "2026-02", [], END, met).credit_percent == 0


def test_codes_are_prefixed_crockford() -> None:
    code = new_code("SORRY", lambda n: b"\xff" * n)
    assert code == "SORRY-ZZZZZZZZZZZZ" and is_code(code)
    assert is_code(new_code(None, lambda n: bytes(n)))
    assert not is_code("SORRY-ZZZZZZZZZZZO") and not is_code("sorry-ZZZZZZZZZZZZ")
