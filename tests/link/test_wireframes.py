"""The link's hand-rolled text frames against websockets' own codec."""

from __future__ import annotations

import asyncio
import json
import time

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from pinrelay.link.wireframes import client_text_frames, text_frame, whole_frames
from tests.linkclient import RawLink
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

LIMIT = 16 * 1024
payloads = st.lists(st.binary(max_size=300) | st.binary(min_size=126, max_size=70_000), max_size=5)


def client(opcode: Opcode, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    data = Frame(opcode, payload, fin).serialize(mask=True, extensions=[])
    return bytes([data[0] | 0x40]) + data[1:] if rsv1 else data  # websockets refuses RSV


@given(payloads)
def test_a_run_of_client_text_frames_splits_into_its_payloads(run: list[bytes]) -> None:
    data = b"".join(client(Opcode.TEXT, p) for p in run)
    assert whole_frames(data)
    got = client_text_frames(data, 70_000)
    assert got is not None
    assert [p for p, _ in got] == run
    assert [stop for _, stop in got][-1:] == ([len(data)] if run else [])


@given(payloads.filter(bool), st.data())
def test_a_run_cut_short_is_left_to_websockets(run: list[bytes], data: st.DataObject) -> None:
    whole = b"".join(client(Opcode.TEXT, p) for p in run)
    ends = {0}
    for p in run:
        ends.add(max(ends) + len(client(Opcode.TEXT, p)))
    cut = data.draw(st.integers(1, len(whole) - 1).filter(lambda c: c not in ends))
    assert client_text_frames(whole[:cut], 70_000) is None
    assert not whole_frames(whole[:cut])


@given(st.binary(max_size=200))
def test_other_frames_are_left_to_websockets_but_end_on_a_boundary(payload: bytes) -> None:
    text = client(Opcode.TEXT, b'{"type":"ack","cursor":1}')
    for other in (
        client(Opcode.PING, payload[:125]),
        client(Opcode.BINARY, payload),
        client(Opcode.TEXT, payload, fin=False),
        client(Opcode.TEXT, payload, rsv1=True),
        Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]),
    ):
        for data in (other, text + other, other + text):
            assert client_text_frames(data, LIMIT) is None
            assert whole_frames(data)


def test_a_frame_over_the_limit_is_left_to_websockets() -> None:
    assert client_text_frames(client(Opcode.TEXT, b"x" * (LIMIT + 1)), LIMIT) is None
    assert client_text_frames(client(Opcode.TEXT, b"x" * LIMIT), LIMIT) is not None


@given(st.binary(max_size=70_000))
def test_server_text_frames_are_websockets_own(payload: bytes) -> None:
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def frames_of(link: RawLink, want: int) -> list[Frame]:
    got: list[Frame] = []
    deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
    while len(got) < want and time.monotonic() < deadline:
        link.proto.receive_data(link.sock.recv(65536))
        got.extend(e for e in link.proto.events_received() if isinstance(e, Frame))
    return got


async def test_split_frames_and_pings_between_acks_on_a_real_link(relay: RelayProc) -> None:
    """The relay takes frames cut across TCP writes (and pings among acks) as they
    come, then goes on taking whole ones."""
    device = relay.create_device()
    with relay.client() as c:
        for n in range(3):
            c.push(device["pin"], {"n": n}, ttl=600)
    raw = RawLink(relay)
    try:
        hello = json.dumps({"type": "hello", "pin": device["pin"], "token": device["token"]})
        hello_frame = client(Opcode.TEXT, hello.encode())
        raw.sock.sendall(hello_frame[:3])  # a header cut short
        await asyncio.sleep(0.1)
        raw.sock.sendall(hello_frame[3:])
        got = await asyncio.to_thread(frames_of, raw, 4)
        kinds = [json.loads(bytes(f.data))["type"] for f in got]
        assert kinds == ["welcome", "msg", "msg", "msg"]
        ack = [client(Opcode.TEXT, b'{"type":"ack","cursor":%d}' % n) for n in (1, 2, 3)]
        raw.sock.sendall(ack[0] + client(Opcode.PING, b"hi"))
        pong = await asyncio.to_thread(frames_of, raw, 1)
        assert [(f.opcode, f.data) for f in pong] == [(Opcode.PONG, b"hi")]
        raw.sock.sendall(ack[1][:7])
        await asyncio.sleep(0.1)
        raw.sock.sendall(ack[1][7:] + ack[2])
        with relay.client() as c:
            for _ in range(50):
                if c.show_device(device["pin"])["acked_cursor"] == 3:
                    break
                await asyncio.sleep(0.1)
            assert c.show_device(device["pin"])["acked_cursor"] == 3
            c.push(device["pin"], {"n": 3}, ttl=600)
        (last,) = await asyncio.to_thread(frames_of, raw, 1)
        assert json.loads(bytes(last.data))["cursor"] == 4
    finally:
        raw.close()
