"""Chat in the device SDK: outgoing messages as handles whose state moves forward.

``await device.send(to, text)`` returns an :class:`Outgoing` at once (``sending``);
the relay's ``sent`` moves it to ``sent``, then the recipient's receipts to
``delivered`` and ``read`` (or ``failed`` if it expired undelivered).  A ``send``
not answered when a link drops is sent again on the next link with the same
``client_id``, which the relay stores once.  A state never moves back and a repeated
receipt changes nothing, so the application sees each change once.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from pinrelay.core.ids import new_secret

State = Literal["sending", "sent", "delivered", "read", "failed", "unsent"]
#: How far each state is along; a change to a lower rank is ignored.
RANK: dict[str, int] = {
    "sending": 0,
    "sent": 1,
    "unsent": 4,
    "delivered": 2,
    "read": 3,
    "failed": 4,
}


@dataclass(frozen=True, slots=True)
class Change:
    """One state change of an outgoing message; ``by``: whose receipt moved it."""

    state: State
    by: str | None = None


class Outgoing:
    """A chat message this device sends, and where it is."""

    def __init__(self, to: str, text: str, ttl: float | None, client_id: str | None = None):
        self.to = to
        self.text = text
        self.ttl = ttl
        self.client_id = client_id or new_secret(os.urandom, 12)
        self.state: State = "sending"
        #: The message id the relay gave it (None until ``sent``).
        self.id: str | None = None
        #: The ``unsent`` code, when refused.
        self.code: str | None = None
        self.reason: str | None = None
        #: A group message: each member's furthest state, from its receipts.
        self.members: dict[str, State] = {}
        self._changes: asyncio.Queue[Change] = asyncio.Queue()
        self._moved = asyncio.Event()
        self.on_change: Callable[[Outgoing, Change], None] | None = None

    def __repr__(self) -> str:
        return f"Outgoing(to={self.to!r}, state={self.state!r}, id={self.id!r})"

    def move(self, state: State, by: str | None = None) -> bool:
        """:meth:`_move`, through ``delivered`` first when a ``read`` comes before it:
        a message read was delivered (its delivered receipt may come later, after a
        crash, or not at all if the relay died between storing the two)."""
        if state == "read":
            self._move("delivered", by)
        return self._move(state, by)

    def _move(self, state: State, by: str | None = None) -> bool:
        """Move to ``state`` if it is further along; whether it moved.

        A group message's receipts move each member's state (``members``), and the
        message's own the first time any member gets there: every member's change
        is reported, with ``by``."""
        if by is not None and self.to.startswith("G"):
            if RANK[state] <= RANK[self.members.get(by, "sent")]:
                return False
            self.members[by] = state
            if RANK[state] > RANK[self.state]:
                self.state = state
        elif RANK[state] <= RANK[self.state]:
            return False
        else:
            self.state = state
        change = Change(state, by)
        self._changes.put_nowait(change)
        self._moved.set()
        self._moved = asyncio.Event()
        if self.on_change is not None:
            self.on_change(self, change)
        return True

    async def changes(self) -> AsyncIterator[Change]:
        """Each change as it happens, until a final state (read, failed, unsent)."""
        while True:
            change = await self._changes.get()
            yield change
            if change.state in ("read", "failed", "unsent"):
                return

    async def wait_for(self, state: State, timeout: float | None = None) -> None:
        """Until the message is at ``state`` or further; raises if it was refused."""
        async with asyncio.timeout(timeout):
            while self.state != state:
                if self.state in ("failed", "unsent"):
                    raise RuntimeError(f"message {self.state}: {self.code} {self.reason}")
                if RANK[self.state] >= RANK[state]:
                    return
                await self._moved.wait()


class Outbox:
    """A device's outgoing messages: unanswered ones in send order, and the recent
    ones by id (for receipts), bounded."""

    def __init__(self, remember: int = 10_000) -> None:
        self.waiting: OrderedDict[str, Outgoing] = OrderedDict()
        self.by_id: OrderedDict[str, Outgoing] = OrderedDict()
        #: Receipts for ids no ``sent`` named yet: after a crash, a resent ``send``
        #: may be answered (once the relay's idempotency lease is taken over) after
        #: the recipient's receipt for it came.  Applied when the ``sent`` comes.
        self.early: OrderedDict[str, list[tuple[State, str | None]]] = OrderedDict()
        self._remember = remember

    def hold(self, message_id: str, state: State, by: str | None) -> None:
        """A receipt for ``message_id``, not known yet (bounded: oldest out first)."""
        self.early.setdefault(message_id, []).append((state, by))
        if len(self.early) > self._remember:
            self.early.popitem(last=False)

    def take_early(self, message_id: str) -> list[tuple[State, str | None]]:
        return self.early.pop(message_id, [])

    def answered(self, client_id: str, message_id: str | None) -> Outgoing | None:
        handle = self.waiting.pop(client_id, None)
        if handle is not None and message_id is not None:
            handle.id = message_id
            self.by_id[message_id] = handle
            if len(self.by_id) > self._remember:
                self.by_id.popitem(last=False)
        return handle
