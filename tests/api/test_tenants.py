"""Tenants over HTTP against a real relay (issue 15): the relay's admin key manages
them, each tenant's keys see its own devices and keys only (another tenant's answer
as ones that do not exist), grants let another tenant push, suspension and deletion
stop a tenant's keys and leave its devices their data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_api import assert_problem
from tests.relayproc import RelayProc

pytestmark = pytest.mark.shared_relay

NOBODY = "DEADBEEF"


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


class Tenant:
    """A tenant made by the relay's admin, with a key of each scope."""

    def __init__(self, admin: httpx.Client, name: str) -> None:
        r = admin.post("/v1/tenants", json={"name": name})
        assert r.status_code == 201, r.text
        self.id: str = r.json()["id"]
        assert r.headers["location"] == f"/v1/tenants/{self.id}"
        self.keys: dict[str, str] = {}
        for scope in ("push", "devices", "broadcast", "admin"):
            made = admin.post(f"/v1/tenants/{self.id}/keys", json={"name": scope, "scope": scope})
            assert made.status_code == 201, made.text
            assert made.json()["tenant"] == self.id and made.json()["scope"] == scope
            self.keys[scope] = made.json()["key"]
        self.base_url = str(admin.base_url)

    def client(self, scope: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.keys[scope]}"}
        return httpx.Client(base_url=self.base_url, headers=auth, timeout=30)

    def device(self) -> dict[str, Any]:
        with self.client("devices") as c:
            r = c.post("/v1/devices", json={"label": "t"})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body


def same_as_nobody(r: httpx.Response, nobody: httpx.Response, pin: str) -> None:
    """The answer about another tenant's ``pin`` is the one about a PIN with no device."""
    assert r.status_code == nobody.status_code == 404, (r.text, nobody.text)
    assert r.headers["content-type"] == nobody.headers["content-type"]
    assert r.text.replace(pin, NOBODY) == nobody.text


def test_each_tenant_sees_its_own_devices_only(admin: httpx.Client) -> None:
    t1, t2 = Tenant(admin, "one"), Tenant(admin, "two")
    device = t1.device()
    pin = device["pin"]
    with t1.client("devices") as own:
        shown = own.get(f"/v1/devices/{pin}")
        assert shown.status_code == 200 and shown.json()["tenant"] == t1.id
    push = {"data": {"n": 1}, "ttl": 60}
    with t2.client("push") as other:
        for ttl in (60, 0):  # ttl 0 to an offline device: "dropped" would tell
            body = {**push, "ttl": ttl}
            same_as_nobody(
                other.post(f"/v1/devices/{pin}/messages", json=body),
                other.post(f"/v1/devices/{NOBODY}/messages", json=body),
                pin,
            )
        batch = other.post(
            "/v1/messages", json={"messages": [{**push, "to": pin}, {**push, "to": NOBODY}]}
        )
        [mine, nobody] = batch.json()["results"]
        assert mine["status"] == nobody["status"] == 404
        assert mine["error"].replace(pin, NOBODY) == nobody["error"]
    with t2.client("admin") as other:
        for method, path in [
            ("GET", "/v1/devices/{}"),
            ("POST", "/v1/devices/{}/token"),
            ("POST", "/v1/devices/{}/pairing"),
            ("POST", "/v1/devices/{}/messages"),
            ("DELETE", "/v1/devices/{}"),
        ]:
            kw: dict[str, Any] = {"json": push} if path.endswith("messages") else {}
            same_as_nobody(
                other.request(method, path.format(pin), **kw),
                other.request(method, path.format(NOBODY), **kw),
                pin,
            )
    # Nothing happened to it: its tenant still pushes to it, its token still works.
    with t1.client("push") as own:
        assert own.post(f"/v1/devices/{pin}/messages", json=push).status_code == 201
    token = {"Authorization": f"Bearer {device['token']}"}
    inbox = httpx.get(f"{t1.base_url}/v1/devices/{pin}/inbox", headers=token)
    assert [m["data"] for m in inbox.json()["messages"]] == [{"n": 1}]
    # The relay's admin key sees every tenant's devices.
    assert admin.get(f"/v1/devices/{pin}").json()["tenant"] == t1.id


def test_a_tenant_admin_manages_its_own_keys(admin: httpx.Client) -> None:
    t1, t2 = Tenant(admin, "one"), Tenant(admin, "two")
    with t2.client("admin") as a2, t1.client("admin") as a1:
        made = a2.post("/v1/keys", json={"name": "mine", "scope": "push"})
        assert made.status_code == 201 and made.json()["tenant"] == t2.id
        listed = {k["id"]: k["tenant"] for k in a2.get("/v1/keys").json()["keys"]}
        assert set(listed.values()) == {t2.id} and made.json()["id"] in listed
        assert_problem(
            a2.post("/v1/keys", json={"name": "x", "scope": "push", "tenant": t1.id}), 403
        )
        theirs = a1.get("/v1/keys").json()["keys"][0]["id"]
        gone = a2.delete(f"/v1/keys/{theirs}")
        nobody = a2.delete("/v1/keys/k_doesnotexist")
        assert gone.status_code == nobody.status_code == 404
        assert gone.json()["detail"].replace(theirs, "k_doesnotexist") == nobody.json()["detail"]
        assert a1.get("/v1/keys").status_code == 200  # t1's admin key was not revoked
        # Tenants: its own, nothing of another's.
        assert [t["id"] for t in a2.get("/v1/tenants").json()["tenants"]] == [t2.id]
        assert a2.get(f"/v1/tenants/{t2.id}").json()["name"] == "two"
        other = a2.get(f"/v1/tenants/{t1.id}")
        nobody = a2.get("/v1/tenants/cccccccccccc")
        assert other.status_code == nobody.status_code == 404
        assert other.text.replace(t1.id, "cccccccccccc") == nobody.text
        for method, path in [("PATCH", t2.id), ("PATCH", t1.id), ("DELETE", t1.id)]:
            assert_problem(a2.request(method, f"/v1/tenants/{path}", json={}), 403)
        assert_problem(a2.post("/v1/tenants", json={"name": "x"}), 403)
    with t2.client("push") as p2:
        assert_problem(p2.get("/v1/tenants"), 403)


