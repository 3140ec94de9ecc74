"""ServerSession: one class per rule of its docstring, then a state-machine test."""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pinrelay.core import frames
from pinrelay.core.errors import ErrorCode
from pinrelay.core.session import (
    AckReceived,
    Failure,
    HelloReceived,
    PingReceived,
    ServerSession,
    State,
    Tick,
    error_frame,
)

T0 = 1_000.0
HELLO_TIMEOUT = 10.0
HEARTBEAT = 30.0

HELLO = frames.encode(frames.Hello(pin="0A1B2C3D", token="tok", cursor=5, window=32))
ACK = frames.encode(frames.Ack(cursor=3))
PING = frames.encode(frames.Ping(id="p1"))
WELCOME = frames.Welcome(
    session="s1",
    pin="0A1B2C3D",
    cursor=5,
    window=32,
    heartbeat_s=30,
    max_frame=65536,
    node="n1",
    region="eu",
    version="0.1.0",
)
GARBAGE = [b"", b"{", b"not json", b"\xff\xfe", b'{"type":"hello"']
WRONG_TYPED = [
    b"[]",
    b"42",
    b'{"type":"nope"}',
    b'{"type":"ack","cursor":"3"}',
    b'{"type":"ack","cursor":-1}',
    b'{"type":"hello","pin":"0A1B2C3D"}',
    b'{"type":"hello","pin":"0A1B2C3D","token":"t","window":0}',
]


def new_session(now: float = T0) -> ServerSession:
    return ServerSession(now, hello_timeout=HELLO_TIMEOUT, heartbeat_s=HEARTBEAT)


def authenticating(now: float = T0) -> ServerSession:
    s = new_session(now)
    assert isinstance(s.receive(HELLO, now), HelloReceived)
    return s


def opened(now: float = T0) -> ServerSession:
    s = authenticating(now)
    s.accept(WELCOME)
    assert s.state is State.OPEN
    return s


def assert_failure(event: object, code: ErrorCode, s: ServerSession) -> Failure:
    assert isinstance(event, Failure), event
    assert event.code is code, (event.code, event.detail)
    assert s.state is State.CLOSED
    err = frames.decode_server(event.frame)
    assert isinstance(err, frames.Error)
    assert err.code == code.wire
    assert err.status == code.status
    assert err.message == event.detail
    return event


class TestHelloFirst:
    """Rule 1: the link starts in AWAIT_HELLO and the first frame must be hello."""

    def test_starts_awaiting_hello(self) -> None:
        assert new_session().state is State.AWAIT_HELLO

    def test_hello_is_received_and_moves_to_authenticating(self) -> None:
        s = new_session()
        event = s.receive(HELLO, T0 + 1)
        assert event == HelloReceived(
            frames.Hello(pin="0A1B2C3D", token="tok", cursor=5, window=32)
        )
        assert isinstance(event, HelloReceived)
        assert event.hello.pin == "0A1B2C3D"
        assert event.hello.cursor == 5
        assert event.hello.window == 32
        assert s.state is State.AUTHENTICATING

    def test_hello_as_str(self) -> None:
        s = new_session()
        assert isinstance(s.receive(HELLO.decode(), T0), HelloReceived)

    def test_ack_first_fails_bad_request(self) -> None:
        s = new_session()
        f = assert_failure(s.receive(ACK, T0), ErrorCode.BAD_REQUEST, s)
        assert "ack" in f.detail
        assert "await_hello" in f.detail

    @pytest.mark.parametrize("wire", GARBAGE)
    def test_malformed_first_fails_bad_request(self, wire: bytes) -> None:
        s = new_session()
        assert_failure(s.receive(wire, T0), ErrorCode.BAD_REQUEST, s)

    @pytest.mark.parametrize("wire", WRONG_TYPED)
    def test_wrong_typed_first_fails_invalid(self, wire: bytes) -> None:
        s = new_session()
        assert_failure(s.receive(wire, T0), ErrorCode.INVALID, s)

    def test_deeply_nested_frame_fails_link(self) -> None:
        deep = 5000
        wire = b'{"type":"hello","pin":"0A1B2C3D","token":"t","x":' + b"[" * deep + b"]" * deep
        s = new_session()
        event = s.receive(wire + b"}", T0)
        assert isinstance(event, Failure)
        assert s.state is State.CLOSED


