"""Contacts: who may message whom (PROTOCOL, "Contacts"), as pure transitions.

Each device keeps one entry per other PIN it has dealt with, in one of four states:

- ``invited``: I invited them; they have not answered;
- ``pending``: they invited me; my answer is pending;
- ``accepted``: we are contacts: either may send to the other;
- ``blocked``: I blocked them: they cannot send to me or invite me.

An action of device A about device B reads both entries (A's for B, "mine"; B's
for A, "theirs") and yields both new entries and the event B is told of, if any.
Engines apply :func:`transition` atomically where they can (SQLite: in one
transaction) and with compare-and-set otherwise.  A sender may message a recipient
whose entry for it is ``accepted``; a block is never revealed: a blocked sender gets
the answers a stranger gets.

Events are recomputed from the resulting state, not only on a change: an invite
or an accept that is repeated (a client retrying after a lost answer) tells B
again, so a crash between the state write and the notice is repaired by a retry.
An engine that cannot write both entries at once writes B's first: a retry from
the state a crash left in between (B's entry new, A's old) ends where the first
attempt meant to (tests/core/test_social.py checks every case).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from pinrelay.core.errors import ErrorCode, PinrelayError

State = Literal["invited", "pending", "accepted", "blocked"]
STATES: tuple[State, ...] = ("invited", "pending", "accepted", "blocked")
#: What the other device is told (a ``contact`` message's ``data.event``).
Event = Literal["invited", "accepted"]


class Action(enum.Enum):
    INVITE = "invite"
    ACCEPT = "accept"
    DECLINE = "decline"
    REMOVE = "remove"
    BLOCK = "block"
    UNBLOCK = "unblock"


@dataclass(frozen=True, slots=True)
class Transition:
    """Both entries after an action (None: no entry), and what B is told."""

    mine: State | None
    theirs: State | None
    notify: Event | None = None

    @property
    def answer(self) -> str:
        """The ``state`` an HTTP answer reports for the action."""
        return self.mine or "none"


def no_invitation(other: str) -> PinrelayError:
    return PinrelayError(f"no invitation from {other} to answer", ErrorCode.NOT_FOUND)


def transition(
    action: Action, mine: State | None, theirs: State | None, other_exists: bool
) -> Transition:
    """A's and B's entries after A's ``action`` about B.

    ``other_exists``: whether B is a device.  An invitation to a PIN with no device
    is kept on A's side alone and answered as any other, so PINs cannot be probed.
    Raises NOT_FOUND for an answer to an invitation that is not there.
    """
    if action is Action.INVITE:
        if mine == "accepted":
            return Transition("accepted", "accepted", "accepted")
        if mine == "pending" and theirs in ("invited", "accepted"):
            # B invited A first: inviting back is accepting (B's entry already
            # "accepted": a retry after only B's entry was written, as for ACCEPT).
            return Transition("accepted", "accepted", "accepted")
        if not other_exists or theirs == "blocked":
            return Transition("invited", theirs)
        return Transition("invited", "pending", "invited")
    if action is Action.ACCEPT:
        if mine == "accepted" or (mine == "pending" and theirs in ("invited", "accepted")):
            return Transition("accepted", "accepted", "accepted")
        raise no_invitation("that PIN")
    if action is Action.DECLINE:
        if mine != "pending":
            raise no_invitation("that PIN")
        # The inviter is told nothing; its entry stays "invited".
        return Transition(None, theirs)
    if action is Action.REMOVE:
        if mine is None or mine == "blocked":
            raise PinrelayError("no such contact", ErrorCode.NOT_FOUND)
        return Transition(None, theirs if theirs == "blocked" else None)
    if action is Action.BLOCK:
        # Blocking removes: B's entry goes too (unless B blocked A: that stays).
        return Transition("blocked", theirs if theirs == "blocked" else None)
    if mine != "blocked":  # UNBLOCK
        raise PinrelayError("that PIN is not blocked", ErrorCode.NOT_FOUND)
    return Transition(None, theirs)


def may_send(recipient_entry: State | None) -> bool:
    """Whether the recipient's entry for a sender lets the sender message it."""
    return recipient_entry == "accepted"
