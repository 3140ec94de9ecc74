"""The contacts, chat and group paths of the OpenAPI document (api/openapi.py).

Every one is called with the device's token as bearer (PROTOCOL "Contacts").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import Struct

from pinrelay.api import schemas

COMPONENTS: list[type[Struct]] = [
    schemas.ContactInvite,
    schemas.ContactAnswer,
    schemas.ContactList,
    schemas.ChatSend,
    schemas.ChatSent,
    schemas.ReadBody,
    schemas.ReadDone,
    schemas.GroupCreate,
    schemas.GroupMembers,
    schemas.GroupView,
    schemas.GroupList,
]

#: A device-token route's errors (404: a malformed PIN in the path; no scopes: no 403).
DEVICE_ERRORS = (401, 404, 429, 503)
BODY_ERRORS = (400, 413, 415, 422)


def path_param(name: str, pattern: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": pattern},
    }


_PIN = path_param("pin", "^[0-9A-F]{8}$")
_OTHER = path_param("other", "^[0-9A-F]{8}$")
_MEMBER = path_param("member", "^[0-9A-F]{8}$")
_GROUP = path_param("group", "^G[0-9A-HJKMNP-TV-Z]{12}$")


def paths(op: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The paths, built with openapi's ``_op`` (passed in to keep imports one way)."""

    def device_op(
        summary: str, ok: tuple[int, str, str | None], errors: tuple[int, ...], **kw: Any
    ) -> dict[str, Any]:
        codes = (*DEVICE_ERRORS, *(e for e in errors if e not in DEVICE_ERRORS))
        return op(summary, ok, codes, tag="chat", **kw)

    return {
        "/v1/devices/{pin}/contacts": {
            "post": device_op(
                "Invite a PIN to be a contact; the same answer whether it is a device or not",
                (202, "Invited (or accepted: they had invited you)", "ContactAnswer"),
                (*BODY_ERRORS, 409),
                body="ContactInvite",
                params=[_PIN],
            ),
            "get": device_op(
                "The device's contacts with their states",
                (200, "Contacts", "ContactList"),
                (),
                params=[_PIN],
            ),
        },
        "/v1/devices/{pin}/contacts/{other}/accept": {
            "post": device_op(
                "Accept the invitation from {other} (again: it is told again, and that"
                " counts as an invitation)",
                (200, "Accepted", "ContactAnswer"),
                (404, 409, 429),
                params=[_PIN, _OTHER],
            )
        },
        "/v1/devices/{pin}/contacts/{other}/decline": {
            "post": device_op(
                "Decline the invitation from {other} (it is told nothing)",
                (200, "Declined", "ContactAnswer"),
                (404,),
                params=[_PIN, _OTHER],
            )
        },
        "/v1/devices/{pin}/contacts/{other}": {
            "delete": device_op(
                "Remove a contact (both sides)",
                (204, "Removed", None),
                (404,),
                params=[_PIN, _OTHER],
            )
        },
        "/v1/devices/{pin}/blocks": {
            "post": device_op(
                "Block a PIN: it can no longer message or invite this device",
                (200, "Blocked", "ContactAnswer"),
                (*BODY_ERRORS, 409),
                body="ContactInvite",
                params=[_PIN],
            )
        },
        "/v1/devices/{pin}/blocks/{other}": {
            "delete": device_op(
                "Unblock a PIN", (204, "Unblocked", None), (404,), params=[_PIN, _OTHER]
            )
        },
        "/v1/devices/{pin}/chat": {
            "post": device_op(
                "Send a chat message to a contact or a group; 201 once stored for every"
                " recipient (a client_id used again in 24 h answers the first send: its id and to)",
                (201, "Stored", "ChatSent"),
                (*BODY_ERRORS, 403, 404),
                body="ChatSend",
                params=[_PIN],
            )
        },
        "/v1/devices/{pin}/read": {
            "post": device_op(
                "Mark chat messages read: a read receipt to each sender, once",
                (200, "Receipts stored", "ReadDone"),
                BODY_ERRORS,
                body="ReadBody",
                params=[_PIN],
            )
        },
        "/v1/devices/{pin}/groups": {
            "post": device_op(
                "Create a group of the device and its accepted contacts",
                (
                    201,
                    "Created; PINs that are not accepted contacts are listed as ignored",
                    "GroupView",
                ),
                BODY_ERRORS,
                body="GroupCreate",
                params=[_PIN],
            ),
            "get": device_op(
                "The groups the device is in", (200, "Groups", "GroupList"), (), params=[_PIN]
            ),
        },
        "/v1/devices/{pin}/groups/{group}/members": {
            "post": device_op(
                "Add members (the creator only; accepted contacts only)",
                (200, "The group", "GroupView"),
                (*BODY_ERRORS, 403, 404, 409),
                body="GroupMembers",
                params=[_PIN, _GROUP],
            )
        },
        "/v1/devices/{pin}/groups/{group}/members/{member}": {
            "delete": device_op(
                "Remove a member (the creator only)",
                (204, "Removed", None),
                (403, 404),
                params=[_PIN, _GROUP, _MEMBER],
            )
        },
        "/v1/devices/{pin}/groups/{group}": {
            "delete": device_op("Leave a group", (204, "Left", None), (404,), params=[_PIN, _GROUP])
        },
    }