class TestAuthenticating:
    """Rule 2: while the token is checked, any frame fails the link."""

    @pytest.mark.parametrize("wire", [HELLO, ACK, PING])
    def test_valid_frames_fail_bad_request(self, wire: bytes) -> None:
        s = authenticating()
        assert_failure(s.receive(wire, T0 + 1), ErrorCode.BAD_REQUEST, s)

    @pytest.mark.parametrize("wire", GARBAGE)
    def test_malformed_fails_bad_request(self, wire: bytes) -> None:
        s = authenticating()
        assert_failure(s.receive(wire, T0 + 1), ErrorCode.BAD_REQUEST, s)

    @pytest.mark.parametrize("wire", WRONG_TYPED)
    def test_wrong_typed_fails_invalid(self, wire: bytes) -> None:
        s = authenticating()
        assert_failure(s.receive(wire, T0 + 1), ErrorCode.INVALID, s)


class TestAccept:
    """Rule 3: accept() sends welcome and opens the link; then only acks are legal."""

    def test_accept_returns_welcome_and_opens(self) -> None:
        s = authenticating()
        wire = s.accept(WELCOME)
        assert frames.decode_server(wire) == WELCOME
        assert wire == frames.encode(WELCOME)
        assert s.state is State.OPEN

    @pytest.mark.parametrize("make", [new_session, opened])
    def test_accept_outside_authenticating_raises(self, make: Any) -> None:
        s: ServerSession = make()
        before = s.state
        with pytest.raises(RuntimeError):
            s.accept(WELCOME)
        assert s.state is before

    def test_accept_after_close_raises(self) -> None:
        s = authenticating()
        s.close()
        with pytest.raises(RuntimeError):
            s.accept(WELCOME)
        assert s.state is State.CLOSED

    def test_open_receives_acks(self) -> None:
        s = opened()
        for cursor in (1, 1, 7, 0, 2**53 - 1):
            wire = frames.encode(frames.Ack(cursor=cursor))
            assert s.receive(wire, T0 + 1) == AckReceived(cursor)
            assert s.state is State.OPEN

    def test_ack_with_unknown_fields_is_received(self) -> None:
        s = opened()
        assert s.receive(b'{"type":"ack","cursor":9,"x":[1]}', T0) == AckReceived(9)

    def test_open_ping_is_answered_with_pong(self) -> None:
        s = opened()
        assert s.receive(PING, T0 + 1) == PingReceived(b'{"type":"pong","id":"p1"}')
        assert s.receive(b'{"type":"ping"}', T0 + 1) == PingReceived(b'{"type":"pong","id":null}')
        assert s.state is State.OPEN

    def test_ping_counts_as_traffic(self) -> None:
        s = opened()
        s.receive(PING, T0 + HEARTBEAT - 1)
        assert s.tick(T0 + HEARTBEAT) is Tick.NOTHING
        assert s.tick(T0 + 2 * HEARTBEAT - 1) is Tick.SEND_PING

    def test_ping_before_hello_fails_bad_request(self) -> None:
        s = new_session()
        f = assert_failure(s.receive(PING, T0 + 1), ErrorCode.BAD_REQUEST, s)
        assert "'ping' frame not allowed in state await_hello" in f.detail

    def test_ping_id_over_64_characters_fails_invalid(self) -> None:
        s = opened()
        wire = frames.encode(frames.Ping(id="x" * 65))
        assert_failure(s.receive(wire, T0 + 1), ErrorCode.INVALID, s)

    def test_open_hello_fails_bad_request(self) -> None:
        s = opened()
        f = assert_failure(s.receive(HELLO, T0 + 1), ErrorCode.BAD_REQUEST, s)
        assert "hello" in f.detail
        assert "open" in f.detail

    @pytest.mark.parametrize("wire", GARBAGE)
    def test_open_malformed_fails_bad_request(self, wire: bytes) -> None:
        s = opened()
        assert_failure(s.receive(wire, T0 + 1), ErrorCode.BAD_REQUEST, s)

    @pytest.mark.parametrize("wire", WRONG_TYPED)
    def test_open_wrong_typed_fails_invalid(self, wire: bytes) -> None:
        s = opened()
        assert_failure(s.receive(wire, T0 + 1), ErrorCode.INVALID, s)


