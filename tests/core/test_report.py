"""An incident's report from synthetic readings matches a hand calculation
(core/report.py, rules 1-7)."""

from __future__ import annotations

import pytest

from pinrelay.core.incidents import Incident, add_update, open_incident, resolve
from pinrelay.core.readings import DELAY_BOUNDS_MS, Readings
from pinrelay.core.report import MARGIN_MS, Notification, RegionTime, percentile, report, window

T = 1_000_000_000
EMPTY = (0,) * (len(DELAY_BOUNDS_MS) + 1)


def counts(**at: int) -> tuple[int, ...]:
    """Delay buckets with ``b<index>=count``."""
    out = list(EMPTY)
    for name, n in at.items():
        out[int(name[1:])] = n
    return tuple(out)


def incident(region: str | None = None) -> Incident:
    i = open_incident(
        "I000000000001", "delivery", "major", "Slow", T, region=region,
        tenants=["t1"], source="auto", opened_ms=T + 30_000,
    )  # fmt: skip
    i = add_update(i, "Found it", T + 60_000)
    return resolve(i, "Fixed", T + 120_000)


def readings() -> list[Readings]:
    out = []
    for k in range(-2, 15):  # n1 (eu) and n2 (us) every 10 s, T-20 s .. T+140 s
        at = T + k * 10_000
        n1 = dict(links=100, delivered=10, delay_counts=counts(b0=10))
        if k == 3:
            n1["delay_counts"] = counts(b0=5, b4=5)  # 5 delayed (2.5 s bucket)
        n2: dict[str, object] = dict(links=50)
        if k == 6:
            n2.update(delivered=4, delay_counts=counts(b3=2, b12=2))  # 1 s: not delayed
        if k in (0, 13):  # at the start and after the end: not during
            n1.update(delivered=1000, delay_counts=counts(b12=1000))
            n2.update(expired=99)
        if k == 12:
            n2.update(expired=3)  # at the end: during
        if k in (2, 3):
            n1.update(lag_ms=5_000)  # (T+10 s, T+30 s]
        if k in (-1, 6, 13):
            n2.update(lag_ms=2_000)  # before, (T+50 s, T+60 s], after
        out.append(Readings(at_ms=at, node="n1", region="eu", **n1))  # type: ignore[arg-type]
        out.append(Readings(at_ms=at, node="n2", region="us", **n2))  # type: ignore[arg-type]
        # n3 (eu), 5 s later than the others; lagging over (T+15 s, T+25 s]
        out.append(
            Readings(at_ms=at + 5_000, node="n3", region="eu", links=7, lag_ms=3000 * (k == 2))
        )
    return out


def test_a_report_matches_the_hand_calculation() -> None:
    i = incident()
    r = report(i, reversed(readings()), now_ms=T + 999_999)
    assert (r.started_ms, r.opened_ms, r.ended_ms) == (T, T + 30_000, T + 120_000)
    assert (r.detection_delay_ms, r.duration_ms) == (30_000, 120_000)
    assert r.tenants_affected == ("t1",)
    # n1 100 and n2 50 at the start; n3 had none then: its first after, 7.
    assert r.devices_affected == 157
    assert r.delivered == 12 * 10 + 4
    assert r.delayed == 5 + 2
    assert r.delay_counts == counts(b0=115, b3=2, b4=5, b12=2)
    assert (r.delay_p50_ms, r.delay_p90_ms, r.delay_p99_ms) == (100, 100, None)
    assert r.expired == 3
    # eu: n1 (T+10, T+30] and n3 (T+15, T+25] overlap: 20 s; us: (T+50, T+60].
    assert r.regions == (
        RegionTime(region="eu", relays=2, impaired_ms=20_000),
        RegionTime(region="us", relays=1, impaired_ms=10_000),
    )
    assert [(n.event, n.at_ms, n.channel) for n in r.notifications] == [
        ("opened", T + 30_000, "status"),
        ("updated", T + 60_000, "status"),
        ("resolved", T + 120_000, "status"),
    ]
    assert r.relays == ("n1", "n2", "n3") and r.readings == 17 * 3


def test_a_regional_incident_counts_its_region_only() -> None:
    r = report(incident("us"), readings(), now_ms=T)
    assert (r.devices_affected, r.delivered, r.delayed, r.expired) == (50, 4, 2, 3)
    assert r.regions == (RegionTime(region="us", relays=1, impaired_ms=10_000),)
    assert r.relays == ("n2",)


def test_an_operator_incident_still_open_runs_to_now_and_names_everyone() -> None:
    i = open_incident("I000000000002", "store", "critical", "Down", T)
    r = report(i, [], now_ms=T + 5_000)
    assert (r.detection_delay_ms, r.duration_ms, r.ended_ms) == (0, 5_000, None)
    assert r.tenants_affected == "all" and r.devices_affected == 0 and r.regions == ()
    assert (r.delivered, r.delay_p50_ms) == (0, None)
    assert window(i, T + 5_000) == (T - MARGIN_MS, T + 5_000 + MARGIN_MS)


def test_notifications_given_replace_the_timeline() -> None:
    sent = [
        Notification(at_ms=T + 2, event="opened", channel="webhook", count=1),
        Notification(at_ms=T + 1, event="opened", channel="devices", count=40),
    ]
    r = report(incident(), [], now_ms=T, sent=sent)
    assert [n.channel for n in r.notifications] == ["devices", "webhook"]


def test_percentiles_are_bucket_upper_bounds() -> None:
    assert percentile(counts(b1=1, b2=1), 0.5) == 250
    assert percentile(counts(b1=1, b2=1), 0.51) == 500
    assert percentile(EMPTY, 0.5) is None
    with pytest.raises(ValueError):
        report(incident(), [], now_ms=T, delayed_over_ms=999)
