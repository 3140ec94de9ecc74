"""The HTTP protocol's own path for single pushes (api/httpproto.py), on a real relay.

``POST /v1/devices/{pin}/messages`` is answered without ASGI; a request carrying
``X-Forwarded-For`` goes through ASGI and Starlette instead (no proxy is trusted by
default, so the header changes nothing else).  Both must give the same answers, and
the push path must keep HTTP/1.1's rules: pipelining, bodies in pieces, chunked bodies,
early answers, clients that leave, ``Connection: close``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.relayproc import RelayProc

# Every test here on the `relay` fixture makes devices of its own: one relay for the
# module (tests/conftest.py).
pytestmark = pytest.mark.shared_relay

ASGI = {"X-Forwarded-For": "127.0.0.1"}
Answer = tuple[int, list[tuple[str, str]], bytes]


class Raw:
    """One keep-alive HTTP/1.1 connection, written and read byte by byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the relay closed the connection")
        self.buf += data

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [
            (k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])
        ]
        length = int(dict(headers)["content-length"])
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def at_eof(self) -> bool:
        try:
            self._more()
        except EOFError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def api(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


@pytest.fixture
def raw(relay: RelayProc) -> Iterator[Raw]:
    conn = Raw(relay.port)
    yield conn
    conn.close()


def push(pin: str, body: bytes, key: str, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/devices/%s/messages HTTP/1.1\r\nHost: relay\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (pin.encode(), key.encode(), len(body), extra)
    ) + body


def backlog(api: httpx.Client, pin: str) -> int:
    return int(api.get(f"/v1/devices/{pin}").json()["backlog"])


def _essentials(r: httpx.Response) -> dict[str, Any]:
    """What must agree between the two paths (a 201's id and cursor differ by nature)."""
    body = r.json()
    if r.status_code == 201:
        body = sorted(body)
    return {
        "status": r.status_code,
        "content-type": r.headers["content-type"],
        "retry-after": r.headers.get("retry-after"),
        "www-authenticate": r.headers.get("www-authenticate"),
        "body": body,
    }


def test_both_paths_answer_every_case_alike(relay: RelayProc, api: httpx.Client) -> None:
    pin = api.post("/v1/devices", json={}).json()["pin"]
    devices_key = api.post("/v1/keys", json={"name": "d", "scope": "devices"}).json()["key"]
    admin = relay.admin_headers()
    json_ct = {"Content-Type": "application/json"}
    cases: list[tuple[str, str, dict[str, str], bytes]] = [
        ("stored", pin, {**admin, **json_ct}, b'{"data":{"a":1},"ttl":60}'),
        ("no key", pin, json_ct, b'{"data":1,"ttl":60}'),
        ("wrong scope", pin, {"Authorization": f"Bearer {devices_key}", **json_ct}, b"{}"),
        ("not JSON media", pin, {**admin, "Content-Type": "text/plain"}, b"x"),
        ("malformed", pin, {**admin, **json_ct}, b'{"data":'),
        ("no ttl", pin, {**admin, **json_ct}, b'{"data":1}'),
        ("data too large", pin, {**admin, **json_ct}, b'{"data":"%s","ttl":5}' % (b"x" * 5000)),
        ("body too large", pin, {**admin, **json_ct}, b" " * 80_000),
        ("unknown device", "0000BEEF", {**admin, **json_ct}, b'{"data":1,"ttl":60}'),
        ("bad PIN", "nope", {**admin, **json_ct}, b'{"data":1,"ttl":60}'),
        ("bad idempotency key", pin, {**admin, **json_ct, "Idempotency-Key": "k" * 300}, b"{}"),
    ]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        for name, to, headers, body in cases:
            url = f"/v1/devices/{to}/messages"
            lean = http.post(url, content=body, headers=headers)
            asgi = http.post(url, content=body, headers={**headers, **ASGI})
            assert _essentials(lean) == _essentials(asgi), name
            assert lean.status_code != 500, name
    # Only the two "stored" pushes were kept.
    assert backlog(api, pin) == 2


def test_the_push_path_is_the_one_taken(relay: RelayProc, api: httpx.Client, raw: Raw) -> None:
    # A witness that the comparison above compares two paths: Starlette's Response
    # writes content-length before content-type, the push path the other way round.
    pin = api.post("/v1/devices", json={}).json()["pin"]
    body = b'{"data":1,"ttl":60}'
    raw.send(push(pin, body, "pra_test_admin_key"))
    raw.send(push(pin, body, "pra_test_admin_key", b"X-Forwarded-For: 127.0.0.1\r\n"))
    lean, asgi = raw.answer(), raw.answer()
    assert lean[0] == asgi[0] == 201
    order = [[n for n, _ in a[1] if n.startswith("content-")] for a in (lean, asgi)]
    assert order == [["content-type", "content-length"], ["content-length", "content-type"]]
    assert {"date", "server"} <= {n for n, _ in lean[1]}


def test_pipelined_requests_are_answered_in_order(
    relay: RelayProc, api: httpx.Client, raw: Raw
) -> None:
    pin = api.post("/v1/devices", json={}).json()["pin"]
    key = "pra_test_admin_key"
    get = b"GET /v1/devices/%s HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer %s\r\n\r\n" % (
        pin.encode(),
        key.encode(),
    )
    # Everything in one segment: push, read, push, a bad push, read.
    raw.send(
        push(pin, b'{"data":1,"ttl":60}', key)
        + get
        + push(pin, b'{"data":2,"ttl":60}', key)
        + push(pin, b'{"data":', key)
        + get
    )
    answers = [raw.answer() for _ in range(5)]
    assert [a[0] for a in answers] == [201, 200, 201, 400, 200]
    assert json.loads(answers[0][2])["cursor"] == 1
    assert json.loads(answers[1][2])["backlog"] >= 1
    assert json.loads(answers[2][2])["cursor"] == 2
    assert json.loads(answers[4][2])["last_cursor"] == 2


def test_a_body_in_pieces_and_a_chunked_body(relay: RelayProc, api: httpx.Client, raw: Raw) -> None:
    pin = api.post("/v1/devices", json={}).json()["pin"]
    request = push(pin, b'{"data":"slow","ttl":60}', "pra_test_admin_key")
    head, _, body = request.partition(b"\r\n\r\n")
    raw.send(head + b"\r\n\r\n" + body[:7])
    time.sleep(0.3)  # pacing: the rest comes in a later read (what the test is about)
    raw.send(body[7:])
    assert raw.answer()[0] == 201

    chunked = (
        b"POST /v1/devices/%s/messages HTTP/1.1\r\nHost: r\r\n"
        b"Authorization: Bearer pra_test_admin_key\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % pin.encode()
    )
    first, rest = b'{"dat', b'a":[1],"ttl":9}'
    raw.send(chunked + b"%x\r\n%s\r\n" % (len(first), first))
    time.sleep(0.1)  # pacing: the second chunk comes in a later read
    raw.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
    status, _, answer = raw.answer()
    assert status == 201, answer
    assert json.loads(answer)["cursor"] == 2

    # A chunked body past the limit (the data limit + 64 KiB) is refused with 413,
    # nothing is stored, and the connection still serves the next request.
    raw.send(chunked)
    for _ in range(20):
        raw.send(b"1000\r\n" + b" " * 0x1000 + b"\r\n")
    status, _, answer = raw.answer()
    assert status == 413, answer
    raw.send(b"0\r\n\r\n")
    raw.send(push(pin, b'{"data":3,"ttl":60}', "pra_test_admin_key"))
    status, _, answer = raw.answer()
    assert status == 201 and json.loads(answer)["cursor"] == 3
    assert backlog(api, pin) == 3


def test_a_too_long_body_is_refused_before_it_is_sent(
    relay: RelayProc, api: httpx.Client, raw: Raw
) -> None:
    pin = api.post("/v1/devices", json={}).json()["pin"]
    raw.send(
        b"POST /v1/devices/%s/messages HTTP/1.1\r\nHost: r\r\n"
        b"Authorization: Bearer pra_test_admin_key\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n" % pin.encode()
    )
    status, headers, body = raw.answer()  # no byte of the body was sent
    assert status == 413
    assert dict(headers)["content-type"] == "application/problem+json"
    assert "10000000" in json.loads(body)["detail"]
    assert backlog(api, pin) == 0


def test_a_client_that_leaves_mid_body_stores_nothing(relay: RelayProc, api: httpx.Client) -> None:
    pin = api.post("/v1/devices", json={}).json()["pin"]
    for _ in range(5):
        conn = Raw(relay.port)
        request = push(pin, b'{"data":"never finished","ttl":60}', "pra_test_admin_key")
        conn.send(request[:-5])
        time.sleep(0.05)  # pacing: the relay reads the partial body before the client leaves
        conn.close()
    # Nothing must be stored: a window in which a cut-off body would (wrongly) be.
    time.sleep(0.3)
    assert backlog(api, pin) == 0
    r = api.post(f"/v1/devices/{pin}/messages", json={"data": 1, "ttl": 60})
    assert r.status_code == 201 and r.json()["cursor"] == 1


def test_connection_close_is_honoured(relay: RelayProc, api: httpx.Client, raw: Raw) -> None:
    pin = api.post("/v1/devices", json={}).json()["pin"]
    raw.send(push(pin, b'{"data":1,"ttl":60}', "pra_test_admin_key", b"Connection: close\r\n"))
    status, headers, _ = raw.answer()
    assert status == 201
    assert dict(headers)["connection"] == "close"
    assert raw.at_eof()


def test_an_idempotent_retry_gets_the_first_answer_on_either_path(
    relay: RelayProc, api: httpx.Client
) -> None:
    pin = api.post("/v1/devices", json={}).json()["pin"]
    url = f"/v1/devices/{pin}/messages"
    once = {"Idempotency-Key": "order-17"}
    first = api.post(url, json={"data": 1, "ttl": 60}, headers=once)
    again = api.post(url, json={"data": 1, "ttl": 60}, headers={**once, **ASGI})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = api.post(url, json={"data": 2, "ttl": 60}, headers={**once, **ASGI})
    assert other.status_code == 409  # the same key with another body
    assert backlog(api, pin) == 1


# --- Web Push (POST /push/{sub}) takes the push path too ------------------------------
#: An aes128gcm body as far as the relay looks (RFC 8188 header, sender key, one
#: record): it never decrypts.
WEBPUSH_BODY = b"s" * 16 + (4096).to_bytes(4, "big") + b"\x41" + b"\x04" * 65 + b"r" * 40


def _webpush_essentials(r: httpx.Response) -> dict[str, Any]:
    """What must agree between the two paths (a message's Location differs by nature)."""
    return {
        "status": r.status_code,
        "content-type": r.headers.get("content-type"),
        "ttl": r.headers.get("ttl"),
        "location": "location" in r.headers,
        "link": "link" in r.headers,
        "retry-after": r.headers.get("retry-after"),
        "body": r.json() if r.content else None,
    }


def test_both_paths_answer_web_push_alike(relay: RelayProc, api: httpx.Client) -> None:
    device = api.post("/v1/devices", json={}).json()
    sub = httpx.post(
        f"{relay.url}/v1/devices/{device['pin']}/subscriptions",
        json={},
        headers={"Authorization": f"Bearer {device['token']}"},
    ).json()["id"]
    ok = {"TTL": "60", "Content-Encoding": "aes128gcm"}
    cases: list[tuple[str, str, dict[str, str], bytes]] = [
        ("stored", sub, ok, WEBPUSH_BODY),
        ("receipt asked", sub, {**ok, "Prefer": "respond-async"}, WEBPUSH_BODY),
        ("no TTL", sub, {"Content-Encoding": "aes128gcm"}, WEBPUSH_BODY),
        ("bad urgency", sub, {**ok, "Urgency": "soon"}, WEBPUSH_BODY),
        ("aesgcm", sub, {**ok, "Content-Encoding": "aesgcm"}, WEBPUSH_BODY),
        ("empty", sub, ok, b""),
        ("too large", sub, ok, WEBPUSH_BODY + b"x" * 4096),
        ("bad VAPID", sub, {**ok, "Authorization": "vapid t=x"}, WEBPUSH_BODY),
        ("unknown subscription", "A" * 22, ok, WEBPUSH_BODY),
    ]
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        for name, to, headers, body in cases:
            lean = http.post(f"/push/{to}", content=body, headers=headers)
            asgi = http.post(f"/push/{to}", content=body, headers={**headers, **ASGI})
            assert _webpush_essentials(lean) == _webpush_essentials(asgi), name
            assert lean.status_code < 500, name
    assert backlog(api, device["pin"]) == 4


def test_web_push_takes_the_push_path(relay: RelayProc, api: httpx.Client, raw: Raw) -> None:
    # The witness: the push path writes content-length before the answer's headers,
    # Starlette's Response after them.
    device = api.post("/v1/devices", json={}).json()
    sub = httpx.post(
        f"{relay.url}/v1/devices/{device['pin']}/subscriptions",
        json={},
        headers={"Authorization": f"Bearer {device['token']}"},
    ).json()["id"]
    head = (
        b"POST /push/%s HTTP/1.1\r\nHost: relay\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\n"
        b"Content-Length: %d\r\n" % (sub.encode(), len(WEBPUSH_BODY))
    )
    raw.send(head + b"\r\n" + WEBPUSH_BODY)
    raw.send(head + b"X-Forwarded-For: 127.0.0.1\r\n\r\n" + WEBPUSH_BODY)
    lean, asgi = raw.answer(), raw.answer()
    assert lean[0] == asgi[0] == 201
    names = [[n for n, _ in a[1] if n in ("content-length", "location")] for a in (lean, asgi)]
    assert names == [["content-length", "location"], ["location", "content-length"]]
    assert not any(n == "content-type" for n, _ in lean[1])