class TestFail:
    """Rule 4: fail() yields an error frame and moves to CLOSED for good."""

    @pytest.mark.parametrize("code", list(ErrorCode))
    @pytest.mark.parametrize("make", [new_session, authenticating, opened])
    def test_fail_sends_error_frame_and_closes(self, code: ErrorCode, make: Any) -> None:
        s: ServerSession = make()
        f = s.fail(code, "because")
        assert f.code is code
        assert f.detail == "because"
        assert f.code.close_code == 4000 + code.status
        assert f.frame == error_frame(code, "because")
        assert_failure(f, code, s)

    def test_retry_after_is_carried(self) -> None:
        s = opened()
        f = s.fail(ErrorCode.OVERLOADED, "shedding", retry_after_ms=2500)
        err = frames.decode_server(f.frame)
        assert err == frames.Error(
            code="overloaded", status=503, message="shedding", retry_after_ms=2500
        )

    @pytest.mark.parametrize("wire", [HELLO, ACK, *GARBAGE, *WRONG_TYPED])
    def test_closed_ignores_everything(self, wire: bytes) -> None:
        s = opened()
        s.fail(ErrorCode.REPLACED, "replaced")
        assert s.receive(wire, T0 + 1) is None
        assert s.state is State.CLOSED

    def test_after_failure_event_receive_returns_none(self) -> None:
        s = new_session()
        assert isinstance(s.receive(b"junk", T0), Failure)
        assert s.receive(HELLO, T0) is None
        assert s.state is State.CLOSED

    def test_close_without_frame(self) -> None:
        s = opened()
        s.close()
        assert s.state is State.CLOSED
        assert s.receive(ACK, T0) is None
        assert s.tick(T0 + 10 * HEARTBEAT) is Tick.NOTHING

    def test_error_frame_encoding(self) -> None:
        assert error_frame(ErrorCode.HELLO_TIMEOUT, "late") == (
            b'{"type":"error","code":"hello_timeout","status":408,"message":"late",'
            b'"retry_after_ms":null}'
        )


class TestHelloTimeout:
    """Rule 1: no hello within hello_timeout: tick says HELLO_TIMEOUT."""

    def test_nothing_before_deadline(self) -> None:
        s = new_session()
        assert s.tick(T0) is Tick.NOTHING
        assert s.tick(T0 + HELLO_TIMEOUT - 0.001) is Tick.NOTHING
        assert s.state is State.AWAIT_HELLO

    def test_timeout_at_and_after_deadline(self) -> None:
        s = new_session()
        assert s.tick(T0 + HELLO_TIMEOUT) is Tick.HELLO_TIMEOUT
        assert s.tick(T0 + HELLO_TIMEOUT + 100) is Tick.HELLO_TIMEOUT

    def test_authentication_is_bounded_by_the_same_deadline(self) -> None:
        s = authenticating(T0)
        assert s.tick(T0 + HELLO_TIMEOUT - 1) is Tick.NOTHING
        assert s.tick(T0 + HELLO_TIMEOUT) is Tick.HELLO_TIMEOUT

    def test_no_timeout_once_open(self) -> None:
        s = opened()
        assert s.tick(T0 + HELLO_TIMEOUT) is Tick.NOTHING

    def test_timeout_then_fail(self) -> None:
        s = new_session()
        assert s.tick(T0 + HELLO_TIMEOUT) is Tick.HELLO_TIMEOUT
        assert_failure(s.fail(ErrorCode.HELLO_TIMEOUT, "no hello"), ErrorCode.HELLO_TIMEOUT, s)
        assert s.tick(T0 + HELLO_TIMEOUT + 1) is Tick.NOTHING


