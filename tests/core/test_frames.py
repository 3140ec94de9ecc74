"""Link frames: exact JSON byte vectors, evolution rules and round-trips."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinrelay.core import frames
from pinrelay.core.frames import Ack, Drain, Error, Hello, Msg, Ping, Pong, Welcome

PIN = "0A1B2C3D"
ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
SENT = "2026-11-23T03:04:05.678Z"
EXPIRES = "2026-11-24T03:04:05.678Z"

# --- byte vectors: encode ------------------------------------------------------

ENCODE_VECTORS: list[tuple[frames.ClientFrame | frames.ServerFrame, bytes]] = [
    (
        Hello(pin=PIN, token="tok"),
        b'{"type":"hello","pin":"0A1B2C3D","token":"tok","cursor":0,"window":null,"client":null}',
    ),
    (
        Hello(pin=PIN, token="tok", cursor=42, window=64, client="pinrelay-py/0.1"),
        b'{"type":"hello","pin":"0A1B2C3D","token":"tok","cursor":42,"window":64,'
        b'"client":"pinrelay-py/0.1"}',
    ),
    (Ack(cursor=5), b'{"type":"ack","cursor":5}'),
    (
        Welcome(
            session="s1",
            pin=PIN,
            cursor=3,
            window=64,
            heartbeat_s=25,
            max_frame=65536,
            node="n1",
            region="eu",
            version="0.1.0",
        ),
        b'{"type":"welcome","session":"s1","pin":"0A1B2C3D","cursor":3,"window":64,'
        b'"heartbeat_s":25,"max_frame":65536,"node":"n1","region":"eu","version":"0.1.0"}',
    ),
    (
        Msg(
            id=ULID,
            cursor=7,
            kind="push",
            data=msgspec.Raw(b'{"n":1}'),
            topic=None,
            urgency="normal",
            sent_at=SENT,
            expires_at=EXPIRES,
        ),
        b'{"type":"msg","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","cursor":7,"kind":"push",'
        b'"data":{"n":1},"topic":null,"urgency":"normal",'
        b'"sent_at":"2026-11-23T03:04:05.678Z","expires_at":"2026-11-24T03:04:05.678Z",'
        b'"from":null}',
    ),
    (
        Msg(
            id=ULID,
            cursor=8,
            kind="message",
            data=msgspec.Raw(b'[1,"two",{"three":3.0}]'),
            topic="weather",
            urgency="high",
            sent_at=SENT,
            expires_at=EXPIRES,
            sender="0F0F0F0F",
        ),
        b'{"type":"msg","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","cursor":8,"kind":"message",'
        b'"data":[1,"two",{"three":3.0}],"topic":"weather","urgency":"high",'
        b'"sent_at":"2026-11-23T03:04:05.678Z","expires_at":"2026-11-24T03:04:05.678Z",'
        b'"from":"0F0F0F0F"}',
    ),
    (
        Error(code="invalid", status=422, message="bad"),
        b'{"type":"error","code":"invalid","status":422,"message":"bad","retry_after_ms":null}',
    ),
    (
        Error(code="overloaded", status=503, message="busy", retry_after_ms=1500),
        b'{"type":"error","code":"overloaded","status":503,"message":"busy","retry_after_ms":1500}',
    ),
    (
        Drain(reason="shutdown", retry_after_ms=1000),
        b'{"type":"drain","reason":"shutdown","retry_after_ms":1000,"alternates":[]}',
    ),
    (
        Drain(reason="rebalance", retry_after_ms=0, alternates=["wss://a", "wss://b"]),
        b'{"type":"drain","reason":"rebalance","retry_after_ms":0,'
        b'"alternates":["wss://a","wss://b"]}',
    ),
    (Ping(), b'{"type":"ping","id":null}'),
    (Ping(id="7"), b'{"type":"ping","id":"7"}'),
    (Pong(), b'{"type":"pong","id":null}'),
    (Pong(id="7"), b'{"type":"pong","id":"7"}'),
]


@pytest.mark.parametrize(
    ("frame", "wire"), ENCODE_VECTORS, ids=[type(f).__name__ for f, _ in ENCODE_VECTORS]
)
def test_encode_vector(frame: frames.ClientFrame | frames.ServerFrame, wire: bytes) -> None:
    assert frames.encode(frame) == wire


@pytest.mark.parametrize(
    ("frame", "wire"), ENCODE_VECTORS, ids=[type(f).__name__ for f, _ in ENCODE_VECTORS]
)
def test_encode_vector_decodes_back(
    frame: frames.ClientFrame | frames.ServerFrame, wire: bytes
) -> None:
    decoded: frames.ClientFrame | frames.ServerFrame
    if isinstance(frame, Hello | Ack | Ping):
        decoded = frames.decode_client(wire)
    else:
        decoded = frames.decode_server(wire)
    assert type(decoded) is type(frame)
    assert decoded == frame


# --- byte vectors: decode ------------------------------------------------------


class TestDecodeClient:
    def test_hello_minimal_uses_defaults(self) -> None:
        frame = frames.decode_client(b'{"type":"hello","pin":"0A1B2C3D","token":"t"}')
        assert frame == Hello(pin=PIN, token="t", cursor=0, window=None, client=None)

    def test_hello_full(self) -> None:
        frame = frames.decode_client(
            '{"client":"c/1","window":4096,"cursor":9007199254740991,'
            '"token":"t","pin":"0A1B2C3D","type":"hello"}'
        )
        assert frame == Hello(pin=PIN, token="t", cursor=2**53 - 1, window=4096, client="c/1")

    def test_ack(self) -> None:
        assert frames.decode_client(b'{"type":"ack","cursor":0}') == Ack(cursor=0)
        assert frames.decode_client('{"cursor":17,"type":"ack"}') == Ack(cursor=17)

    def test_accepts_str_and_bytes(self) -> None:
        wire = '{"type":"ack","cursor":3}'
        assert frames.decode_client(wire) == frames.decode_client(wire.encode())

    def test_whitespace_is_allowed(self) -> None:
        assert frames.decode_client(b' { "type" : "ack" , "cursor" : 2 } \n') == Ack(cursor=2)

    @pytest.mark.parametrize(
        "wire",
        [
            b'{"type":"hello","pin":"0A1B2C3D","token":"t","resume":true,"x":{"y":[1,null]}}',
            b'{"type":"hello","future":1.5,"pin":"0A1B2C3D","token":"t"}',
        ],
    )
    def test_unknown_fields_ignored_hello(self, wire: bytes) -> None:
        assert frames.decode_client(wire) == Hello(pin=PIN, token="t")

    def test_unknown_fields_ignored_ack(self) -> None:
        wire = b'{"type":"ack","cursor":4,"sack":[5,7],"meta":{"a":"b"}}'
        assert frames.decode_client(wire) == Ack(cursor=4)

    @pytest.mark.parametrize(
        "wire",
        [
            b'{"type":"ack","cursor":-1}',
            b'{"type":"ack","cursor":9007199254740992}',
            b'{"type":"ack","cursor":"1"}',
            b'{"type":"ack","cursor":1.0}',
            b'{"type":"ack","cursor":true}',
            b'{"type":"ack"}',
            b'{"type":"hello","pin":"0A1B2C3D"}',
            b'{"type":"hello","pin":1,"token":"t"}',
            b'{"type":"hello","pin":"0A1B2C3D","token":"t","window":0}',
            b'{"type":"hello","pin":"0A1B2C3D","token":"t","window":4097}',
            b'{"type":"welcome"}',
            b'{"type":"nope","cursor":1}',
            b'{"cursor":1}',
            b"[]",
            b"1",
            b'"ack"',
            b"null",
        ],
    )
    def test_schema_violations_raise_validation_error(self, wire: bytes) -> None:
        with pytest.raises(msgspec.ValidationError):
            frames.decode_client(wire)

    @pytest.mark.parametrize(
        "wire",
        [b"", b"{", b"not json", b'{"type":"ack","cursor":1', b"\xff\xfe", b'{"type":"ack"}x'],
    )
    def test_malformed_raises_decode_error(self, wire: bytes) -> None:
        with pytest.raises(msgspec.DecodeError):
            frames.decode_client(wire)

    def test_ping_id_is_at_most_64_characters(self) -> None:
        assert frames.decode_client('{"type":"ping","id":"%s"}' % ("é" * 64)) == Ping(id="é" * 64)
        assert frames.decode_client('{"type":"ping"}') == Ping()
        with pytest.raises(msgspec.ValidationError):
            frames.decode_client('{"type":"ping","id":"%s"}' % ("x" * 65))
        with pytest.raises(msgspec.ValidationError):
            frames.decode_client('{"type":"ping","id":7}')

    def test_server_frames_are_not_client_frames(self) -> None:
        for frame, wire in ENCODE_VECTORS:
            if not isinstance(frame, Hello | Ack | Ping):
                with pytest.raises(msgspec.ValidationError):
                    frames.decode_client(wire)


class TestDecodeServer:
    def test_msg_from_is_renamed_to_sender(self) -> None:
        frame = frames.decode_server(
            b'{"type":"msg","id":"x","cursor":1,"kind":"push","data":null,"topic":null,'
            b'"urgency":"low","sent_at":"a","expires_at":"b","from":"0F0F0F0F"}'
        )
        assert isinstance(frame, Msg)
        assert frame.sender == "0F0F0F0F"

    def test_msg_sender_field_name_is_not_on_the_wire(self) -> None:
        frame = frames.decode_server(
            b'{"type":"msg","id":"x","cursor":1,"kind":"push","data":null,"topic":null,'
            b'"urgency":"low","sent_at":"a","expires_at":"b","sender":"0F0F0F0F"}'
        )
        assert isinstance(frame, Msg)
        assert frame.sender is None  # "sender" is an unknown field, ignored
        assert b'"sender"' not in frames.encode(frame)
        assert b'"from":null' in frames.encode(frame)

    def test_msg_data_is_kept_verbatim(self) -> None:
        frame = frames.decode_server(
            b'{"type":"msg","id":"x","cursor":1,"kind":"push","data":  [1, {"a" : 2}] ,'
            b'"topic":"t","urgency":"normal","sent_at":"a","expires_at":"b"}'
        )
        assert isinstance(frame, Msg)
        assert isinstance(frame.data, msgspec.Raw)
        assert bytes(frame.data) == b'[1, {"a" : 2}]'
        assert frame.topic == "t"
        assert frame.sender is None

    def test_msg_topic_is_required(self) -> None:
        with pytest.raises(msgspec.ValidationError):
            frames.decode_server(
                b'{"type":"msg","id":"x","cursor":1,"kind":"push","data":1,'
                b'"urgency":"normal","sent_at":"a","expires_at":"b"}'
            )

    def test_error_defaults(self) -> None:
        frame = frames.decode_server(b'{"type":"error","code":"c","status":400,"message":"m"}')
        assert frame == Error(code="c", status=400, message="m", retry_after_ms=None)

    def test_drain_defaults(self) -> None:
        frame = frames.decode_server(b'{"type":"drain","reason":"r","retry_after_ms":5}')
        assert frame == Drain(reason="r", retry_after_ms=5, alternates=[])

    def test_unknown_fields_ignored(self) -> None:
        frame = frames.decode_server(
            b'{"type":"welcome","session":"s1","pin":"0A1B2C3D","cursor":3,"window":64,'
            b'"heartbeat_s":25,"max_frame":65536,"node":"n1","region":"eu","version":"0.1.0",'
            b'"features":["sack"],"limits":{"x":1}}'
        )
        assert frame == ENCODE_VECTORS[3][0]
        drain = frames.decode_server(b'{"type":"drain","reason":"r","retry_after_ms":5,"w":0}')
        assert drain == Drain(reason="r", retry_after_ms=5)

    def test_client_frames_are_not_server_frames(self) -> None:
        with pytest.raises(msgspec.ValidationError):
            frames.decode_server(b'{"type":"ack","cursor":1}')


# --- properties ----------------------------------------------------------------

texts = st.text(max_size=40)
opt_texts = st.none() | texts
cursors = st.integers(min_value=0, max_value=2**53 - 1)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
raw_json = json_values.map(lambda v: msgspec.Raw(msgspec.json.encode(v)))

hellos = st.builds(
    Hello,
    pin=texts,
    token=texts,
    cursor=cursors,
    window=st.none() | st.integers(min_value=1, max_value=4096),
    client=opt_texts,
)
acks = st.builds(Ack, cursor=cursors)
pings = st.builds(Ping, id=st.none() | st.text(max_size=64))
pongs = st.builds(Pong, id=opt_texts)
welcomes = st.builds(
    Welcome,
    session=texts,
    pin=texts,
    cursor=ints,
    window=ints,
    heartbeat_s=st.floats(min_value=0, max_value=86_400, allow_nan=False),
    max_frame=ints,
    node=texts,
    region=texts,
    version=texts,
)
msgs = st.builds(
    Msg,
    id=texts,
    cursor=ints,
    kind=texts,
    data=raw_json,
    topic=opt_texts,
    urgency=texts,
    sent_at=texts,
    expires_at=texts,
    sender=opt_texts,
)
errors = st.builds(Error, code=texts, status=ints, message=texts, retry_after_ms=st.none() | ints)
drains = st.builds(Drain, reason=texts, retry_after_ms=ints, alternates=st.lists(texts, max_size=4))


@given(hellos | acks | pings)
def test_client_frame_round_trip(frame: frames.ClientFrame) -> None:
    wire = frames.encode(frame)
    assert frames.decode_client(wire) == frame
    assert frames.decode_client(wire.decode()) == frame


@given(welcomes | errors | drains | pongs)
def test_server_frame_round_trip(frame: frames.ServerFrame) -> None:
    assert frames.decode_server(frames.encode(frame)) == frame


@given(msgs)
def test_msg_round_trip_field_by_field(frame: Msg) -> None:
    decoded = frames.decode_server(frames.encode(frame))
    assert isinstance(decoded, Msg)
    for name in frame.__struct_fields__:
        if name == "data":
            assert bytes(decoded.data) == bytes(frame.data)
        else:
            assert getattr(decoded, name) == getattr(frame, name), name


@given(msgs)
def test_msg_wire_uses_from(frame: Msg) -> None:
    obj = json.loads(frames.encode(frame))
    assert obj["type"] == "msg"
    assert obj["from"] == frame.sender
    assert "sender" not in obj
    assert obj["data"] == json.loads(bytes(frame.data))


def _frame_like(tag: str) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects shaped roughly like a frame, with fields of arbitrary types."""
    fields = st.sampled_from(["pin", "token", "cursor", "window", "client", "extra"])
    return st.dictionaries(fields, json_values, max_size=6).map(lambda d: {"type": tag, **d})


