"""Tenant quotas enforced on a real relay (issue 15; PROTOCOL "Quotas"): each quota's
refusal names it, stores or makes nothing, and leaves every other tenant alone.
tests/api/test_quotas_on_cluster.py runs the same tests on the cluster store."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from pinrelay.api.messages import REFUSAL_HOLD_S
from pinrelay.core import frames
from tests.api.test_api import assert_problem, backlog
from tests.linkclient import closed_with, error_then_close, link, raw_link, recv, send
from tests.relayproc import RelayProc, wait_until, wait_until_async

pytestmark = pytest.mark.shared_relay

PUSH = {"data": {"n": 1}, "ttl": 600}
#: Slow enough that no token comes back while a test runs (one every 100 s).
SLOW_RATE = 0.01


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


class Tenant:
    """A tenant with ``quotas``, a push key and a devices key."""

    def __init__(self, admin: httpx.Client, name: str, **quotas: float) -> None:
        r = admin.post("/v1/tenants", json={"name": name, "quotas": quotas})
        assert r.status_code == 201, r.text
        self.id: str = r.json()["id"]
        self.base_url = str(admin.base_url)
        self.keys: dict[str, str] = {}
        for scope in ("push", "devices"):
            made = admin.post(f"/v1/tenants/{self.id}/keys", json={"name": scope, "scope": scope})
            assert made.status_code == 201, made.text
            self.keys[scope] = made.json()["key"]

    def client(self, scope: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.keys[scope]}"}
        return httpx.Client(base_url=self.base_url, headers=auth, timeout=30)

    def create(self) -> httpx.Response:
        with self.client("devices") as c:
            return c.post("/v1/devices", json={"label": "q"})

    def device(self) -> dict[str, Any]:
        r = self.create()
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


def assert_over(r: httpx.Response, tenant: Tenant, quota: str) -> dict[str, Any]:
    """429 problem+json with Retry-After, naming the tenant and the quota."""
    problem = assert_problem(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert f"tenant {tenant.id} is over its {quota} quota of" in problem["detail"], problem
    return problem


def test_a_tenant_over_its_rate_gets_429_and_nothing_is_stored(admin: httpx.Client) -> None:
    slow = Tenant(admin, "slow", rate=SLOW_RATE, burst=3)
    other = Tenant(admin, "other", rate=SLOW_RATE, burst=3)
    pin = slow.device()["pin"]
    other_pin = other.device()["pin"]
    with slow.client("push") as push:
        for _ in range(3):  # the burst
            r = push.post(f"/v1/devices/{pin}/messages", json=PUSH)
            assert r.status_code == 201, r.text
        refused = push.post(f"/v1/devices/{pin}/messages", json=PUSH)
        problem = assert_over(refused, slow, "rate")
        assert "0.01 messages a second" in problem["detail"]
        assert int(refused.headers["retry-after"]) >= 50  # a token every 100 s
        # A batch counts each item; refused whole, nothing of it stored.
        batch = {"messages": [{**PUSH, "to": pin}, {**PUSH, "to": pin}]}
        assert_over(push.post("/v1/messages", json=batch), slow, "rate")
        # More than the bucket ever holds: not "retry later" but too large.
        big = {"messages": [{**PUSH, "to": pin}] * 4}
        assert_problem(push.post("/v1/messages", json=big), 413, "too_large")
    assert backlog(admin, pin) == 3
    # Another tenant's bucket is its own, the relay's admin key has none.
    with other.client("push") as push:
        for _ in range(3):
            r = push.post(f"/v1/devices/{other_pin}/messages", json=PUSH)
            assert r.status_code == 201, r.text
    assert admin.post(f"/v1/devices/{pin}/messages", json=PUSH).status_code == 201
    assert backlog(admin, pin) == 4


def test_a_flood_gets_429s_while_another_tenant_pushes_freely(admin: httpx.Client) -> None:
    """The noisy neighbour, functionally: a tenant pushing far over its rate gets
    429s, each held for REFUSAL_HOLD_S before it is answered (so a connection that
    sends again at once is slowed); another tenant's pushes meanwhile all succeed (the
    latency figure is bench/noisy_neighbour.py's)."""
    noisy = Tenant(admin, "noisy", rate=5, burst=5)
    quiet = Tenant(admin, "quiet")
    noisy_pin, quiet_pin = noisy.device()["pin"], quiet.device()["pin"]
    held: list[float] = []

    def flood() -> list[int]:
        codes = []
        with noisy.client("push") as c:
            for _ in range(30):
                started = time.monotonic()
                code = c.post(f"/v1/devices/{noisy_pin}/messages", json=PUSH).status_code
                if code == 429:
                    held.append(time.monotonic() - started)
                codes.append(code)
        return codes

    def steady() -> list[int]:
        with quiet.client("push") as c:
            return [
                c.post(f"/v1/devices/{quiet_pin}/messages", json=PUSH).status_code
                for _ in range(40)
            ]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        floods = [pool.submit(flood) for _ in range(3)]
        quiet_codes = steady()
        noisy_codes = [code for f in floods for code in f.result()]
    assert set(quiet_codes) == {201}
    assert set(noisy_codes) <= {201, 429}
    accepted = noisy_codes.count(201)
    assert noisy_codes.count(429) > accepted > 0
    assert len(held) == noisy_codes.count(429) and min(held) >= REFUSAL_HOLD_S, held
    assert backlog(admin, noisy_pin) == accepted
    assert backlog(admin, quiet_pin) == 40


