"""core/social.py: the transitions, on their own (the engines: tests/store)."""

from __future__ import annotations

import itertools

import pytest

from pinrelay.core.errors import PinrelayError
from pinrelay.core.social import STATES, Action, State, Transition, may_send, transition

ENTRIES: list[State | None] = [None, *STATES]


def attempts() -> list[tuple[Action, State | None, State | None, bool, Transition]]:
    """Every action from every pair of entries that it applies to, with its result."""
    out = []
    for action, mine, theirs, exists in itertools.product(Action, ENTRIES, ENTRIES, (True, False)):
        try:
            step = transition(action, mine, theirs, exists)
        except PinrelayError:
            continue
        out.append((action, mine, theirs, exists, step))
    return out


@pytest.mark.parametrize(("action", "mine", "theirs", "exists", "step"), attempts())
def test_a_retry_after_only_theirs_was_written_ends_where_the_first_attempt_meant(
    action: Action, mine: State | None, theirs: State | None, exists: bool, step: Transition
) -> None:
    # An engine without atomic writes of both entries writes B's ("theirs") first; a
    # crash before A's leaves (mine, step.theirs), and the client retries.
    again = transition(action, mine, step.theirs, exists)
    assert again == step


def test_inviting_back_is_accepting() -> None:
    assert transition(Action.INVITE, "pending", "invited", True) == Transition(
        "accepted", "accepted", "accepted"
    )


def test_an_invitation_to_a_blocker_reaches_nothing() -> None:
    assert transition(Action.INVITE, None, "blocked", True) == Transition("invited", "blocked")


def test_only_an_accepted_entry_lets_a_sender_through() -> None:
    assert [may_send(s) for s in ENTRIES] == [False, False, False, True, False]