class TestPingDue:
    """A ping is due after heartbeat_s of silence on an open link."""

    def test_no_ping_before_heartbeat(self) -> None:
        s = opened()
        assert s.tick(T0 + HEARTBEAT - 0.001) is Tick.NOTHING

    def test_ping_after_heartbeat_of_silence(self) -> None:
        s = opened()
        assert s.tick(T0 + HEARTBEAT) is Tick.SEND_PING

    def test_ping_is_due_once(self) -> None:
        s = opened()
        assert s.tick(T0 + HEARTBEAT) is Tick.SEND_PING
        assert s.tick(T0 + HEARTBEAT + 1) is Tick.NOTHING
        assert s.tick(T0 + 2 * HEARTBEAT - 0.001) is Tick.NOTHING

    def test_silence_counts_from_last_frame(self) -> None:
        s = opened()
        assert s.receive(ACK, T0 + 20) == AckReceived(3)
        assert s.tick(T0 + HEARTBEAT) is Tick.NOTHING
        assert s.tick(T0 + 20 + HEARTBEAT - 0.001) is Tick.NOTHING
        assert s.tick(T0 + 20 + HEARTBEAT) is Tick.SEND_PING

    def test_pong_counts_as_traffic(self) -> None:
        s = opened()
        s.received_pong(T0 + 25)
        assert s.tick(T0 + HEARTBEAT) is Tick.NOTHING
        assert s.tick(T0 + 25 + HEARTBEAT) is Tick.SEND_PING


class TestDead:
    """DEAD when no pong (or frame) arrives within heartbeat_s of a ping."""

    def test_dead_after_heartbeat_without_pong(self) -> None:
        s = opened()
        ping_at = T0 + HEARTBEAT
        assert s.tick(ping_at) is Tick.SEND_PING
        assert s.tick(ping_at + HEARTBEAT - 0.001) is Tick.NOTHING
        assert s.tick(ping_at + HEARTBEAT) is Tick.DEAD
        assert s.tick(ping_at + HEARTBEAT + 5) is Tick.DEAD

    def test_late_tick_measures_from_when_ping_was_sent(self) -> None:
        s = opened()
        ping_at = T0 + 3 * HEARTBEAT  # the ping is sent late, at this tick
        assert s.tick(ping_at) is Tick.SEND_PING
        assert s.tick(ping_at + HEARTBEAT - 0.5) is Tick.NOTHING
        assert s.tick(ping_at + HEARTBEAT) is Tick.DEAD


class TestPongResets:
    """A pong, or any frame, proves the link alive and clears the pending ping."""

    def test_pong_clears_pending_ping(self) -> None:
        s = opened()
        ping_at = T0 + HEARTBEAT
        assert s.tick(ping_at) is Tick.SEND_PING
        s.received_pong(ping_at + 1)
        assert s.tick(ping_at + HEARTBEAT) is Tick.NOTHING
        assert s.tick(ping_at + 1 + HEARTBEAT) is Tick.SEND_PING

    def test_ack_clears_pending_ping(self) -> None:
        s = opened()
        ping_at = T0 + HEARTBEAT
        assert s.tick(ping_at) is Tick.SEND_PING
        assert s.receive(ACK, ping_at + 2) == AckReceived(3)
        assert s.tick(ping_at + HEARTBEAT) is Tick.NOTHING
        assert s.tick(ping_at + 2 + HEARTBEAT) is Tick.SEND_PING

    def test_pong_before_ping_delays_it(self) -> None:
        s = opened()
        for t in range(10, 300, 10):
            s.received_pong(T0 + t)
            assert s.tick(T0 + t + HEARTBEAT - 0.001) is Tick.NOTHING

    def test_bad_frame_after_ping_still_fails(self) -> None:
        s = opened()
        assert s.tick(T0 + HEARTBEAT) is Tick.SEND_PING
        assert_failure(s.receive(b"nope", T0 + HEARTBEAT + 1), ErrorCode.BAD_REQUEST, s)
        assert s.tick(T0 + 10 * HEARTBEAT) is Tick.NOTHING