def test_grants_let_another_tenant_push(admin: httpx.Client) -> None:
    t1, t2 = Tenant(admin, "one"), Tenant(admin, "two")
    device = t1.device()
    pin, token = device["pin"], {"Authorization": f"Bearer {device['token']}"}
    grants = f"{t1.base_url}/v1/devices/{pin}/grants"
    push = {"data": {"n": 2}, "ttl": 60}
    assert_problem(httpx.post(grants, json={"tenant": "cccccccccccc"}, headers=token), 404)
    assert_problem(httpx.post(grants, json={"tenant": "NOT-A-TENANT"}, headers=token), 422)
    assert_problem(httpx.post(grants, json={"tenant": t2.id}), 401)
    r = httpx.post(grants, json={"tenant": t2.id}, headers=token)
    assert r.status_code == 201 and r.json() == {"tenants": [t2.id]}
    assert httpx.get(grants, headers=token).json() == {"tenants": [t2.id]}
    with t2.client("push") as p2, t2.client("devices") as d2:
        assert p2.post(f"/v1/devices/{pin}/messages", json=push).status_code == 201
        # A grant is for pushes: the device stays its own tenant's to manage.
        assert_problem(d2.get(f"/v1/devices/{pin}"), 404)
        assert httpx.delete(f"{grants}/{t2.id}", headers=token).status_code == 204
        assert_problem(httpx.delete(f"{grants}/{t2.id}", headers=token), 404)
        assert_problem(p2.post(f"/v1/devices/{pin}/messages", json=push), 404)


def test_suspension_and_deletion_stop_a_tenants_keys(admin: httpx.Client) -> None:
    t1 = Tenant(admin, "one")
    device = t1.device()
    pin = device["pin"]
    push = {"data": {"n": 3}, "ttl": 60}
    r = admin.patch(f"/v1/tenants/{t1.id}", json={"suspended": True, "quotas": {"devices": 5}})
    assert r.status_code == 200 and r.json()["suspended"] and r.json()["quotas"] == {"devices": 5}
    with t1.client("push") as p1:
        problem = assert_problem(p1.post(f"/v1/devices/{pin}/messages", json=push), 403)
        assert "suspended" in problem["detail"]
        assert admin.patch(f"/v1/tenants/{t1.id}", json={"suspended": False}).status_code == 200
        assert p1.post(f"/v1/devices/{pin}/messages", json=push).status_code == 201
        assert_problem(admin.delete("/v1/tenants/default"), 409)
        assert admin.delete(f"/v1/tenants/{t1.id}").status_code == 204
        assert_problem(p1.post(f"/v1/devices/{pin}/messages", json=push), 401)
    assert_problem(admin.get(f"/v1/tenants/{t1.id}"), 404)
    listed = {t["id"]: t for t in admin.get("/v1/tenants").json()["tenants"]}
    assert listed[t1.id]["deleted_at"] is not None and "default" in listed
    # Its device keeps its PIN and its backlog, tenant-less; its token still works.
    shown = admin.get(f"/v1/devices/{pin}").json()
    assert shown["tenant"] is None and shown["backlog"] == 1
    token = {"Authorization": f"Bearer {device['token']}"}
    inbox = httpx.get(f"{t1.base_url}/v1/devices/{pin}/inbox", headers=token)
    assert [m["data"] for m in inbox.json()["messages"]] == [{"n": 3}]
    assert_problem(
        admin.post(f"/v1/tenants/{t1.id}/keys", json={"name": "x", "scope": "push"}), 404
    )
    assert_problem(admin.post("/v1/devices", json={"tenant": t1.id}), 404)


def test_the_relay_admin_key_keeps_working_in_the_default_tenant(admin: httpx.Client) -> None:
    made = admin.post("/v1/keys", json={"name": "legacy", "scope": "devices"})
    assert made.status_code == 201 and made.json()["tenant"] == "default"
    created = admin.post("/v1/devices", json={})
    assert created.status_code == 201
    assert admin.get(f"/v1/devices/{created.json()['pin']}").json()["tenant"] == "default"
    tenants = admin.get("/v1/tenants").json()["tenants"]
    assert any(t["id"] == "default" and t["deleted_at"] is None for t in tenants)
