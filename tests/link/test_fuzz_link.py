"""The link fuzzer as a property test (issue 11): raw WebSocket frames of any opcode,
flags and payload (mutated protocol frames, bytes that are not UTF-8, fragments,
control frames), before and after ``hello``, against a real relay.

Whatever arrives, the relay stays up, every text frame it sends is valid UTF-8 and a
frame of the protocol, and the link ends with a close frame or stays usable.
Bounded for ``make test`` (``PINRELAY_FUZZ_EXAMPLES``); ``make fuzz`` runs more.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from pinrelay.core import frames
from tests.linkclient import RawLink
from tests.relayproc import RelayProc

EXAMPLES = int(os.environ.get("PINRELAY_FUZZ_EXAMPLES", "150")) // 2
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("PINRELAY_FUZZ_RANDOM") is None,
)
OPCODES = [0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB]
SEEDS = [
    b'{"type":"ack","cursor":1}',
    b'{"type":"hello","pin":"0A0A0A0A","token":"x"}',
    b'{"type":"ack","cursor":-1}',
    b'{"type":"nope"}',
    b"[]",
]
NASTY = [b"\xe9", b"\xed\xa0\x80", b"\xff", b"\x00", b'"', b"{", b"99999999999999999999999"]


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(body)))
        body[at:at] = draw(st.sampled_from(NASTY))
    return bytes(body)


@st.composite
def wire_frames(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from(OPCODES))
    payload = draw(payloads())
    fin = draw(st.booleans()) if opcode in (0x0, 0x1, 0x2) else True
    if opcode in (0x8, 0x9, 0xA):
        payload = payload[:125]  # control frames longer than 125 bytes: tried below
    data = bytearray(Frame(Opcode.TEXT, payload, fin).serialize(mask=True, extensions=[]))
    data[0] = (data[0] & 0xF0) | opcode
    if draw(st.integers(0, 9)) == 0:
        data[0] |= draw(st.sampled_from([0x40, 0x20, 0x10]))  # reserved bits
    return bytes(data)


def _read_all(link: RawLink) -> tuple[list[Frame], bool]:
    """Every frame until the relay closes the TCP connection or goes quiet."""
    got: list[Frame] = []
    link.sock.settimeout(0.5)
    try:
        while data := link.sock.recv(65536):
            link.proto.receive_data(data)
            got.extend(e for e in link.proto.events_received() if isinstance(e, Frame))
            with contextlib.suppress(OSError):
                link.sock.sendall(b"".join(link.proto.data_to_send()))
    except (TimeoutError, ConnectionError):
        return got, False
    return got, True


def check_sent(got: list[Frame]) -> None:
    for frame in got:
        if frame.opcode is Opcode.TEXT:
            text = bytes(frame.data).decode("utf-8")  # never a text frame that is not UTF-8
            frames.decode_server(text.encode())
        elif frame.opcode is Opcode.CLOSE and len(frame.data) >= 2:
            code = int.from_bytes(frame.data[:2], "big")
            assert code in (1000, 1001, 1002, 1007, 1008, 1009, 1011) or 4000 <= code < 5000


def _alive(relay: RelayProc) -> None:
    assert httpx.get(f"{relay.url}/readyz", timeout=10).status_code == 200


def test_link_survives_raw_frames(relay: RelayProc) -> None:
    device: dict[str, Any] = relay.create_device()
    hello = json.dumps({"type": "hello", "pin": device["pin"], "token": device["token"]})

    @FUZZ
    @given(st.lists(wire_frames(), min_size=1, max_size=6), st.booleans())
    def one(run: list[bytes], authenticated: bool) -> None:
        link = RawLink(relay)
        try:
            if authenticated:
                link.send_texts(hello.encode())
            link.sock.sendall(b"".join(run))
            got, closed = _read_all(link)
            check_sent(got)
            if not closed:  # not closed yet: end it as a client would
                if link.proto.state is State.OPEN:
                    link.proto.send_close(1000)
                with contextlib.suppress(OSError):
                    link.sock.sendall(b"".join(link.proto.data_to_send()))
                check_sent(_read_all(link)[0])
        finally:
            link.close()
        _alive(relay)

    one()


def test_oversized_control_frame_and_length_lies(relay: RelayProc) -> None:
    lies = [
        b"\x89\xfe\x00\xc8" + b"\x00" * 4 + b"p" * 200,  # a ping of 200 bytes
        b"\x81\xff" + (2**62).to_bytes(8, "big") + b"\x00" * 4,  # text of 2^62 bytes
        b"\x81\x7e\x00\x05" + b"\x00" * 4 + b"ab",  # says 5, sends 2, then leaves
    ]
    for lie in lies:
        link = RawLink(relay)
        try:
            link.sock.sendall(lie)
            link.sock.shutdown(socket.SHUT_WR)
            check_sent(_read_all(link)[0])
        finally:
            link.close()
        _alive(relay)