# --- state machine -------------------------------------------------------------

Kind = Literal["hello", "ack", "ping", "malformed", "invalid", "any"]

_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
_hello_frames = st.builds(
    frames.Hello,
    pin=st.text(max_size=10),
    token=st.text(max_size=10),
    cursor=st.integers(0, 2**53 - 1),
    window=st.none() | st.integers(1, 4096),
    client=st.none() | st.text(max_size=10),
)
_ack_frames = st.builds(frames.Ack, cursor=st.integers(0, 2**53 - 1))
_ping_frames = st.builds(frames.Ping, id=st.none() | st.text(max_size=64))
_malformed = st.sampled_from(GARBAGE) | st.binary(max_size=30).map(lambda b: b"}" + b)
_invalid = (
    st.sampled_from(WRONG_TYPED)
    # any JSON that is not an object can never be a frame
    | _json.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode())
    | st.dictionaries(st.text(max_size=5), _json, max_size=3)
    .map(lambda d: {**d, "type": "bogus"})
    .map(lambda d: json.dumps(d).encode())
    # (a null cursor is an ack of a system message: valid, ignored; PROTOCOL "ack")
    | st.sampled_from(["string", -1, 2**53, 1.5, [1]]).map(
        lambda v: json.dumps({"type": "ack", "cursor": v}).encode()
    )
)
_any = st.binary(max_size=40) | st.text(max_size=40).map(str.encode)

labelled_frames: st.SearchStrategy[tuple[Kind, str | bytes]] = st.one_of(
    _hello_frames.map(lambda f: ("hello", frames.encode(f))),
    _hello_frames.map(lambda f: ("hello", frames.encode(f).decode())),
    _ack_frames.map(lambda f: ("ack", frames.encode(f))),
    _ping_frames.map(lambda f: ("ping", frames.encode(f))),
    _malformed.map(lambda b: ("malformed", b)),
    _invalid.map(lambda b: ("invalid", b)),
    _any.map(lambda b: ("any", b)),
)


