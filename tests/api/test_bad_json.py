"""Regressions (issue 11, holes 1 and 7): bodies the relay used to accept and should not.

- Invalid UTF-8 inside ``data`` was stored with 201, then every WebSocket client
  closed the link with 1007 on it and the device got nothing more until it expired.
- ``{"scope": "push", "scope": "admin"}`` made an admin key (the last key won).
- ``charset=latin-1`` was accepted and read as UTF-8.
- A ttl below the store's resolution was stored already expired.

Each single push is sent on both HTTP paths: the HTTP protocol's own push path and,
with ``X-Forwarded-For``, ASGI and Starlette (tests/api/test_push_path.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinrelay.core import frames
from pinrelay.core.ids import hash_secret
from pinrelay.core.model import NewMessage
from pinrelay.store.sqlite import SqliteStore
from tests.api.test_api import assert_problem, backlog, new_device
from tests.conftest import RelayFactory
from tests.linkclient import link, recv
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

PATHS = {"push path": {}, "asgi": {"X-Forwarded-For": "127.0.0.1"}}
JSON = {"Content-Type": "application/json"}

POISON = [
    pytest.param(b'{"data":"caf\xe9","ttl":600}', id="latin-1 byte in a string"),
    pytest.param(b'{"data":{"caf\xe9":1},"ttl":600}', id="in an object key"),
    pytest.param(b'{"data":"\xed\xa0\x80","ttl":600}', id="encoded lone surrogate"),
    pytest.param(b'{"data":"ok\xff","ttl":600}', id="0xff"),
]
DUPLICATES = [
    pytest.param(b'{"data":1,"ttl":600,"ttl":0}', id="ttl twice"),
    pytest.param(b'{"data":{"a":1,"a":2},"ttl":600}', id="inside data"),
    pytest.param(b'{"data":1,"ttl":600,"t\\u0074l":5}', id="escaped twin"),
]

# Every test here makes devices of its own: one relay for the module (tests/conftest.py).
pytestmark = pytest.mark.shared_relay


@pytest.fixture
def api(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


@pytest.mark.parametrize("route", PATHS)
@pytest.mark.parametrize("body", POISON + DUPLICATES)
def test_single_push_refuses_and_stores_nothing(api: httpx.Client, route: str, body: bytes) -> None:
    pin = new_device(api)["pin"]
    r = api.post(f"/v1/devices/{pin}/messages", content=body, headers={**JSON, **PATHS[route]})
    problem = assert_problem(r, 400, "bad_request")
    assert "UTF-8" in problem["detail"] or "twice" in problem["detail"]
    assert backlog(api, pin) == 0


@pytest.mark.parametrize("body", POISON + DUPLICATES)
def test_batch_refuses_and_stores_nothing(api: httpx.Client, body: bytes) -> None:
    good, bad = new_device(api)["pin"], new_device(api)["pin"]
    item = body[:-1] + f',"to":"{bad}"}}'.encode()
    batch = b'{"messages":[{"to":"%s","data":1,"ttl":60},%s]}' % (good.encode(), item)
    assert_problem(api.post("/v1/messages", content=batch, headers=JSON), 400, "bad_request")
    assert backlog(api, good) == 0 and backlog(api, bad) == 0


@pytest.mark.parametrize(
    ("envelope", "status"),
    [
        (b'{"messages":[%s],"messages":[%s]}', 400),
        (b'{"m\\u0065ssages":[%s]}', 400),
        (b'{"messages":[%s]}', 200),
    ],
)
def test_batch_envelope_key_once(api: httpx.Client, envelope: bytes, status: int) -> None:
    pin = new_device(api)["pin"]
    item = b'{"to":"%s","data":{"messages":1},"ttl":60}' % pin.encode()
    body = envelope.replace(b"%s", item)
    r = api.post("/v1/messages", content=body, headers=JSON)
    assert r.status_code == status, r.text
    assert backlog(api, pin) == (1 if status == 200 else 0)


def test_batch_item_over_the_limit_is_refused_before_it_is_checked(api: httpx.Client) -> None:
    pin = new_device(api)["pin"]
    nested = b"[]," * 200_000  # a value the stdlib scanner takes long to build
    item = b'{"to":"%s","data":[%s[]],"ttl":60}' % (pin.encode(), nested)
    r = api.post("/v1/messages", content=b'{"messages":[%s]}' % item, headers=JSON)
    assert_problem(r, 413, "too_large")
    assert backlog(api, pin) == 0


def test_duplicate_scope_makes_no_admin_key(api: httpx.Client) -> None:
    before = api.get("/v1/keys").json()
    body = b'{"name":"sneaky","scope":"push","scope":"admin"}'
    assert_problem(api.post("/v1/keys", content=body, headers=JSON), 400, "bad_request")
    assert api.get("/v1/keys").json() == before


@pytest.mark.parametrize("route", PATHS)
@pytest.mark.parametrize(
    ("ctype", "status"),
    [
        ("application/json; charset=latin-1", 415),
        ('application/json; charset="ISO-8859-1"', 415),
        ("application/json; charset=utf-16", 415),
        ("application/json; charset=UTF-8", 201),
        ('application/json; charset="utf-8"', 201),
        ("application/json;foo=bar", 201),
    ],
)
def test_only_utf8_charsets(api: httpx.Client, route: str, ctype: str, status: int) -> None:
    pin = new_device(api)["pin"]
    headers = {"Content-Type": ctype, **PATHS[route]}
    r = api.post(f"/v1/devices/{pin}/messages", content=b'{"data":1,"ttl":60}', headers=headers)
    if status == 415:
        assert_problem(r, 415, "unsupported_media_type")
    assert r.status_code == status, r.text
    assert backlog(api, pin) == (1 if status == 201 else 0)


@pytest.mark.parametrize("ttl", ["1e-300", "0.0001", "0.5"])
async def test_tiny_ttl_is_rounded_up_and_delivered(relay: RelayProc, ttl: str) -> None:
    device = relay.create_device()
    ws, _ = await link(relay, device)
    try:
        body = b'{"data":{"n":1},"ttl":%s}' % ttl.encode()
        async with httpx.AsyncClient(headers=relay.admin_headers()) as c:
            r = await c.post(
                f"{relay.url}/v1/devices/{device['pin']}/messages", content=body, headers=JSON
            )
        assert r.status_code == 201, r.text
        msg = await recv(ws)
        assert isinstance(msg, frames.Msg) and json.loads(bytes(msg.data)) == {"n": 1}
        # Rounded up to one whole second, the stores' resolution (PROTOCOL "ttl"):
        # before, it was stored already expired, and only the hand-off to a link
        # caught up at that instant delivered it.
        assert r.json()["expires_at"] == msg.expires_at
        lived = datetime.fromisoformat(msg.expires_at) - datetime.fromisoformat(msg.sent_at)
        assert lived == timedelta(seconds=1)
    finally:
        await ws.close()


async def _store_poison(data: Path, token: str) -> str:
    """A store as an older version left it: a message whose data is not UTF-8."""
    await asyncio.to_thread(data.mkdir, parents=True)
    store = SqliteStore(data / "pinrelay.db")
    await store.open()
    try:
        pin = "0BADF00D"
        assert await store.create_device(pin, hash_secret(token), "old", 0) is not None
        now = int(time.time() * 1000)
        poison = NewMessage(
            pin, "m-poison", b'{"text":"caf\xe9"}', None, "normal", now, now + 3_600_000
        )
        await store.append([poison])
        return pin
    finally:
        await store.close()


async def test_a_stored_poison_message_does_not_block_the_device(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    token = "t" * 32
    pin = await _store_poison(tmp_path / "relay", token)
    relay = relay_factory()  # on the data folder above
    device: dict[str, Any] = {"pin": pin, "token": token}
    # The inbox answers valid JSON, the bad bytes replaced by U+FFFD.
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as c:
        r = await c.get(f"{relay.url}/v1/devices/{pin}/inbox")
    assert r.status_code == 200, r.text
    assert r.json()["messages"][0]["data"] == {"text": "caf\ufffd"}
    # The link delivers it (a client would close with 1007 on invalid UTF-8), then more.
    ws, _ = await link(relay, device)
    try:
        first = await recv(ws)
        assert isinstance(first, frames.Msg)
        assert json.loads(bytes(first.data)) == {"text": "caf\ufffd"}
        await ws.send(frames.encode(frames.Ack(cursor=first.cursor)).decode())
        with relay.client() as c:
            c.push(pin, {"n": 2}, ttl=60)
        second = await asyncio.wait_for(recv(ws), 10 * TIMEOUT_FACTOR)
        assert isinstance(second, frames.Msg) and json.loads(bytes(second.data)) == {"n": 2}
    finally:
        await ws.close()