fuzz_inputs = (
    st.binary(max_size=200)
    | st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.sampled_from(["hello", "ack", "ping", "msg", "welcome", ""])
    .flatmap(_frame_like)
    .map(json.dumps)
    | (hellos | acks | pings).map(frames.encode)
    | (hellos | acks | pings).map(frames.encode).map(lambda b: b[: len(b) // 2])
)


@given(fuzz_inputs)
def test_decode_client_returns_frame_or_raises_msgspec_errors(data: str | bytes) -> None:
    try:
        frame = frames.decode_client(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    assert isinstance(frame, Hello | Ack | Ping)


def test_decode_client_lone_surrogate_raises_decode_error() -> None:
    # A str that is not valid Unicode (lone surrogate) cannot be UTF-8 encoded;
    # decode_client promises DecodeError/ValidationError only.
    with pytest.raises(msgspec.DecodeError):
        frames.decode_client('{"type":"hello","pin":"\ud800","token":"t"}')


DEEP = 5000  # ~10 KB of brackets: well under any sane max_frame


def test_decode_client_deeply_nested_unknown_field() -> None:
    wire = b'{"type":"ack","cursor":1,"x":' + b"[" * DEEP + b"]" * DEEP + b"}"
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        frames.decode_client(wire)


def test_decode_client_deeply_nested_known_field() -> None:
    wire = b'{"type":"hello","pin":"0A1B2C3D","token":"t","client":' + b"[" * DEEP + b"]" * DEEP
    with pytest.raises(msgspec.ValidationError):
        frames.decode_client(wire + b"}")
