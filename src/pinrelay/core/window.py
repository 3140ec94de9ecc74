"""The in-flight window of one link (DESIGN: never more than ``window`` unacked)."""

from __future__ import annotations

from collections import deque

from pinrelay.core.errors import ErrorCode, RemoteProtocolError


class Window:
    """Cursors sent and not yet acknowledged, with cumulative acks.

    ``sent`` is the highest cursor handed to the link; ``acked`` the highest the
    client acknowledged.  A cumulative ack below ``acked`` is a harmless repeat; one
    above ``sent`` acknowledges something never sent and is a protocol error.
    """

    __slots__ = ("_inflight", "acked", "sent", "size")

    def __init__(self, size: int, acked: int) -> None:
        self.size = size
        self.acked = acked
        self.sent = acked
        self._inflight: deque[int] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def room(self) -> int:
        return self.size - len(self._inflight)

    def sent_one(self, cursor: int) -> None:
        if cursor <= self.sent:
            raise ValueError(f"cursor {cursor} not after {self.sent}")
        if not self.room:
            raise ValueError("window full")
        self.sent = cursor
        self._inflight.append(cursor)

    def ack(self, cursor: int) -> bool:
        """Apply a cumulative ack; True when it acknowledged something new."""
        if cursor > self.sent:
            raise RemoteProtocolError(
                f"ack {cursor} is beyond the last cursor sent ({self.sent})", ErrorCode.INVALID
            )
        if cursor <= self.acked:
            return False
        while self._inflight and self._inflight[0] <= cursor:
            self._inflight.popleft()
        self.acked = cursor
        return True

    def rewind(self) -> None:
        """Forget what was sent but not acked (it will be sent again)."""
        self._inflight.clear()
        self.sent = self.acked
