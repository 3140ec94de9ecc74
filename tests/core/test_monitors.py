"""core/monitors.py: which readings are red, and the automatic incident rules 1-3."""

from __future__ import annotations

from pinrelay.core.incidents import Component, open_incident, resolve, take_over
from pinrelay.core.monitors import (
    AutoIncidents,
    Finding,
    Open,
    Peak,
    Resolve,
    TakeOver,
    Thresholds,
    Update,
    auto_incident_id,
    judge,
)
from pinrelay.core.readings import Readings

T = Thresholds()
T0 = 1_800_000_000_000


def reading(**kw: object) -> Readings:
    base: dict[str, object] = {"at_ms": T0, "node": "n1", "region": "eu", "links": 100}
    base.update(kw)
    return Readings(**base)  # type: ignore[arg-type]


def test_a_healthy_reading_is_green() -> None:
    assert judge(reading(store_ms=3, disk_free=10**10), T, peak_links=100) == []


def test_each_monitor_turns_its_component_red() -> None:
    assert judge(reading(store_ms=None), T, peak_links=0) == [
        Finding("store", "critical", "Messages cannot be stored: store writes fail")
    ]
    assert judge(reading(store_ms=2500), T, peak_links=0)[0].severity == "major"
    assert judge(reading(store_ms=5), T, peak_links=0, probe_age_ms=6000)[0].severity == "critical"
    assert [f.component for f in judge(reading(store_ms=5), T, peak_links=0, connected=False)] == [
        "cluster"
    ]
    fell = judge(reading(store_ms=5, links=12_345), T, peak_links=40_000)
    assert fell == [Finding("links", "major", "Linked devices fell from 40000 to about 12000")]
    assert judge(reading(store_ms=5, links=10), T, peak_links=40) == []  # below links_min
    late = judge(reading(store_ms=5, lag_ms=95_000), T, peak_links=0)
    assert late == [Finding("delivery", "major", "Deliveries are late by over 1 min")]
    soon = judge(reading(store_ms=5, lag_ms=T.lag_ms), T, peak_links=0)
    assert soon == [Finding("delivery", "major", "Deliveries are late by up to a minute")]
    # Shedding (minor) and lag (major) on one component: the worst is kept.
    both = judge(reading(store_ms=5, lag_ms=95_000, shed=500), T, peak_links=0)
    assert [f.severity for f in both] == ["major"]
    disk = judge(reading(store_ms=5, disk_free=1024 * 1024), T, peak_links=0)
    assert disk == [Finding("store", "major", "The store's disk is almost full (1 MiB free)")]


def test_the_peak_is_the_most_links_in_its_window() -> None:
    peak = Peak(window_ms=1000)
    assert peak.add(0, 5) == 5
    assert peak.add(10, 9) == 9
    assert peak.add(20, 3) == 9
    assert peak.add(1011, 2) == 3  # the 9 at 10 left the window
    assert peak.add(2000, 1) == 2


FAIL = Finding("store", "critical", "Messages cannot be stored: store writes fail")


