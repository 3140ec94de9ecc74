"""The OpenAPI 3.1 document, served at /openapi.json.

Components are generated from the msgspec Structs the routes decode and encode,
so the document cannot drift from the code's bodies; paths are listed here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pinrelay import __version__
from pinrelay.api import (
    openapi_channels,
    openapi_chat,
    openapi_credits,
    openapi_incidents,
    openapi_reports,
    openapi_tenants,
    openapi_webhooks,
    openapi_webpush,
    schemas,
)
from pinrelay.api.problems import Problem
from pinrelay.core.model import Batch, Limits, PushFields

_REF = "#/components/schemas/{name}"


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}


_PROBLEM = {"application/problem+json": {"schema": {"$ref": _REF.format(name="Problem")}}}
_ERRORS = {
    400: "Malformed JSON: not JSON, not valid UTF-8 (data included), or a key repeated in"
    " an object",
    401: "Missing or wrong credentials",
    404: "No such device, key, tenant, group or invitation (or one of another tenant:"
    " the same answer)",
    409: "Conflicts with the current state (an Idempotency-Key reused with another body;"
    " an ack beyond the device's last message)",
    410: "The pairing code was used already, expired, or replaced by a newer one",
    413: "Payload or body too large",
    414: "Request line longer than 8 KiB",
    415: "Body is not application/json, or declares a charset other than UTF-8",
    403: "The key lacks the scope, or its tenant is suspended; a chat to a PIN that is not"
    " an accepted contact",
    422: "Body failed validation",
    429: "Too many failed authentications, invitations, chat messages (or chat bytes: a"
    " group message counts a copy per member) or pairing codes;"
    " or the key's tenant is over a quota (rate on pushes, devices on device creation),"
    " named in the detail; Retry-After says when to try again",
    431: "Request line and headers longer than the relay's limit (16 KiB by default)",
    503: "Relay starting, draining, unable to store, or holding all the HTTP connections it may",
}


def _op(
    summary: str,
    ok: tuple[int, str, str | None],
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    body_required: bool = True,
    auth: bool = True,
    params: list[dict[str, Any]] | None = None,
    tag: str,
) -> dict[str, Any]:
    status, description, schema = ok
    responses: dict[str, Any] = {str(status): {"description": description}}
    if schema is not None:
        responses[str(status)]["content"] = _json(schema)
    # Any request may meet the HTTP bounds (api/httpbounds.py): 414, 431, and 503 at the
    # connection cap.
    for code in (*errors, *(c for c in (414, 431, 503) if c not in errors)):
        responses[str(code)] = {"description": _ERRORS[code], "content": _PROBLEM}
    if 401 in errors:
        responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": _json(body)}
    if params:
        op["parameters"] = params
    if not auth:
        op["security"] = []
    return op


_PIN = {
    "name": "pin",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-F]{8}$"},
}
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
_IDEM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "A retried request with the same key returns the first answer.",
}


def _query(name: str, lo: int, hi: int, default: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": lo, "maximum": hi, "default": default},
    }


AUTH_ERRORS = (401, 403, 429, 503)
BODY_ERRORS = (400, 413, 415, 422)


def build(limits: Limits) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            Problem,
            schemas.Info,
            schemas.Health,
            schemas.DeviceCreate,
            schemas.DeviceCreated,
            schemas.DeviceView,
            schemas.TokenRotated,
            PushFields,
            Batch,
            schemas.PushResult,
            schemas.BatchResult,
            schemas.KeyCreate,
            schemas.KeyCreated,
            schemas.KeyList,
            schemas.Inbox,
            schemas.AckBody,
            *openapi_chat.COMPONENTS,
            *openapi_webpush.COMPONENTS,
            *openapi_tenants.COMPONENTS,
            *openapi_channels.COMPONENTS,
            *openapi_incidents.COMPONENTS,
            *openapi_credits.COMPONENTS,
            *openapi_reports.COMPONENTS,
            *openapi_webhooks.COMPONENTS,
            schemas.PairingCreated,
            schemas.PairingRedeem,
            schemas.PairingRedeemed,
        ],
        ref_template=_REF,
    )
    # The configured bounds belong in the contract, so clients can check them first.
    for name in ("PushFields", "BatchItem", "BroadcastCreate"):
        ttl = components[name]["properties"]["ttl"]
        ttl["maximum"] = limits.max_ttl_s
        ttl["description"] = (
            "Seconds the message is kept; a fraction is rounded up to a whole second. "
            "0: deliver only if the device is online now."
        )
    components["Batch"]["properties"]["messages"]["maxItems"] = limits.max_batch
    paths: dict[str, dict[str, Any]] = {
        "/v1/info": {
            "get": _op(
                "Relay version and the link URLs devices connect to",
                (200, "Relay info", "Info"),
                (),
                auth=False,
                tag="relay",
            )
        },
        "/healthz": {"get": _op("Liveness", (200, "Alive", "Health"), (), auth=False, tag="relay")},
        "/readyz": {
            "get": _op(
                "Readiness: 200 only while the relay can store",
                (200, "Ready", "Health"),
                (503,),
                auth=False,
                tag="relay",
            )
        },
        "/v1/devices": {
            "post": _op(
                "Create a device: a random PIN and a token (shown once)",
                (201, "Created", "DeviceCreated"),
                (*AUTH_ERRORS, *BODY_ERRORS, 404, 409),
                body="DeviceCreate",
                body_required=False,
                tag="devices",
            )
        },
        "/v1/devices/{pin}": {
            "get": _op(
                "Show a device: online, backlog, last seen",
                (200, "The device", "DeviceView"),
                (*AUTH_ERRORS, 404),
                params=[_PIN],
                tag="devices",
            ),
            "delete": _op(
                "Delete a device and its messages; its link is closed",
                (204, "Deleted", None),
                (*AUTH_ERRORS, 404),
                params=[_PIN],
                tag="devices",
            ),
        },
        "/v1/devices/{pin}/token": {
            "post": _op(
                "Rotate the device token; links using the old one are closed",
                (200, "The new token (shown once)", "TokenRotated"),
                (*AUTH_ERRORS, 404),
                params=[_PIN],
                tag="devices",
            )
        },
        "/v1/devices/{pin}/messages": {
            "post": _op(
                "Push a message to one device; 201 only once it is on disk",
                (201, "Stored (or dropped: ttl 0 and the device offline)", "PushResult"),
                (*AUTH_ERRORS, *BODY_ERRORS, 404, 409),
                body="PushFields",
                params=[_PIN, _IDEM],
                tag="messages",
            )
        },
        "/v1/messages": {
            "post": _op(
                "Push up to 1,000 messages, stored in one transaction",
                (200, "One result per message, in order", "BatchResult"),
                (*AUTH_ERRORS, *BODY_ERRORS, 409),
                body="Batch",
                params=[_IDEM],
                tag="messages",
            )
        },
        "/v1/devices/{pin}/inbox": {
            "get": _op(
                "Long-poll a device's messages (device token as bearer)",
                (200, "Messages after the cursor (maybe none)", "Inbox"),
                (401, 404, 422, 429, 503),
                params=[
                    _PIN,
                    _query("after", 0, 2**53 - 1, 0),
                    _query("wait", 0, 60, 0),
                    _query("limit", 1, 1000, 100),
                ],
                tag="inbox",
            )
        },
        "/v1/devices/{pin}/ack": {
            "post": _op(
                "Acknowledge every message up to a cursor (device token as bearer)",
                (204, "Acknowledged", None),
                (401, 404, 409, 429, 503, *BODY_ERRORS),
                body="AckBody",
                params=[_PIN],
                tag="inbox",
            )
        },
        "/v1/devices/{pin}/pairing": {
            "post": _op(
                "Make a one-time pairing code for the device (valid 10 minutes; it"
                " replaces the device's earlier codes)",
                (201, "The code (shown once)", "PairingCreated"),
                (*AUTH_ERRORS, 404),
                params=[_PIN],
                tag="devices",
            )
        },
        "/v1/pairing": {
            "post": _op(
                "Redeem a pairing code: the device's PIN and a new token (the old one stops"
                " working)",
                (200, "The device's PIN and new token", "PairingRedeemed"),
                (*BODY_ERRORS, 404, 410, 429, 503),
                body="PairingRedeem",
                auth=False,
                tag="devices",
            )
        },
        "/v1/keys": {
            "post": _op(
                "Create an API key (shown once)",
                (201, "Created", "KeyCreated"),
                (*AUTH_ERRORS, *BODY_ERRORS, 404),
                body="KeyCreate",
                tag="keys",
            ),
            "get": _op("List API keys", (200, "Keys", "KeyList"), AUTH_ERRORS, tag="keys"),
        },
        "/v1/keys/{key_id}": {
            "delete": _op(
                "Revoke an API key",
                (204, "Revoked", None),
                (*AUTH_ERRORS, 404),
                params=[_KEY_ID],
                tag="keys",
            )
        },
    }
    paths.update(openapi_chat.paths(_op))
    paths.update(openapi_webpush.paths(_op))
    paths.update(openapi_tenants.paths(_op))
    paths.update(openapi_channels.paths(_op))
    paths.update(openapi_incidents.paths(_op))
    paths.update(openapi_credits.paths(_op))
    paths.update(openapi_reports.paths(_op))
    paths.update(openapi_webhooks.paths(_op))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pinrelay",
            "version": __version__,
            "description": "Push API of a pinrelay relay. The device link is described in "
            "docs/PROTOCOL.md. Errors are RFC 9457 problem+json.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