class SessionMachine(RuleBasedStateMachine):
    """Drives a ServerSession and a small model of the docstring's rules side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.session = ServerSession(self.now, hello_timeout=HELLO_TIMEOUT, heartbeat_s=HEARTBEAT)
        self.state = State.AWAIT_HELLO
        self.deadline = self.now + HELLO_TIMEOUT
        self.last_rx = self.now
        self.ping_at: float | None = None

    def _expect_failure(self, event: object, code: ErrorCode | None) -> None:
        assert isinstance(event, Failure), event
        if code is not None:
            assert event.code is code
        assert self.session.state is State.CLOSED
        err = frames.decode_server(event.frame)
        assert isinstance(err, frames.Error)
        assert err.status == event.code.status
        assert err.code == event.code.wire
        assert err.message == event.detail
        self.state = State.CLOSED

    @precondition(lambda self: self.state in (State.AWAIT_HELLO, State.OPEN))
    @rule(data=st.data(), advance=st.floats(0, 5, allow_nan=False))
    def receive_legal(self, data: st.DataObject, advance: float) -> None:
        """The frame the state allows (keeps runs alive long enough to reach OPEN)."""
        if self.state is State.AWAIT_HELLO:
            wire = frames.encode(data.draw(_hello_frames))
            self._receive("hello", wire, advance)
        else:
            self._receive("ack", frames.encode(data.draw(_ack_frames)), advance)

    @rule(frame=labelled_frames, advance=st.floats(0, 5, allow_nan=False), gate=st.integers(0, 3))
    def receive(self, frame: tuple[Kind, str | bytes], advance: float, gate: int) -> None:
        """Any frame; most runs would fail at once, so only one draw in four sends it."""
        if gate == 0 or self.state is State.CLOSED:
            self._receive(*frame, advance)

    def _receive(self, kind: Kind, wire: str | bytes, advance: float) -> None:
        self.now += advance
        event = self.session.receive(wire, self.now)
        self.last_rx = self.now
        self.ping_at = None
        assert event is None or isinstance(
            event, HelloReceived | AckReceived | PingReceived | Failure
        )
        if self.state is State.CLOSED:
            assert event is None
            return
        if kind == "any":
            # Unlabelled input: only the state table constrains the outcome.
            if isinstance(event, HelloReceived):
                assert self.state is State.AWAIT_HELLO
                assert frames.decode_client(wire) == event.hello
                self.state = State.AUTHENTICATING
            elif isinstance(event, AckReceived | PingReceived):
                assert self.state is State.OPEN
            else:
                self._expect_failure(event, None)
            return
        if kind == "malformed":
            self._expect_failure(event, ErrorCode.BAD_REQUEST)
        elif kind == "invalid":
            self._expect_failure(event, ErrorCode.INVALID)
        elif kind == "hello" and self.state is State.AWAIT_HELLO:
            assert isinstance(event, HelloReceived)
            assert event.hello == frames.decode_client(wire)
            self.state = State.AUTHENTICATING
        elif kind == "ack" and self.state is State.OPEN:
            assert isinstance(event, AckReceived)
            ack = frames.decode_client(wire)
            assert isinstance(ack, frames.Ack)
            assert event.cursor == ack.cursor
        elif kind == "ping" and self.state is State.OPEN:
            ping = frames.decode_client(wire)
            assert isinstance(ping, frames.Ping)
            assert event == PingReceived(frames.encode(frames.Pong(id=ping.id)))
        else:
            self._expect_failure(event, ErrorCode.BAD_REQUEST)

    @precondition(lambda self: self.state is State.AUTHENTICATING)
    @rule()
    def accept(self) -> None:
        assert frames.decode_server(self.session.accept(WELCOME)) == WELCOME
        self.state = State.OPEN

    @precondition(lambda self: self.state is not State.AUTHENTICATING)
    @rule()
    def accept_out_of_turn(self) -> None:
        with pytest.raises(RuntimeError):
            self.session.accept(WELCOME)

    @rule(advance=st.floats(0, 5, allow_nan=False))
    def pong(self, advance: float) -> None:
        self.now += advance
        self.session.received_pong(self.now)
        self.last_rx = self.now
        self.ping_at = None

    @rule(advance=st.one_of(st.floats(0, 2 * HEARTBEAT, allow_nan=False), st.just(HEARTBEAT)))
    def tick(self, advance: float) -> None:
        self.now += advance
        got = self.session.tick(self.now)
        assert isinstance(got, Tick)
        if self.state in (State.AWAIT_HELLO, State.AUTHENTICATING):
            want = Tick.HELLO_TIMEOUT if self.now >= self.deadline else Tick.NOTHING
        elif self.state is State.CLOSED:
            want = Tick.NOTHING
        elif self.ping_at is not None:
            want = Tick.DEAD if self.now - self.ping_at >= HEARTBEAT else Tick.NOTHING
        elif self.now - self.last_rx >= HEARTBEAT:
            want = Tick.SEND_PING
            self.ping_at = self.now
        else:
            want = Tick.NOTHING
        assert got is want, (got, want, self.state)

    @precondition(lambda self: self.state is not State.CLOSED)
    @rule(code=st.sampled_from(list(ErrorCode)), gate=st.integers(0, 9))
    def fail(self, code: ErrorCode, gate: int) -> None:
        if gate:
            return
        self._expect_failure(self.session.fail(code, f"test {code.wire}"), code)

    @invariant()
    def same_state(self) -> None:
        assert self.session.state is self.state


# Slow input generation on a busy machine is no fault of the machine under test.
SessionMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSessionMachine = SessionMachine.TestCase


def test_error_frame_wire_is_json_object() -> None:
    for code in ErrorCode:
        obj = msgspec.json.decode(error_frame(code, "d", 7))
        assert obj == {
            "type": "error",
            "code": code.wire,
            "status": code.status,
            "message": "d",
            "retry_after_ms": 7,
        }