def test_the_devices_quota_holds_under_concurrent_creates(admin: httpx.Client) -> None:
    capped = Tenant(admin, "capped", devices=3)
    free = Tenant(admin, "free")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: capped.create(), range(8)))
    made = [r for r in answers if r.status_code == 201]
    assert len(made) == 3, [r.text for r in answers]
    for r in answers:
        if r.status_code != 201:
            problem = assert_over(r, capped, "devices")
            assert "quota of 3 devices" in problem["detail"]
    # The relay's admin key making one for the tenant is held to it too.
    by_admin = admin.post("/v1/devices", json={"tenant": capped.id})
    assert_over(by_admin, capped, "devices")
    assert free.create().status_code == 201
    # A deletion frees a place.
    gone = made[0].json()["pin"]
    with capped.client("devices") as c:
        assert c.delete(f"/v1/devices/{gone}").status_code == 204
    assert capped.create().status_code == 201
    assert_over(capped.create(), capped, "devices")


def test_quotas_changed_later_apply_to_what_exists(admin: httpx.Client) -> None:
    tenant = Tenant(admin, "later")
    tenant.device()
    tenant.device()
    r = admin.patch(f"/v1/tenants/{tenant.id}", json={"quotas": {"devices": 2}})
    assert r.status_code == 200, r.text

    def refused() -> bool:
        return tenant.create().status_code == 429

    wait_until(refused, 10, message="the devices quota set later was not enforced")


async def test_a_tenant_over_its_links_quota_is_refused_on_the_link(
    admin: httpx.Client, relay: RelayProc
) -> None:
    one = Tenant(admin, "one link", links=1)
    other = Tenant(admin, "other links", links=1)
    first, second = one.device(), one.device()
    ws1, _ = await link(relay, first)
    # The second device of the tenant: refused with an error frame and 4429.
    ws2 = await raw_link(relay)
    await send(ws2, frames.Hello(pin=second["pin"], token=second["token"]))
    error, code = await error_then_close(ws2)
    assert error.code == "rate_limited" and code == 4429
    assert error.retry_after_ms is not None and error.retry_after_ms >= 1000
    assert f"tenant {one.id} is over its links quota of 1 links" in error.message
    # The same device linking again replaces its link: not a second one.
    ws1b, _ = await link(relay, first)
    assert await closed_with(ws1) == 4409
    # Another tenant is unaffected.
    ws3, _ = await link(relay, other.device())
    # Once the first device's link is gone, the second gets its place.
    await ws1b.close()

    async def linked() -> ClientConnection | None:
        ws = await raw_link(relay)
        await send(ws, frames.Hello(pin=second["pin"], token=second["token"]))
        if isinstance(await recv(ws), frames.Welcome):
            return ws
        await closed_with(ws)
        return None

    ws2 = await wait_until_async(linked, 10, 0.1, "a closed link's place was not given back")
    await ws2.close()
    await ws3.close()


async def test_stored_bytes_refuse_past_the_quota_until_the_device_acks(
    admin: httpx.Client, relay: RelayProc
) -> None:
    """Ten 100-byte pushes fill a 1,000-byte quota; the eleventh (and a batch that
    would pass it) gets 429 naming stored_bytes with nothing stored; once the device
    acknowledges its backlog, pushes are taken again.  Another tenant is untouched."""
    full = Tenant(admin, "full", stored_bytes=1000)
    other = Tenant(admin, "roomy", stored_bytes=1000)
    device, other_pin = full.device(), other.device()["pin"]
    pin = device["pin"]
    body = b'{"data":"' + b"x" * 98 + b'","ttl":600}'  # data: 100 bytes, as sent
    headers = {"Content-Type": "application/json"}
    with full.client("push") as push, other.client("push") as push_other:
        for _ in range(10):
            r = push.post(f"/v1/devices/{pin}/messages", content=body, headers=headers)
            assert r.status_code == 201, r.text
        refused = push.post(f"/v1/devices/{pin}/messages", content=body, headers=headers)
        assert_over(refused, full, "stored_bytes")
        batch = {"messages": [{"to": pin, "data": 1, "ttl": 60}]}
        assert_over(push.post("/v1/messages", json=batch), full, "stored_bytes")
        assert backlog(admin, pin) == 10
        r = push_other.post(f"/v1/devices/{other_pin}/messages", content=body, headers=headers)
        assert r.status_code == 201, r.text

        ws, _ = await link(relay, device)
        try:
            got = [await recv(ws) for _ in range(10)]
            assert all(isinstance(m, frames.Msg) for m in got)
            await send(
                ws, frames.Ack(cursor=max(m.cursor for m in got if isinstance(m, frames.Msg)))
            )

            def taken() -> bool:
                again = push.post(f"/v1/devices/{pin}/messages", content=body, headers=headers)
                assert again.status_code in (201, 429), again.text
                return again.status_code == 201

            await wait_until_async(taken, timeout=15, message="a push after the ack")
        finally:
            await ws.close()
