"""core/incidents.py: ids, the timeline's rules, component states (no loop)."""

from __future__ import annotations

import pytest

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import (
    MAX_TEXT,
    MAX_UPDATES,
    add_update,
    component_states,
    follows,
    is_incident_id,
    new_incident_id,
    open_incident,
    resolve,
)

NOW = 1_800_000_000_000


def test_ids_are_I_and_12_crockford_digits() -> None:
    made = new_incident_id(lambda n: b"\xff" * n)
    assert made == "IZZZZZZZZZZZZ" and is_incident_id(made)
    assert is_incident_id(new_incident_id(lambda n: bytes(n)))
    assert not is_incident_id("I00000000000O") and not is_incident_id("C000000000000")


def test_a_timeline_grows_then_ends_once() -> None:
    i = open_incident("I000000000001", "links", "minor", "Links drop", NOW, tenants=["b", "a", "a"])
    assert (i.state, i.rev, i.tenants, i.public) == ("open", 1, ("a", "b"), False)
    assert i.affects("a") and not i.affects("c") and i.affects(None)
    j = add_update(i, "Found it", NOW - 5)  # a clock behind: times never go back
    assert j.rev == 2 and j.updates[-1].at_ms == NOW and follows(i, j) and not follows(j, i)
    k = resolve(j, "Fixed", NOW + 10)
    assert (k.state, k.resolved_ms, k.rev, len(k.updates)) == ("resolved", NOW + 10, 3, 3)
    assert not follows(k, add_update(j, "late", NOW + 11))
    with pytest.raises(PinrelayError) as err:
        add_update(k, "more", NOW)
    assert err.value.code is ErrorCode.CONFLICT
    with pytest.raises(PinrelayError) as err:
        resolve(k, None, NOW)
    assert err.value.code is ErrorCode.CONFLICT
    assert resolve(j, None, NOW + 20).updates == j.updates


@pytest.mark.parametrize("text", ["", "x" * (MAX_TEXT + 1), "bell\x07", "nul\x00"])
def test_bad_texts_are_refused(text: str) -> None:
    with pytest.raises(PinrelayError) as err:
        open_incident("I000000000001", "store", "minor", text, NOW)
    assert err.value.code is ErrorCode.INVALID


def test_updates_are_bounded_leaving_room_to_resolve() -> None:
    i = open_incident("I000000000001", "store", "minor", "start", NOW)
    for n in range(MAX_UPDATES - 2):
        i = add_update(i, f"u{n}", NOW + n)
    with pytest.raises(PinrelayError):
        add_update(i, "one too many", NOW)
    assert len(resolve(i, "done", NOW).updates) == MAX_UPDATES


def test_a_component_takes_its_worst_open_incident() -> None:
    minor = open_incident("I000000000001", "store", "minor", "slow", NOW)
    critical = open_incident("I000000000002", "store", "critical", "down", NOW)
    major = open_incident("I000000000003", "delivery", "major", "late", NOW)
    assert dict(component_states([])) == dict.fromkeys(
        ("store", "cluster", "links", "delivery"), "operational"
    )
    states = dict(component_states([minor, critical, major]))
    assert states == {
        "store": "outage",
        "cluster": "operational",
        "links": "operational",
        "delivery": "degraded",
    }
    gone = resolve(critical, None, NOW)
    assert dict(component_states([minor, gone]))["store"] == "degraded"
