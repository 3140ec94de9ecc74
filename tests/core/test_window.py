"""Window: the in-flight cursors of one link, with cumulative acks."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pinrelay.core.errors import ErrorCode, RemoteProtocolError
from pinrelay.core.window import Window


def filled(size: int, acked: int, cursors: list[int]) -> Window:
    w = Window(size, acked)
    for c in cursors:
        w.sent_one(c)
    return w


class TestInitial:
    def test_starts_empty_at_acked(self) -> None:
        w = Window(4, 10)
        assert (w.size, w.acked, w.sent, w.in_flight, w.room) == (4, 10, 10, 0, 4)


class TestSent:
    def test_sent_one_tracks_in_flight_and_room(self) -> None:
        w = filled(3, 0, [1, 2])
        assert (w.sent, w.in_flight, w.room) == (2, 2, 1)

    def test_gaps_are_allowed(self) -> None:
        w = filled(3, 5, [7, 20])
        assert (w.sent, w.in_flight) == (20, 2)

    @pytest.mark.parametrize("cursor", [5, 4, 0, -1])
    def test_cursor_must_increase(self, cursor: int) -> None:
        w = filled(3, 0, [5])
        with pytest.raises(ValueError):
            w.sent_one(cursor)
        assert (w.sent, w.in_flight) == (5, 1)

    def test_cursor_must_be_after_acked(self) -> None:
        w = Window(3, 10)
        with pytest.raises(ValueError):
            w.sent_one(10)

    def test_full_window_refuses(self) -> None:
        w = filled(2, 0, [1, 2])
        assert w.room == 0
        with pytest.raises(ValueError, match="full"):
            w.sent_one(3)
        assert (w.sent, w.in_flight) == (2, 2)


class TestAck:
    def test_cumulative_ack_frees_room(self) -> None:
        w = filled(4, 0, [1, 2, 3, 4])
        assert w.ack(2) is True
        assert (w.acked, w.in_flight, w.room) == (2, 2, 2)
        assert w.ack(4) is True
        assert (w.acked, w.in_flight, w.room) == (4, 0, 4)

    def test_ack_between_gapped_cursors(self) -> None:
        w = filled(4, 0, [2, 5, 9])
        assert w.ack(6) is True  # acks 2 and 5; 6 itself was never sent but is ≤ sent
        assert (w.acked, w.in_flight) == (6, 1)

    @pytest.mark.parametrize("cursor", [0, 1, 2])
    def test_repeat_or_older_ack_returns_false(self, cursor: int) -> None:
        w = filled(4, 0, [1, 2, 3])
        assert w.ack(2) is True
        assert w.ack(cursor) is False
        assert (w.acked, w.in_flight) == (2, 1)

    def test_ack_at_initial_acked_is_a_repeat(self) -> None:
        w = Window(4, 7)
        assert w.ack(7) is False
        assert w.ack(3) is False

    @pytest.mark.parametrize(("sent", "ack"), [([], 1), ([1, 2], 3), ([1, 2], 2**53)])
    def test_ack_beyond_sent_raises_invalid(self, sent: list[int], ack: int) -> None:
        w = filled(4, 0, sent)
        with pytest.raises(RemoteProtocolError) as info:
            w.ack(ack)
        assert info.value.code is ErrorCode.INVALID
        assert info.value.code.close_code == 4422
        assert w.acked == 0
        assert w.in_flight == len(sent)

    def test_room_after_ack_allows_sending_again(self) -> None:
        w = filled(2, 0, [1, 2])
        w.ack(1)
        w.sent_one(3)
        assert (w.sent, w.in_flight, w.room) == (3, 2, 0)


class TestRewind:
    def test_rewind_forgets_unacked(self) -> None:
        w = filled(4, 0, [1, 2, 3])
        w.ack(1)
        w.rewind()
        assert (w.acked, w.sent, w.in_flight, w.room) == (1, 1, 0, 4)

    def test_resend_after_rewind(self) -> None:
        w = filled(4, 0, [1, 2, 3])
        w.rewind()
        w.sent_one(1)
        w.sent_one(2)
        assert (w.sent, w.in_flight) == (2, 2)

    def test_ack_beyond_after_rewind_raises(self) -> None:
        w = filled(4, 0, [1, 2, 3])
        w.rewind()
        with pytest.raises(RemoteProtocolError):
            w.ack(2)


class WindowMachine(RuleBasedStateMachine):
    """A Window against a list-based model."""

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        self.window: Window | None = None
        self.acked = 0
        self.sent = 0
        self.inflight: list[int] = []

    @rule(size=st.integers(1, 8), acked=st.integers(0, 1000))
    def start(self, size: int, acked: int) -> None:
        self.window = Window(size, acked)
        self.size, self.acked, self.sent, self.inflight = size, acked, acked, []

    @rule(step=st.integers(-3, 4))
    def send(self, step: int) -> None:
        if self.window is None:
            return
        cursor = self.sent + step
        if step <= 0 or len(self.inflight) >= self.size:
            with pytest.raises(ValueError):
                self.window.sent_one(cursor)
            return
        self.window.sent_one(cursor)
        self.sent = cursor
        self.inflight.append(cursor)

    @rule(offset=st.integers(-6, 3))
    def ack(self, offset: int) -> None:
        if self.window is None:
            return
        cursor = self.sent + offset
        if cursor > self.sent:
            with pytest.raises(RemoteProtocolError) as info:
                self.window.ack(cursor)
            assert info.value.code is ErrorCode.INVALID
            return
        new = cursor > self.acked
        assert self.window.ack(cursor) is new
        if new:
            self.acked = cursor
            self.inflight = [c for c in self.inflight if c > cursor]

    @rule()
    def rewind(self) -> None:
        if self.window is None:
            return
        self.window.rewind()
        self.sent = self.acked
        self.inflight = []

    @invariant()
    def matches_model(self) -> None:
        w = self.window
        if w is None:
            return
        assert w.acked == self.acked
        assert w.sent == self.sent
        assert w.in_flight == len(self.inflight)
        assert w.room == self.size - len(self.inflight)
        assert 0 <= w.room <= w.size
        assert w.acked <= w.sent


WindowMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=50)
TestWindowMachine = WindowMachine.TestCase
