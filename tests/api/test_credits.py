"""Service levels, credits, make-goods and codes (PROTOCOL "Service credits" and
"Making good", issue 16) on a real relay on SQLite; test_credits_on_cluster.py runs
them again on a 3-node NATS cluster.

A synthetic month of incidents, written through the store, gives exactly the credits
worked out by hand; a make-good reaches each of the tenant's devices once with a
code of its own (not a device that refuses marketing, not another tenant's), asking
again adds none, a code is redeemed once, and another tenant can neither redeem nor
see it.  A relay SIGKILLed in the middle of a make-good's fan-out resumes it on its
next start: every device has exactly one code.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from pinrelay.core import frames
from pinrelay.core.incidents import Incident, open_incident, resolve
from pinrelay.core.readings import Readings, add_counts
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until
from tests.api.test_api import assert_problem
from tests.api.test_tenants import Tenant
from tests.conftest import RelayFactory
from tests.linkclient import ack_all, link, recv, send
from tests.relayproc import RelayProc

#: Writes incidents and readings into the relay's store (the relay may be stopped
#: meanwhile).
PutIncidents = Callable[[RelayProc, Sequence[Incident], Sequence[Readings]], None]
TABLE = [[99.9, 10], [99.0, 25], [95.0, 100]]
MIN = 60_000


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _level(fee: int, currency: str = "EUR", **kw: Any) -> dict[str, Any]:
    return {"availability": 99.9, "fee": fee, "currency": currency, "credits": TABLE, **kw}


def put_incidents_sqlite(
    relay: RelayProc, incidents: Sequence[Incident], readings: Sequence[Readings] = ()
) -> None:
    """Stop the relay, write the incidents and readings into its database, start
    it again."""
    relay.stop()

    async def write() -> None:
        store = SqliteStore(relay.data / "pinrelay.db")
        await store.open()
        try:
            for i in incidents:
                assert await store.put_incident(i)
            await store.put_readings(readings)
        finally:
            await store.close()

    asyncio.run(write())
    relay.start()


def _at(day: int, hour: int, month: int = 2) -> int:
    """Milliseconds of 2026-<month>-<day> <hour>:00 UTC."""
    return parse_rfc3339(f"2026-{month:02d}-{day:02d}T{hour:02d}:00:00Z")


def _closed(
    iid: str, severity: str, start: int, end: int, tenants: Sequence[str] = ()
) -> tuple[Incident, Incident]:
    """Its two revisions, to be written in order (opened, then resolved)."""
    opened = open_incident(iid, "store", severity, "synthetic", start, tenants=tenants)  # type: ignore[arg-type]
    return opened, resolve(opened, "over", end)


def check_credits_of_a_synthetic_month(relay: RelayProc, put: PutIncidents) -> None:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        t1, t2, t3 = Tenant(admin, "one"), Tenant(admin, "two"), Tenant(admin, "three")
        # Both with a delay target: 99 % of messages delivered within 1 s.
        target = {"percent": 99.0, "delay_ms": 1_000}
        _ok(admin.put(f"/v1/tenants/{t1.id}/service-level", json=_level(10_000, delay=target)))
        _ok(
            admin.put(f"/v1/tenants/{t2.id}/service-level", json=_level(5_000, "USD", delay=target))
        )
    # February 2026: 28 days = 40,320 minutes.
    incidents = [
        # A: critical, everyone's, 3 Feb 10:00-12:00: 120 min for both.
        _closed("I0000000000A0", "critical", _at(3, 10), _at(3, 12)),
        # B: major (half weight), t1's, 3 Feb 11:00-13:00: 11-12 is under A already
        # (counted once, at A's full weight); 12-13 adds 60 x 0.5 = 30 min for t1.
        _closed("I0000000000B0", "major", _at(3, 11), _at(3, 13), [t1.id]),
        # C: minor, everyone's, 10 Feb 00:00-10:00: counts nothing.
        _closed("I0000000000C0", "minor", _at(10, 0), _at(10, 10)),
        # D: critical, t2's, 15 Feb 00:00 - 16 Feb 00:00: 1,440 min for t2 only.
        _closed("I0000000000D0", "critical", _at(15, 0), _at(16, 0), [t2.id]),
        # E: critical, everyone's, 31 Jan 23:00 - 1 Feb 01:00: 60 min inside February.
        _closed("I0000000000E0", "critical", _at(31, 23, month=1), _at(1, 1)),
        # F: critical, t3's (no service level): nobody listed is owed for it.
        _closed("I0000000000F0", "critical", _at(20, 0), _at(21, 0), [t3.id]),
    ]
    # Delay counts by DELAY_BOUNDS_MS bucket (<=100, <=250, <=500, <=1000, <=2500, ...):
    # t1's messages on two relays in February: 900 within 100 ms and 60 within 2.5 s
    # (over the target) on the 5th, 40 within 1 s on the 27th; others' don't count,
    # nor t1's outside February.
    slow = (0, 0, 0, 0, 5_000)
    readings = [
        _reading("a", _at(5, 12), {t1.id: (900, 0, 0, 0, 60), t3.id: slow}),
        _reading("b", _at(27, 12), {t1.id: (0, 0, 0, 40)}),
        _reading("a", _at(31, 23, month=1), {t1.id: slow}),
        _reading("b", _at(1, 0, month=3), {t1.id: slow}),
    ]
    put(relay, [rev for pair in incidents for rev in pair], readings)
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        body = _ok(admin.get("/v1/credits", params={"month": "2026-02"}))
    assert body["month"] == "2026-02"
    owed = {c["tenant"]: c for c in body["credits"] if c["tenant"] in (t1.id, t2.id, t3.id)}
    assert set(owed) == {t1.id, t2.id}  # t3 has no service level
    one, two = owed[t1.id], owed[t2.id]
    # t1: 120 (A) + 30 (B after A) + 60 (E) = 210 min down of 40,320:
    # availability = 1 - 210/40,320 = 99.4792 %: under 99.9, not under 99.0 -> 10 %.
    # Its delay: (900 + 40) of 1,000 within 1 s = 94 %: under 95.0 -> 100 %, the
    # larger: 100 % of 10,000 = 10,000 EUR cents.
    assert one["minutes"] == 40_320
    assert one["downtime_minutes"] == pytest.approx(210)
    assert one["availability"] == pytest.approx(100 * (1 - 210 / 40_320))
    assert one["delivered_within"] == pytest.approx(94.0)
    assert (one["credit_percent"], one["amount"], one["currency"]) == (100, 10_000, "EUR")
    assert one["incidents"] == ["I0000000000A0", "I0000000000B0", "I0000000000E0"]
    # t2: 120 (A) + 1,440 (D) + 60 (E) = 1,620 min: 1 - 1,620/40,320 = 95.9821 %:
    # under 99.0, not under 95.0 -> 25 % of 5,000 = 1,250 USD cents.
    assert two["downtime_minutes"] == pytest.approx(1_620)
    assert (two["credit_percent"], two["amount"], two["currency"]) == (25, 1_250, "USD")
    assert two["delivered_within"] is None  # no delay figures of its own: not assessed
    # A tenant's admin sees its own credit only.
    with t1.client("admin") as own:
        mine = _ok(own.get("/v1/credits", params={"month": "2026-02"}))
    assert [c["tenant"] for c in mine["credits"]] == [t1.id]
    assert mine["credits"][0]["amount"] == 10_000


def _reading(node: str, at_ms: int, tenants: dict[str, tuple[int, ...]]) -> Readings:
    start: tuple[int, ...] = ()
    everyone = functools.reduce(add_counts, tenants.values(), start)
    return Readings(
        at_ms=at_ms,
        node=node,
        region="local",
        links=1,
        delivered=sum(everyone),
        delay_counts=everyone,
        tenant_delays=tenants,
    )


def test_credits_of_a_synthetic_month_match_the_hand_calculation(
    relay_factory: RelayFactory,
) -> None:
    # No figures of its own: a SQLite write forgets readings over 90 days old.
    relay = relay_factory(extra=["--figures-every", "3600"])
    check_credits_of_a_synthetic_month(relay, put_incidents_sqlite)


@pytest.mark.shared_relay
def test_a_service_level_is_the_relay_admins_to_set(admin: httpx.Client) -> None:
    t1, t2 = Tenant(admin, "one"), Tenant(admin, "two")
    path = f"/v1/tenants/{t1.id}/service-level"
    assert_problem(admin.get(path), 404)
    level = _level(2_500, delay={"delay_ms": 1000, "percent": 99.0})
    assert _ok(admin.put(path, json=level))["fee"] == 2_500
    with t1.client("admin") as own, t2.client("admin") as other:
        assert _ok(own.get(path)) == {**level, "credits": TABLE}
        assert_problem(own.put(path, json=level), 403)
        assert_problem(other.get(path), 404)
    assert_problem(admin.put(path, json={**level, "credits": []}), 422)
    assert_problem(admin.put(path, json={**level, "fee": -1}), 422)
    assert_problem(admin.put(path, json={**level, "currency": "euro"}), 422)
    assert_problem(admin.get("/v1/credits", params={"month": "2026-13"}), 422)
    assert _ok(admin.delete(path), 204) is None
    assert_problem(admin.get(path), 404)


def _open(admin: httpx.Client, tenants: Sequence[str] = ()) -> str:
    body = {"component": "delivery", "severity": "critical", "text": "Late", "tenants": tenants}
    return str(_ok(admin.post("/v1/incidents", json=body), 201)["id"])


def make_good(admin: httpx.Client, incident: str, tenant: str, status: int) -> dict[str, Any]:
    body = {"tenant": tenant, "text": "Sorry: a month free", "code_prefix": "SORRY"}
    view: dict[str, Any] = _ok(admin.post(f"/v1/incidents/{incident}/make-good", json=body), status)
    return view


def made_good(
    admin: httpx.Client, incident: str, tenant: str, timeout: float = 30
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        view = make_good(admin, incident, tenant, 200)
        return view if view["done"] else None

    return wait_until(done, timeout=timeout, message="the make-good to end")


def makegoods_in(http: httpx.Client, d: dict[str, Any]) -> list[dict[str, Any]]:
    r = http.get(f"/v1/devices/{d['pin']}/inbox", headers=_bearer(d["token"]))
    return [m for m in _ok(r)["messages"] if m["kind"] == "makegood"]


@pytest.mark.shared_relay
def test_a_make_good_reaches_each_device_once_and_its_code_redeems_once(
    relay: RelayProc, admin: httpx.Client
) -> None:
    t, other = Tenant(admin, "owed"), Tenant(admin, "other")
    linked, quiet, refusing = t.device(), t.device(), t.device()
    theirs = other.device()
    refuse = f"/v1/devices/{refusing['pin']}/refusals/marketing"
    _ok(admin.put(refuse, headers=_bearer(refusing["token"])), 204)
    incident = _open(admin)

    async def scenario() -> frames.Msg:
        ws, _ = await link(relay, linked)
        try:
            await asyncio.to_thread(make_good, admin, incident, t.id, 201)
            m = await recv(ws, timeout=15)
            assert isinstance(m, frames.Msg) and m.kind == "makegood"
            await send(ws, frames.Ack(cursor=m.cursor))
            return m
        finally:
            await ws.close()

    live = asyncio.run(scenario())
    view = made_good(admin, incident, t.id)
    assert (view["devices"], view["stored"], view["skipped"]) == (3, 2, 1), view
    assert view["incident"] == incident and view["tenant"] == t.id
    data = json.loads(bytes(live.data))
    assert set(data) == {"code", "text", "incident"}
    assert data["incident"] == incident and data["text"] == "Sorry: a month free"
    assert data["code"].startswith("SORRY-")
    got = makegoods_in(admin, quiet)
    assert len(got) == 1 and got[0]["data"]["code"] != data["code"]
    assert makegoods_in(admin, refusing) == [] and makegoods_in(admin, theirs) == []
    # Asked again: the same make-good, no second message.
    again = make_good(admin, incident, t.id, 200)
    assert again["id"] == view["id"] and again["stored"] == 2
    assert len(makegoods_in(admin, quiet)) == 1
    # Redeemed once, by the tenant's admin; another tenant's admin learns nothing.
    code = got[0]["data"]["code"]
    with t.client("admin") as own, other.client("admin") as stranger:
        assert_problem(stranger.post(f"/v1/codes/{code}/redeem"), 404)
        redeemed = _ok(own.post(f"/v1/codes/{code}/redeem"))
        assert (redeemed["code"], redeemed["pin"], redeemed["tenant"]) == (code, quiet["pin"], t.id)
        assert redeemed["redeemed_at"] is not None
        assert_problem(own.post(f"/v1/codes/{code}/redeem"), 409)
        assert_problem(stranger.post(f"/v1/codes/{code}/redeem"), 404)
        assert_problem(own.post("/v1/codes/SORRY-000000000000/redeem"), 404)
        # Only the relay's admin makes good.
        body = {"tenant": t.id, "text": "x"}
        assert_problem(own.post(f"/v1/incidents/{incident}/make-good", json=body), 403)
    assert _ok(admin.post(f"/v1/codes/{data['code']}/redeem"))["pin"] == linked["pin"]
    # An incident that names another tenant does not affect this one.
    assert_problem(
        admin.post(
            f"/v1/incidents/{_open(admin, [other.id])}/make-good",
            json={"tenant": t.id, "text": "x"},
        ),
        409,
    )
    nobody = "/v1/incidents/I000000000000/make-good"
    assert_problem(admin.post(nobody, json={"tenant": t.id, "text": "x"}), 404)


@pytest.mark.shared_relay
def test_make_goods_asked_for_at_once_are_one(admin: httpx.Client) -> None:
    t = Tenant(admin, "asked twice")
    devices = [t.device() for _ in range(3)]
    incident = _open(admin)
    body = {"tenant": t.id, "text": "Sorry"}

    def ask(_: int) -> httpx.Response:
        with httpx.Client(base_url=admin.base_url, headers=admin.headers, timeout=30) as c:
            return c.post(f"/v1/incidents/{incident}/make-good", json=body)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    view = made_good(admin, incident, t.id)
    assert (view["devices"], view["stored"]) == (3, 3), view
    for d in devices:
        assert len(makegoods_in(admin, d)) == 1, d["pin"]


def check_a_killed_make_good_resumes(
    relay: RelayProc, restart: Callable[[], RelayProc], n: int = 200
) -> None:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        t = Tenant(admin, "big")
        devices = [t.device() for _ in range(n)]
        incident = _open(admin)
        view = make_good(admin, incident, t.id, 201)
        assert not view["done"], "the fan-out ended before the kill: make the pages smaller"
        relay.kill()
    after = restart()
    with httpx.Client(base_url=after.url, headers=after.admin_headers(), timeout=30) as admin:
        view = made_good(admin, incident, t.id, timeout=60)
        assert (view["devices"], view["stored"]) == (n, n), view
        # The kill landed mid fan-out: the relay that finished it resumed it.
        assert f"resuming broadcast {view['id']}" in after.output()
        codes: list[str] = []
        for d in devices:
            got = makegoods_in(admin, d)
            assert len(got) == 1, (d["pin"], got)
            codes.append(got[0]["data"]["code"])
        assert len(set(codes)) == n
        # Each code is the one the store recorded for that device: it redeems.
        for code in codes[:: n // 10]:
            assert _ok(admin.post(f"/v1/codes/{code}/redeem"))["redeemed_at"]


def test_a_relay_killed_mid_make_good_leaves_each_device_one_code(
    relay_factory: RelayFactory,
) -> None:
    flags = ["--broadcast-page", "5", "--broadcast-takeover", "1"]
    relay = relay_factory(extra=flags)
    check_a_killed_make_good_resumes(relay, relay.start)


async def test_a_tenants_deliveries_are_counted_for_its_delay_target(
    relay: RelayProc, admin: httpx.Client
) -> None:
    """What a linked device of a tenant is delivered counts in the relay's readings
    under that tenant (core/readings.py ``tenant_delays``), which the credits sum."""
    tenant = Tenant(admin, "delayed")
    device = tenant.device()
    ws, _ = await link(relay, device)
    url = f"/v1/devices/{device['pin']}/messages"

    def counted() -> int:
        # One more push each time: a reading covers one second's deliveries.
        r = admin.post(url, json={"data": {"n": 1}, "ttl": 600})
        assert r.status_code == 201, r.text
        readings = admin.get("/v1/monitors").json()["readings"] or {}
        delays = readings.get("tenant_delays", {})
        return sum(delays.get(tenant.id, ()))

    acker = asyncio.get_running_loop().create_task(ack_all(ws))
    try:
        assert await asyncio.to_thread(wait_until, counted, 20, 0.05, "counted") >= 1
    finally:
        acker.cancel()
        await ws.close()
