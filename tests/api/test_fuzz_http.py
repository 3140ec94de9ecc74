"""The HTTP bad-input battery as a property test (issue 11): whatever the body and
content type, a real relay answers below 500, every error is problem+json with the
status it is sent with, and a refused push stores nothing.

Bounded for ``make test`` (``PINRELAY_FUZZ_EXAMPLES``, default 150 per route);
``make fuzz`` runs many more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinrelay.core import strictjson
from tests.api.test_api import backlog, new_device
from tests.relayproc import RelayProc

EXAMPLES = int(os.environ.get("PINRELAY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("PINRELAY_FUZZ_RANDOM") is None,
)
GOOD = b'{"data":{"text":"caf\xc3\xa9","n":[1,2.5,null]},"ttl":600,"topic":"t1","urgency":"high"}'
NASTY = [b"\xe9", b"\xed\xa0\x80", b"\xff", b"\x00", b"\\", b'"', b"{", b"}", b",", b":", b"1e999"]
CTYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "application/problem+json",
    "text/plain",
    "",
]


@st.composite
def bodies(draw: st.DrawFn, good: bytes = GOOD) -> bytes:
    """Valid bodies cut, spliced, repeated and salted with bytes parsers trip on."""
    kind = draw(st.sampled_from(["mutate", "random", "duplicate", "deep"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    if kind == "deep":
        depth = draw(st.integers(1, 5000))
        return b'{"data":' + b"[" * depth + b"]" * depth + b',"ttl":5}'
    if kind == "duplicate":
        key = draw(st.sampled_from([b'"ttl":1', b'"data":2', b'"topic":"x"', b'"urgency":"low"']))
        return good[:-1] + b"," + key + b"}"
    body = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        if draw(st.booleans()):
            body[at:at] = draw(st.sampled_from(NASTY))
        else:
            del body[at : at + draw(st.integers(1, 8))]
    return bytes(body)


@pytest.fixture
def api(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json", r.text
        problem: dict[str, Any] = r.json()
        assert problem["status"] == r.status_code and problem["detail"]


def strict_ok(body: bytes) -> bool:
    try:
        strictjson.check(body)
        json.loads(body)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("asgi", [False, True], ids=["push path", "asgi"])
def test_single_push_battery(api: httpx.Client, asgi: bool) -> None:
    pin = new_device(api)["pin"]

    @FUZZ
    @given(body=bodies(), ctype=st.sampled_from(CTYPES))
    def one(body: bytes, ctype: str) -> None:
        headers = {"Content-Type": ctype} if ctype else {}
        if asgi:
            headers["X-Forwarded-For"] = "127.0.0.1"
        before = backlog(api, pin)
        r = api.post(f"/v1/devices/{pin}/messages", content=body, headers=headers)
        check_answer(r)
        if r.status_code == 201:
            assert strict_ok(body), body  # only clean JSON is ever stored
        else:  # refused: nothing stored (a mutated short ttl may expire meanwhile)
            assert backlog(api, pin) <= before

    one()


def _live_keys(api: httpx.Client) -> list[str]:
    return [k["id"] for k in api.get("/v1/keys").json()["keys"] if not k["revoked"]]


def test_batch_and_admin_battery(api: httpx.Client) -> None:
    pin = new_device(api)["pin"]
    keys_before = _live_keys(api)

    @FUZZ
    @given(body=bodies(), route=st.sampled_from(["batch", "keys", "devices", "key-scope"]))
    def one(body: bytes, route: str) -> None:
        headers = {"Content-Type": "application/json"}
        if route == "batch":
            item = body[:-1] + f',"to":"{pin}"}}'.encode() if body.endswith(b"}") else body
            before = backlog(api, pin)
            r = api.post("/v1/messages", content=b'{"messages":[%s]}' % item, headers=headers)
            check_answer(r)
            if r.status_code == 200:
                assert strict_ok(item), item
            else:
                assert backlog(api, pin) <= before
        elif route in ("keys", "key-scope"):
            if route == "key-scope":  # a second scope anywhere must never make a key
                body = b'{"name":"k","scope":"push",' + body[1:]
            r = api.post("/v1/keys", content=body, headers=headers)
            check_answer(r)
            if r.status_code == 201:
                assert strict_ok(body), body
                assert api.delete(f"/v1/keys/{r.json()['id']}").status_code == 204
        else:
            r = api.post("/v1/devices", content=body, headers=headers)
            check_answer(r)
            if r.status_code == 201:
                assert api.delete(f"/v1/devices/{r.json()['pin']}").status_code == 204

    one()
    assert _live_keys(api) == keys_before