def test_an_incident_opens_after_the_threshold_and_resolves_after_green() -> None:
    auto = AutoIncidents("n1", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    assert auto.step(T0, [FAIL], []) == []
    assert auto.step(T0 + 2999, [FAIL], []) == []
    [opened] = auto.step(T0 + 3000, [FAIL], [])
    assert opened == Open(FAIL, T0, FAIL.text)
    incident = open_incident(
        auto_incident_id("store", "eu", T0),
        "store",
        "critical",
        FAIL.text,
        T0,
        opened_ms=T0 + 3000,
        holder="n1",
        source="auto",
        region="eu",
    )
    assert auto.step(T0 + 4000, [FAIL], [incident]) == []  # held: no second
    slower = Finding("store", "critical", "Store writes are slow")
    assert auto.step(T0 + 5000, [slower], [incident]) == []  # an update waits a minute
    [update] = auto.step(T0 + 63_000, [slower], [incident])
    assert update == Update(incident, "Store writes are slow")
    # Every 5 minutes while it lasts, an update with the figures of the moment.
    [still] = auto.step(T0 + 363_000, [slower], [incident], figures="3 devices")
    assert still == Update(incident, "Still failing after 6 min: Store writes are slow. 3 devices")
    assert auto.step(T0 + 370_000, [], [incident]) == []
    [done] = auto.step(T0 + 375_000, [], [incident])
    assert isinstance(done, Resolve) and done.incident == incident
    assert "after about 6 min" in done.text
    # A red that came back while green broke the run: it counts from its start.
    assert auto.step(T0 + 380_000, [FAIL], [resolve(incident, None, T0 + 375_000)]) == []


def test_relays_that_see_one_failure_derive_one_id_and_only_the_holder_acts() -> None:
    a = AutoIncidents("n1", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    b = AutoIncidents("n2", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    a.step(T0 + 100, [FAIL], [])
    b.step(T0 + 900, [FAIL], [])
    [oa] = a.step(T0 + 3100, [FAIL], [])
    [ob] = b.step(T0 + 3900, [FAIL], [])
    assert isinstance(oa, Open) and isinstance(ob, Open)
    iid = auto_incident_id("store", "eu", oa.started_ms)
    assert iid == auto_incident_id("store", "eu", ob.started_ms)
    assert iid != auto_incident_id("store", "eu", oa.started_ms, 1)
    held = open_incident(iid, "store", "critical", FAIL.text, T0, holder="n1", source="auto")
    alive = frozenset({"n1", "n2"})
    assert b.step(T0 + 20_000, [], [held], alive) == []  # n1 acts, n2 does not
    assert b.step(T0 + 30_000, [], [held], frozenset({"n2"})) == []  # missing: not yet
    assert b.step(T0 + 44_999, [], [held], frozenset({"n2"})) == []
    assert b.step(T0 + 45_000, [], [held], frozenset({"n2"})) == [TakeOver(held)]
    mine = take_over(held, "n2")
    assert mine.holder == "n2" and mine.updates == held.updates and mine.rev == held.rev + 1
    [done] = b.step(T0 + 45_001, [], [mine], frozenset({"n2"}))
    assert isinstance(done, Resolve)


def test_of_two_incidents_of_one_failure_the_newer_is_resolved_by_its_holder() -> None:
    a = AutoIncidents("n1", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    older = open_incident(
        "I000000000001", "store", "critical", FAIL.text, T0, holder="n2", source="auto"
    )
    newer = open_incident(
        "I000000000002", "store", "critical", FAIL.text, T0 + 5, holder="n1", source="auto"
    )
    alive = frozenset({"n1", "n2"})
    assert a.step(T0 + 10, [FAIL], [newer, older], alive) == [
        Resolve(newer, "Continues as incident I000000000001.")
    ]
    b = AutoIncidents("n2", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    assert b.step(T0 + 10, [FAIL], [newer, older], alive) == []  # n1 acts for it


def test_a_holder_is_not_missing_while_the_store_and_its_heartbeats_are_away() -> None:
    """Heartbeats stop for every relay while the store is away: the holder's absence
    then says nothing.  Once the store is back, the holder has ``takeover_ms`` to
    show up again before another relay takes its incident over."""
    b = AutoIncidents("n2", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    held = open_incident(
        auto_incident_id("links", "eu", T0), "links", "major", "x", T0, holder="n1", source="auto"
    )
    only_me = frozenset({"n2"})
    for t in range(0, 60_000, 1000):  # a minute without the store (nor heartbeats)
        assert b.step(T0 + t, [], [held], only_me, store_ok=False) == []
    back = T0 + 60_000  # the store answers; n1's heartbeat has not come in yet
    assert b.step(back, [], [held], only_me) == []
    assert b.step(back + 2000, [], [held], frozenset({"n1", "n2"})) == []  # it has
    # n1 is really gone this time: taken over after takeover_ms of its absence.
    assert b.step(back + 3000, [], [held], only_me) == []
    assert b.step(back + 17_999, [], [held], only_me) == []
    assert b.step(back + 18_000, [], [held], only_me) == [TakeOver(held)]


def test_a_resolved_incident_leaves_no_take_over_timer_behind() -> None:
    b = AutoIncidents("n2", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    held = open_incident(
        auto_incident_id("links", "eu", T0), "links", "major", "x", T0, holder="n1", source="auto"
    )
    assert b.step(T0, [], [held], frozenset({"n2"})) == []
    assert b.step(T0 + 1000, [], [], frozenset({"n2"})) == []  # resolved meanwhile
    assert b._missing == {}


def test_an_incident_full_of_updates_gets_no_more_but_still_resolves() -> None:
    """An incident holds MAX_UPDATES updates, the last one kept for its resolving
    text: past that, core/incidents.py add_update refuses, so no Update is asked for
    (one every 5 minutes reaches it in about 41 hours)."""
    from pinrelay.core.incidents import MAX_UPDATES, add_update

    auto = AutoIncidents("n1", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    incident = open_incident(
        auto_incident_id("store", "eu", T0), "store", "critical", FAIL.text, T0,
        holder="n1", source="auto",
    )  # fmt: skip
    for n in range(MAX_UPDATES - 2):
        incident = add_update(incident, f"Still failing {n}", T0 + n)
    assert len(incident.updates) == MAX_UPDATES - 1
    assert auto.step(T0 + 10_000_000, [FAIL], [incident]) == []
    assert auto.step(T0 + 20_000_000, [FAIL], [incident]) == []
    auto.step(T0 + 20_001_000, [], [incident])
    [done] = auto.step(T0 + 20_006_000, [], [incident])
    assert isinstance(done, Resolve)
    resolve(incident, done.text, T0 + 20_006_000)  # fits


MAX_STEP_MS = 5000


def test_a_clock_that_jumps_neither_opens_nor_resolves_before_its_time() -> None:
    """The wall clock steps (NTP, a VM resumed): red and green runs count the time the
    relay lived through, a step of at most ``max_step_ms`` at a time."""
    auto = AutoIncidents(
        "n1", "eu", incident_after_ms=20_000, resolve_after_ms=60_000, max_step_ms=MAX_STEP_MS
    )
    assert auto.step(T0, [FAIL], []) == []
    assert auto.step(T0 + 1000, [FAIL], []) == []
    hour = 3_600_000
    assert auto.step(T0 + hour + 2000, [FAIL], []) == []  # forward an hour: not 20 s red
    assert auto.step(T0 + 3000, [FAIL], []) == []  # and back: not a negative run
    t = T0 + 3000
    while not (opened := auto.step(t, [FAIL], [])):
        t += 1000
    [o] = opened
    assert isinstance(o, Open)
    # Red for 20 s of the relay's life, whatever the clock did meanwhile.
    assert t - o.started_ms == 20_000
    assert t - T0 <= 20_000 + 2 * MAX_STEP_MS
    incident = open_incident(
        auto_incident_id("store", "eu", o.started_ms), "store", "critical", FAIL.text,
        o.started_ms, opened_ms=t, holder="n1", source="auto",
    )  # fmt: skip
    assert auto.step(t + 1000, [], [incident]) == []
    assert auto.step(t + 2000 + 86_400_000, [], [incident]) == []  # a day ahead: not resolved


def test_the_holder_does_not_resolve_while_another_relay_of_the_region_is_red() -> None:
    """Both relays saw the links fall; the holder's came back, the other's did not:
    resolving now would say "working again" while it is not (and the other relay
    would open a new incident at once).  The holder waits for the region to be
    green (the other relays' red components come with their heartbeats)."""
    a = AutoIncidents("n1", "eu", incident_after_ms=3000, resolve_after_ms=5000)
    held = open_incident(
        auto_incident_id("links", "eu", T0), "links", "major", "x", T0, holder="n1", source="auto"
    )
    alive = frozenset({"n1", "n2"})
    elsewhere: frozenset[Component] = frozenset({"links"})
    for t in range(0, 20_000, 1000):
        assert a.step(T0 + t, [], [held], alive, red_elsewhere=elsewhere) == []
    assert a.step(T0 + 20_000, [], [held], alive) == []  # n2 green now: 5 s from here
    assert a.step(T0 + 24_999, [], [held], alive) == []
    [done] = a.step(T0 + 25_000, [], [held], alive)
    assert isinstance(done, Resolve)


def test_a_peak_outlives_its_window_by_no_more_when_the_clock_steps_back() -> None:
    """What was seen "in the future" of a clock that stepped back counts as seen now:
    a late delivery (the delivery monitor's 10 s) or a links peak (10 minutes) is
    held for its window, not for as long as the clock went back besides."""
    peak = Peak(window_ms=1000)
    assert peak.add(3_600_000, 9) == 9
    assert peak.add(5_000, 1) == 9  # back an hour: the 9 counts as seen at 5 000
    assert peak.add(6_001, 1) == 1  # and is out of the window a second later


def test_a_failure_that_worsens_raises_the_incidents_severity_at_once() -> None:
    from pinrelay.core.incidents import add_update

    auto = AutoIncidents("n1", "eu", incident_after_ms=1000, resolve_after_ms=1000)
    slow = Finding("store", "major", "Store writes are slow")
    auto.step(T0, [slow], [])
    [opened] = auto.step(T0 + 1000, [slow], [])
    assert isinstance(opened, Open)
    incident = open_incident(
        auto_incident_id("store", "eu", T0), "store", "major", opened.text, T0, holder="n1",
        source="auto",
    )  # fmt: skip
    [worse] = auto.step(T0 + 2000, [FAIL], [incident])
    assert worse == Update(incident, FAIL.text, "critical")
    after = add_update(incident, worse.text, T0 + 2000, severity=worse.severity)
    assert after.severity == "critical" and after.updates[-1].text == FAIL.text
    assert auto.step(T0 + 3000, [slow], [after]) == []  # never back down
