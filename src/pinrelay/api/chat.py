"""Contacts and chat over HTTP, with the device's token (PROTOCOL "Contacts", "Chat").

The same operations as the link's ``send`` and ``read`` frames, through the same
:class:`pinrelay.chat.Chat`; a refused send is a problem+json with the status of its
``unsent`` code.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    checked_pin,
    decode,
    json_response,
    read_body,
    relay_of,
    require_device,
)
from pinrelay.api.schemas import (
    ChatSend,
    ChatSent,
    ContactAnswer,
    ContactInvite,
    ContactList,
    ContactView,
    GroupCreate,
    GroupList,
    GroupMembers,
    GroupView,
    ReadBody,
    ReadDone,
)
from pinrelay.core.chat import MAX_TEXT, is_group_id
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.social import Action
from pinrelay.core.timefmt import rfc3339
from pinrelay.store.base import Group

#: A send's body: the largest text with every character escaped as \uXXXX (3 bytes
#: of JSON per byte of UTF-8 at worst: link/server.py's max_frame), and the rest.
CHAT_BODY_LIMIT = 3 * MAX_TEXT + 4096
SMALL_BODY = 4096
_TEXT_LIMIT = f"a chat message's text is at most {MAX_TEXT} bytes of UTF-8"


def _other(request: Request) -> str:
    return checked_pin(str(request.path_params["other"]))


async def _act(request: Request, other: str, action: Action, status: int = 200) -> Response:
    device = (await require_device(request)).device
    step = await relay_of(request).chat.contact(device.pin, other, action)
    state = "declined" if action is Action.DECLINE else step.answer
    return json_response(ContactAnswer(pin=other, state=state), status=status)


async def invite(request: Request) -> Response:
    body = decode(await read_body(request, limit=SMALL_BODY), ContactInvite)
    # 202 whether the PIN is a device or not, with the same body and headers.
    return await _act(request, body.pin, Action.INVITE, status=202)


async def accept(request: Request) -> Response:
    return await _act(request, _other(request), Action.ACCEPT)


async def decline(request: Request) -> Response:
    return await _act(request, _other(request), Action.DECLINE)


async def remove(request: Request) -> Response:
    await _act(request, _other(request), Action.REMOVE)
    return Response(status_code=204)


async def block(request: Request) -> Response:
    body = decode(await read_body(request, limit=SMALL_BODY), ContactInvite)
    return await _act(request, body.pin, Action.BLOCK)


async def unblock(request: Request) -> Response:
    await _act(request, _other(request), Action.UNBLOCK)
    return Response(status_code=204)


async def list_contacts(request: Request) -> Response:
    device = (await require_device(request)).device
    entries = await relay_of(request).store.contacts(device.pin)
    return json_response(
        ContactList(
            contacts=[
                ContactView(pin=c.pin, state=c.state, since=rfc3339(c.since_ms)) for c in entries
            ]
        )
    )


async def send(request: Request) -> Response:
    device = (await require_device(request)).device
    body = decode(await read_body(request, CHAT_BODY_LIMIT, why=_TEXT_LIMIT), ChatSend)
    sent = await relay_of(request).chat.send(
        device.pin, body.to, body.text, body.client_id, body.ttl
    )
    return json_response(ChatSent(id=sent.id, to=sent.to), status=201)


async def read(request: Request) -> Response:
    device = (await require_device(request)).device
    body = decode(await read_body(request, limit=SMALL_BODY * 8), ReadBody)
    receipts = await relay_of(request).chat.read(device.pin, body.ids)
    return json_response(ReadDone(receipts=receipts))


def group_view(group: Group, ignored: list[str] | None = None) -> GroupView:
    return GroupView(
        group=group.id,
        name=group.name,
        creator=group.creator,
        members=group.members,
        ignored=ignored or [],
    )


def _group_id(request: Request) -> str:
    group_id = str(request.path_params["group"])
    if not is_group_id(group_id):
        raise PinrelayError("no such group (or you are not in it)", ErrorCode.NOT_FOUND)
    return group_id


async def create_group(request: Request) -> Response:
    device = (await require_device(request)).device
    body = decode(await read_body(request, limit=64 * 1024), GroupCreate)
    group, ignored = await relay_of(request).chat.create_group(device.pin, body.name, body.members)
    return json_response(
        group_view(group, ignored),
        status=201,
        headers={"Location": f"{request.url.path}/{group.id}"},
    )


async def list_groups(request: Request) -> Response:
    device = (await require_device(request)).device
    groups = await relay_of(request).store.groups_of(device.pin)
    return json_response(GroupList(groups=[group_view(g) for g in groups]))


async def add_members(request: Request) -> Response:
    device = (await require_device(request)).device
    group_id = _group_id(request)
    body = decode(await read_body(request, limit=64 * 1024), GroupMembers)
    group, ignored = await relay_of(request).chat.add_members(device.pin, group_id, body.pins)
    return json_response(group_view(group, ignored))


async def remove_member(request: Request) -> Response:
    device = (await require_device(request)).device
    member = checked_pin(str(request.path_params["member"]))
    await relay_of(request).chat.remove_member(device.pin, _group_id(request), member)
    return Response(status_code=204)


async def leave_group(request: Request) -> Response:
    device = (await require_device(request)).device
    await relay_of(request).chat.leave(device.pin, _group_id(request))
    return Response(status_code=204)


routes = [
    Route("/v1/devices/{pin}/contacts", invite, methods=["POST"]),
    Route("/v1/devices/{pin}/contacts", list_contacts, methods=["GET"]),
    Route("/v1/devices/{pin}/contacts/{other}/accept", accept, methods=["POST"]),
    Route("/v1/devices/{pin}/contacts/{other}/decline", decline, methods=["POST"]),
    Route("/v1/devices/{pin}/contacts/{other}", remove, methods=["DELETE"]),
    Route("/v1/devices/{pin}/blocks", block, methods=["POST"]),
    Route("/v1/devices/{pin}/blocks/{other}", unblock, methods=["DELETE"]),
    Route("/v1/devices/{pin}/chat", send, methods=["POST"]),
    Route("/v1/devices/{pin}/read", read, methods=["POST"]),
    Route("/v1/devices/{pin}/groups", create_group, methods=["POST"]),
    Route("/v1/devices/{pin}/groups", list_groups, methods=["GET"]),
    Route("/v1/devices/{pin}/groups/{group}/members", add_members, methods=["POST"]),
    Route("/v1/devices/{pin}/groups/{group}/members/{member}", remove_member, methods=["DELETE"]),
    Route("/v1/devices/{pin}/groups/{group}", leave_group, methods=["DELETE"]),
]
