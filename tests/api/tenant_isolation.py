"""Tenant isolation generated from the relay's own OpenAPI document (issue 15).

Tenant A gets devices, keys of every scope, a subscription, a group, a channel,
a broadcast, an incident that affects it only and a webhook; tenant B
gets a key of every scope.  Every operation in ``/openapi.json`` is called with
each of B's keys twice: once naming A's objects (path parameters, PINs and tenant
ids in the body) and once naming ids that do not exist.  The two answers must be
the same (status, type, body with the ids swapped) and never a success.  An
operation the document marks as taking no key (``security: []``: the Web Push
capability URLs, pairing redemption, health) must answer the same with B's key as
with none.  Afterwards A's objects are all still there.

Request bodies are made from the document's schemas (:func:`example`), so a new
route is covered as soon as it is in the document; a schema with a string pattern
this module does not know fails the test, to be taught here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from pinrelay.testing.wait import wait_until

#: Placeholders in generated bodies, swapped for A's ids or for missing ones.
PIN, TENANT = "@PIN@", "@TENANT@"
#: A P-256 public key and an auth secret (tests/store/test_contract_subscriptions.py).
P256 = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
AUTH = "tBHItJI5svbpez7KI4CCXg"
PATTERNS = {
    "^[0-9A-F]{8}$": PIN,
    "^([0-9A-F]{8}|G[0-9A-HJKMNP-TV-Z]{12})$": PIN,
    "^(default|[a-z2-7]{12})$": TENANT,
    "^(service|marketing)$": "service",
    "^[A-Za-z0-9_-]{1,32}$": "topic1",
    "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]*$": "hello",
    "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*$": "hello",
    "^[^\\x00-\\x1f\\x7f-\\x9f]*$": "team",
    "^B[A-Za-z0-9_-]{86}=?$": P256,
    "^[A-Za-z0-9_-]{22}(==)?$": AUTH,
    "^I[0-9A-HJKMNP-TV-Z]{12}$": "I000000000000",
    "^[A-Z]{3}$": "EUR",
    "^W[0-9A-HJKMNP-TV-Z]{12}$": "W000000000000",
}
SCOPES = ("push", "devices", "broadcast", "admin")


def example(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """A small value valid for ``schema``: required properties only, lower bounds."""
    if "$ref" in schema:
        return example(components[schema["$ref"].rsplit("/", 1)[1]], components)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return example(options[0], components)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example(props[k], components) for k in schema.get("required", [])}
    if kind == "array" and "prefixItems" in schema:  # a tuple
        return [example(s, components) for s in schema["prefixItems"]]
    if kind == "array":
        return [example(schema["items"], components) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        if "pattern" in schema:
            assert schema["pattern"] in PATTERNS, f"teach PATTERNS {schema['pattern']!r}"
            return PATTERNS[schema["pattern"]]
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        return max(1, low)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return {"n": 1}  # any JSON (a push's data)


@dataclass
class Ids:
    """What a call names: A's objects, or ones that do not exist."""

    pin: str
    other: str
    key_id: str
    tenant: str
    sub: str
    group: str
    channel: str
    broadcast: str
    incident: str
    code: str
    webhook: str
    swaps: dict[str, str] = field(default_factory=dict)

    def path(self, template: str) -> str:
        values = {
            "pin": self.pin,
            "other": self.other,
            "member": self.other,
            "key_id": self.key_id,
            "tenant": self.tenant,
            "sub": self.sub,
            "group": self.group,
            "channel": self.channel,
            "broadcast": self.broadcast,
            "incident": self.incident,
            "code": self.code,
            "webhook": self.webhook,
            "class": "marketing",
            "message": "01JDZZZZZZZZZZZZZZZZZZZZZZ",
        }
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        assert "{" not in template, f"teach Ids.path {template}"
        return template

    def body(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.body(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.body(v) for v in value]
        return (
            {PIN: self.pin, TENANT: self.tenant}.get(value, value)
            if isinstance(value, str)
            else value
        )


NOBODY = Ids(
    pin="DEADBEEF",
    other="DEADBEE0",
    key_id="k_nosuchkey0",
    tenant="cccccccccccc",
    sub="A" * 22,
    group="G000000000000",
    channel="C000000000000",
    broadcast="01JDZZZZZZZZZZZZZZZZZZZZZY",
    incident="I000000000000",
    code="SORRY-000000000000",
    webhook="W000000000000",
)


def _tenant(http: httpx.Client, name: str) -> tuple[str, dict[str, dict[str, Any]]]:
    made = http.post("/v1/tenants", json={"name": name})
    assert made.status_code == 201, made.text
    tid: str = made.json()["id"]
    keys = {}
    for scope in SCOPES:
        key = http.post(f"/v1/tenants/{tid}/keys", json={"name": scope, "scope": scope})
        assert key.status_code == 201, key.text
        keys[scope] = key.json()
    return tid, keys


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _body(op: dict[str, Any], components: dict[str, Any]) -> Any:
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    return example(content["application/json"]["schema"], components)


def _send(
    http: httpx.Client,
    method: str,
    path: str,
    op: dict[str, Any],
    ids: Ids,
    components: dict[str, Any],
    headers: dict[str, str],
) -> httpx.Response:
    kw: dict[str, Any] = {"headers": dict(headers)}
    content = op.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        kw["json"] = ids.body(_body(op, components))
    elif content:  # a Web Push message: encrypted bytes with their headers
        kw["content"] = b"\x00" * 100
        kw["headers"].update({"TTL": "60", "Content-Encoding": "aes128gcm"})
    return http.request(method.upper(), ids.path(path), **kw)


def _swapped(text: str, mine: Ids) -> str:
    for field_name in ids_fields():
        text = text.replace(getattr(mine, field_name), getattr(NOBODY, field_name))
    return text


def check_isolation(url: str, admin_key: str, setup_url: str | None = None) -> int:
    """Run the matrix against the relay at ``url`` (the tenants and A's objects made
    through ``setup_url``, another relay of its cluster, if given); the number of
    calls compared."""
    with (
        httpx.Client(base_url=url, headers=_bearer(admin_key), timeout=60) as http,
        httpx.Client(base_url=setup_url or url, headers=_bearer(admin_key), timeout=60) as setup,
    ):
        document = http.get("/openapi.json").json()
        components = document["components"]["schemas"]
        a_id, a_keys = _tenant(setup, "tenant A")
        _, b_keys = _tenant(setup, "tenant B")
        devices = []
        for _ in range(2):
            made = setup.post("/v1/devices", json={"tenant": a_id})
            assert made.status_code == 201, made.text
            devices.append(made.json())
        pin, token = devices[0]["pin"], _bearer(devices[0]["token"])
        sub = setup.post(f"/v1/devices/{pin}/subscriptions", json={}, headers=token)
        group = setup.post(
            f"/v1/devices/{pin}/groups", json={"name": "g", "members": []}, headers=token
        )
        assert sub.status_code == 201 and group.status_code == 201, (sub.text, group.text)
        a_broadcast = _bearer(a_keys["broadcast"]["key"])
        channel = setup.post(
            "/v1/channels", json={"name": "c", "class": "service"}, headers=a_broadcast
        )
        assert channel.status_code == 201, channel.text
        cast = setup.post(
            f"/v1/channels/{channel.json()['id']}/messages",
            json={"data": 1, "ttl": 60},
            headers=a_broadcast,
        )
        assert cast.status_code == 201, cast.text
        # An incident affecting A only: B's admin key reads it as one that does not exist.
        incident = setup.post(
            "/v1/incidents",
            json={"component": "store", "severity": "minor", "text": "A", "tenants": [a_id]},
        )
        assert incident.status_code == 201, incident.text
        # A's devices made good for that incident: a code of A's (its first device's).
        made = setup.post(
            f"/v1/incidents/{incident.json()['id']}/make-good",
            json={"tenant": a_id, "text": "sorry", "code_prefix": "SORRY"},
        )
        assert made.status_code == 201, made.text

        def a_code() -> str | None:
            inbox = setup.get(f"/v1/devices/{pin}/inbox", headers=token).json()["messages"]
            return next((m["data"]["code"] for m in inbox if m["kind"] == "makegood"), None)

        code = wait_until(a_code, timeout=30, message="A's make-good code")
        # A webhook of A's (its admin key): B's admin key reads it as none.
        a_admin = _bearer(a_keys["admin"]["key"])
        hook = setup.post(
            "/v1/webhooks",
            json={"url": "http://127.0.0.1:9/a", "secret": "s" * 16, "events": ["incident"]},
            headers=a_admin,
        )
        assert hook.status_code == 201, hook.text
        mine = Ids(
            pin=pin,
            other=devices[1]["pin"],
            key_id=a_keys["push"]["id"],
            tenant=a_id,
            sub=sub.json()["id"],
            group=group.json()["group"],
            channel=channel.json()["id"],
            broadcast=cast.json()["id"],
            incident=incident.json()["id"],
            code=code,
            webhook=hook.json()["id"],
        )
        compared = 0
        for path, operations in document["paths"].items():
            for method, op in operations.items():
                for scope in SCOPES:
                    key = _bearer(b_keys[scope]["key"])
                    if op.get("security") == []:
                        with_key = _send(http, method, path, op, mine, components, key)
                        without = _send(
                            http, method, path, op, mine, components, {"Authorization": ""}
                        )
                        assert with_key.status_code == without.status_code, (method, path, scope)
                        continue
                    where = f"{method.upper()} {path} with B's {scope} key"
                    body = str(_body(op, components))
                    theirs = _send(http, method, path, op, mine, components, key)
                    if "{" not in path and PIN not in body and TENANT not in body:
                        # About B's own things (a list, a new device): nothing of A's.
                        leaked = [v for v in ids_of(mine) if v in theirs.text]
                        assert not leaked, (where, leaked)
                        continue
                    nobody = _send(http, method, path, op, NOBODY, components, key)
                    assert theirs.status_code == nobody.status_code, (
                        where,
                        theirs.text,
                        nobody.text,
                    )
                    assert _swapped(theirs.text, mine) == nobody.text, (
                        where,
                        theirs.text,
                        nobody.text,
                    )
                    assert theirs.headers.get("content-type") == nobody.headers.get("content-type")
                    if "{" in path:  # a call about A's objects never succeeds
                        assert theirs.status_code >= 400, (where, theirs.text)
                    compared += 1
        # A's objects are all still there and still work.
        assert http.get(f"/v1/devices/{pin}", headers=a_admin).status_code == 200
        assert http.get(f"/v1/devices/{mine.other}", headers=a_admin).status_code == 200
        assert http.get(f"/v1/tenants/{a_id}").json()["suspended"] is False
        listed = http.get(f"/v1/devices/{pin}/subscriptions", headers=token).json()
        assert mine.sub in str(listed)
        groups = http.get(f"/v1/devices/{pin}/groups", headers=token).json()["groups"]
        assert [g["group"] for g in groups] == [mine.group]
        push = {"data": {"n": 1}, "ttl": 60}
        pushed = http.post(
            f"/v1/devices/{pin}/messages", json=push, headers=_bearer(a_keys["push"]["key"])
        )
        assert pushed.status_code == 201, pushed.text
        shown = http.get(f"/v1/channels/{mine.channel}", headers=a_broadcast)
        assert shown.status_code == 200, shown.text
        seen = http.get(f"/v1/incidents/{mine.incident}", headers=a_admin)
        assert seen.status_code == 200 and seen.json()["state"] == "open", seen.text
        redeemed = http.post(f"/v1/codes/{code}/redeem", headers=a_admin)
        assert redeemed.status_code == 200, redeemed.text
        kept = http.get(f"/v1/webhooks/{mine.webhook}", headers=a_admin)
        assert kept.status_code == 200 and kept.json()["tenant"] == a_id, kept.text
        return compared


def ids_fields() -> tuple[str, ...]:
    return (
        "pin",
        "other",
        "key_id",
        "tenant",
        "sub",
        "group",
        "channel",
        "broadcast",
        "incident",
        "code",
        "webhook",
    )


def ids_of(ids: Ids) -> list[str]:
    return [
        ids.pin,
        ids.other,
        ids.key_id,
        ids.tenant,
        ids.sub,
        ids.group,
        ids.channel,
        ids.broadcast,
        ids.incident,
        ids.code,
        ids.webhook,
    ]
