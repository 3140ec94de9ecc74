"""The Web Push paths of the OpenAPI document (api/openapi.py; PROTOCOL "Web Push").

A device's subscriptions take its token as bearer; the push service (``/push/…``)
takes no pinrelay credential: a subscription's id is its capability, and VAPID
(RFC 8292) its sender's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api.matrix import NotifyAnswer
from pinrelay.api.webpush import PushReceiptView, SubscriptionList
from pinrelay.core.matrix import MAX_REQUEST, MatrixNotify
from pinrelay.core.webpush import MAX_BODY, SubscribeFields, SubscriptionView

COMPONENTS: list[type[Struct]] = [
    SubscribeFields,
    SubscriptionView,
    SubscriptionList,
    PushReceiptView,
    MatrixNotify,
    NotifyAnswer,
]

DEVICE_ERRORS = (401, 404, 429, 503)
_REF = "#/components/schemas/{name}"
_PROBLEM = {"application/problem+json": {"schema": {"$ref": _REF.format(name="Problem")}}}
_PIN = {
    "name": "pin",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-F]{8}$"},
}
_SUB = {
    "name": "sub",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
    "description": "The subscription's id: the last segment of its endpoint",
}
_MESSAGE = {
    "name": "message",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}\\.[0-9]{1,16}$"},
    "description": "A message resource: {message id}.{cursor}, as the push's Location names",
}


def _header(name: str, schema: dict[str, Any], required: bool, text: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": text,
    }


_PUSH_HEADERS = [
    _header(
        "TTL",
        {"type": "string", "pattern": "^[0-9]{1,10}$"},
        True,
        "Seconds to keep the message (RFC 8030 §5.2); 0: only if the device is online now",
    ),
    _header(
        "Urgency",
        {"type": "string", "enum": ["very-low", "low", "normal", "high"]},
        False,
        "RFC 8030 §5.3",
    ),
    _header(
        "Topic",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
        False,
        "Replaces the subscription's undelivered message with this topic (RFC 8030 §5.4)",
    ),
    _header(
        "Content-Encoding",
        {"type": "string", "enum": ["aes128gcm"]},
        True,
        "The body is encrypted for the subscription (RFC 8291)",
    ),
    _header(
        "Prefer",
        {"type": "string", "enum": ["respond-async"]},
        False,
        "Answer 202 with a receipt subscription (RFC 8030 §6.2)",
    ),
]


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "A header or the body is malformed (TTL, Urgency, Topic, the aes128gcm header)",
        401: "A VAPID token is required, or malformed, wrongly signed, expired or for"
        " another audience",
        403: "A valid VAPID token signed with another key than the subscription's",
        404: "No such subscription, message or receipt",
        410: "The subscription was deleted",
        413: f"The body is over {MAX_BODY} bytes",
        414: "Request line longer than 8 KiB",
        415: "Content-Encoding is not aes128gcm",
        422: "Bad wait parameter",
        429: "Too many pushes to this subscription or from this sender, or to endpoints"
        " that do not exist from this address",
        431: "Request line and headers too long",
        503: "Relay starting, draining, unable to store, or at its connection cap",
    }
    return {str(c): {"description": text[c], "content": _PROBLEM} for c in codes}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _matrix_paths() -> dict[str, dict[str, Any]]:
    """The Matrix push gateway (PROTOCOL "Matrix push gateway"): no pinrelay key."""
    errors = _errors(400, 413, 414, 415, 429, 431, 503)
    errors["400"]["description"] = "Not a Matrix notification (or not JSON)"
    errors["413"]["description"] = f"The body is over {MAX_REQUEST} bytes"
    errors["415"]["description"] = "The body is not application/json"
    errors["429"]["description"] = "Too many pushes to a subscription or from this sender"
    return {
        "/_matrix/push/v1/notify": {
            "post": {
                "summary": "Matrix Push Gateway API: a homeserver's notification",
                "tags": ["webpush"],
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF.format(name="MatrixNotify")}}
                    },
                },
                "responses": {
                    "200": _json(
                        "Stored durably for every device but the rejected pushkeys",
                        {"$ref": _REF.format(name="NotifyAnswer")},
                    ),
                    **errors,
                },
            },
            "get": {
                "summary": "UnifiedPush's discovery of a Matrix gateway",
                "tags": ["webpush"],
                "security": [],
                "responses": {
                    "200": _json('{"unifiedpush": {"gateway": "matrix"}}', {"type": "object"}),
                    **_errors(414, 431, 503),
                },
            },
        }
    }


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths; ``op`` is openapi's builder for JSON routes (imports one way)."""

    def device_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*DEVICE_ERRORS, *(e for e in errors if e not in DEVICE_ERRORS))
        return op(summary, ok, codes, tag="webpush", **kw)

    location = {"Location": {"schema": {"type": "string"}, "description": "The message resource"}}
    push_ok = {
        "201": {
            "description": "Stored durably (or, TTL 0 and the device offline, dropped)",
            "headers": {**location, "TTL": {"schema": {"type": "string"}}},
        },
        "202": {
            "description": "Stored durably; its delivery is reported at the Link",
            "headers": {
                **location,
                "Link": {
                    "schema": {"type": "string"},
                    "description": 'The receipt subscription: rel="urn:ietf:params:push:receipt"',
                },
            },
        },
    }
    return {
        **_matrix_paths(),
        "/v1/devices/{pin}/subscriptions": {
            "post": device_op(
                "Make a Web Push subscription (PushSubscription.toJSON() shape)",
                (201, "The subscription", "SubscriptionView"),
                (400, 409, 413, 415, 422),
                body="SubscribeFields",
                params=[_PIN],
            ),
            "get": device_op(
                "The device's subscriptions, oldest first",
                (200, "Subscriptions", "SubscriptionList"),
                (),
                params=[_PIN],
            ),
        },
        "/v1/devices/{pin}/subscriptions/{sub}": {
            "delete": device_op(
                "Delete a subscription: later pushes get 410",
                (204, "Deleted", None),
                (),
                params=[_PIN, _SUB],
            )
        },
        "/push/{sub}": {
            "post": {
                "summary": "Push an encrypted message (RFC 8030 §5; VAPID, RFC 8292)",
                "tags": ["webpush"],
                "security": [],
                "parameters": [_SUB, *_PUSH_HEADERS],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary", "maxLength": MAX_BODY}
                        }
                    },
                },
                "responses": {
                    **push_ok,
                    **_errors(400, 401, 403, 404, 410, 413, 414, 415, 429, 431, 503),
                },
            },
            "get": {
                "summary": "UnifiedPush's probe of an endpoint",
                "tags": ["webpush"],
                "security": [],
                "parameters": [_SUB],
                "responses": {
                    "200": {
                        "description": '{"unifiedpush": {"version": 1}}',
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(404, 410, 414, 429, 431, 503),
                },
            },
        },
        "/push/{sub}/messages/{message}": {
            "delete": {
                "summary": "Remove a message not delivered yet (RFC 8030 §6.4)",
                "tags": ["webpush"],
                "security": [],
                "parameters": [_SUB, _MESSAGE],
                "responses": {
                    "204": {"description": "Removed"},
                    **_errors(404, 410, 414, 429, 431, 503),
                },
            }
        },
        "/push/{sub}/receipts/{message}": {
            "get": {
                "summary": "Long-poll a message's receipt subscription (RFC 8030 §6.2)",
                "tags": ["webpush"],
                "security": [],
                "parameters": [
                    _SUB,
                    _MESSAGE,
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 60, "default": 30},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Delivered: the device acknowledged it",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(name="PushReceiptView")}
                            }
                        },
                    },
                    "204": {"description": "Not delivered yet: ask again"},
                    **_errors(404, 414, 422, 431, 503),
                },
            }
        },
    }
