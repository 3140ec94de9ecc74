"""A device's own HTTP routes: contacts, chat, read receipts and groups, with the
device's token as a bearer token (PROTOCOL "Contacts", "Chat"; api/chat.py).

Each operation is a :class:`Call` (method, path, body, how to decode the answer)
built by :class:`Routes`, which does no I/O.  The synchronous :class:`DeviceClient`
(the CLI) and the async :class:`Contacts` and :class:`Groups` of the SDK's
``device.contacts`` / ``device.groups`` run the same calls and differ only in how
they do the I/O, as websockets' sync and asyncio clients share one protocol core.
Every error answer is an :class:`ApiError` with the problem's status and detail;
a relay that cannot be reached is an ``ApiError`` with status 0.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from pinrelay.client.http import ApiError, api_error
from pinrelay.core.ids import new_secret

T = TypeVar("T")

ContactState = Literal["invited", "pending", "accepted", "blocked"]


class Contact(msgspec.Struct, kw_only=True, frozen=True):
    """One entry of a device's contact list."""

    pin: str
    #: invited: I invited them; pending: they invited me; accepted: we are contacts;
    #: blocked: I blocked them.
    state: ContactState
    #: When the entry got its state (RFC 3339).
    since: str


class ContactAnswer(msgspec.Struct, kw_only=True, frozen=True):
    """The answer to an invite, accept, decline or block: the other PIN's entry now."""

    pin: str
    #: invited, accepted, declined, blocked (or pending...: what the entry is).
    state: str


class Sent(msgspec.Struct, kw_only=True, frozen=True):
    """A chat message the relay stored (``sent``): its id, for receipts and ``read``."""

    id: str
    to: str


class Group(msgspec.Struct, kw_only=True, frozen=True):
    """A group and its members (PINs); ``ignored``: PINs a create or an add left out
    (not contacts of the creator)."""

    group: str
    name: str
    creator: str
    members: list[str]
    ignored: list[str] = msgspec.field(default_factory=list)


class _ContactList(msgspec.Struct):
    contacts: list[Contact]


class _GroupList(msgspec.Struct):
    groups: list[Group]


class _ReadDone(msgspec.Struct):
    receipts: int


def _decoder(kind: type[T]) -> Callable[[bytes], T]:
    return msgspec.json.Decoder(kind).decode


def _nothing(_content: bytes) -> None:
    return None


_answer = _decoder(ContactAnswer)
_group = _decoder(Group)
_contacts = msgspec.json.Decoder(_ContactList)
_groups = msgspec.json.Decoder(_GroupList)
_read = msgspec.json.Decoder(_ReadDone)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its (successful) answer."""

    method: str
    path: str
    body: dict[str, Any] | None
    decode: Callable[[bytes], T]


def _seg(value: str) -> str:
    """A path segment: whatever a caller passes cannot reach another route."""
    return quote(value, safe="")


class Routes:
    """The calls of one device's routes; no I/O."""

    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.base = f"/v1/devices/{_seg(pin)}"

    # --- contacts ---------------------------------------------------------------
    def invite(self, other: str) -> Call[ContactAnswer]:
        """202 whether ``other`` is a device or not (PINs cannot be probed)."""
        return Call("POST", f"{self.base}/contacts", {"pin": other}, _answer)

    def accept(self, other: str) -> Call[ContactAnswer]:
        return Call("POST", f"{self.base}/contacts/{_seg(other)}/accept", None, _answer)

    def decline(self, other: str) -> Call[ContactAnswer]:
        return Call("POST", f"{self.base}/contacts/{_seg(other)}/decline", None, _answer)

    def remove(self, other: str) -> Call[None]:
        return Call("DELETE", f"{self.base}/contacts/{_seg(other)}", None, _nothing)

    def block(self, other: str) -> Call[ContactAnswer]:
        return Call("POST", f"{self.base}/blocks", {"pin": other}, _answer)

    def unblock(self, other: str) -> Call[None]:
        return Call("DELETE", f"{self.base}/blocks/{_seg(other)}", None, _nothing)

    def contacts(self) -> Call[list[Contact]]:
        return Call("GET", f"{self.base}/contacts", None, lambda b: _contacts.decode(b).contacts)

    # --- chat -------------------------------------------------------------------
    def send(
        self, to: str, text: str, client_id: str | None = None, ttl: float | None = None
    ) -> Call[Sent]:
        """A chat message; the same ``client_id`` sent again is stored once."""
        body: dict[str, Any] = {
            "to": to,
            "text": text,
            "client_id": client_id or new_secret(os.urandom, 12),
        }
        if ttl is not None:
            body["ttl"] = ttl
        return Call("POST", f"{self.base}/chat", body, _decoder(Sent))

    def read(self, ids: Sequence[str]) -> Call[int]:
        """Read receipts for these delivered messages; how many were stored."""
        return Call(
            "POST", f"{self.base}/read", {"ids": list(ids)}, lambda b: _read.decode(b).receipts
        )

    # --- groups -----------------------------------------------------------------
    def create_group(self, name: str, members: Sequence[str]) -> Call[Group]:
        return Call("POST", f"{self.base}/groups", {"name": name, "members": list(members)}, _group)

    def groups(self) -> Call[list[Group]]:
        return Call("GET", f"{self.base}/groups", None, lambda b: _groups.decode(b).groups)

    def add_members(self, group: str, pins: Sequence[str]) -> Call[Group]:
        """Creator only."""
        path = f"{self.base}/groups/{_seg(group)}/members"
        return Call("POST", path, {"pins": list(pins)}, _group)

    def remove_member(self, group: str, member: str) -> Call[None]:
        """Creator only."""
        path = f"{self.base}/groups/{_seg(group)}/members/{_seg(member)}"
        return Call("DELETE", path, None, _nothing)

    def leave(self, group: str) -> Call[None]:
        return Call("DELETE", f"{self.base}/groups/{_seg(group)}", None, _nothing)


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _answered(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise api_error(response)
    try:
        return call.decode(response.content)
    except msgspec.DecodeError as exc:  # a relay older or newer than this client
        raise ApiError(response.status_code, f"unexpected answer to {call.path}: {exc}") from None


def _unreachable(url: str, exc: httpx.HTTPError) -> ApiError:
    return ApiError(0, f"cannot reach the relay at {url}: {exc}")


class DeviceClient:
    """A device's routes, synchronously (the CLI): ``DeviceClient(url, pin, token)``."""

    def __init__(
        self,
        url: str,
        pin: str,
        token: str,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.routes = Routes(pin)
        self._http = httpx.Client(
            base_url=self.url, headers=_headers(token), timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from None
        return _answered(call, response)

    def invite(self, other: str) -> ContactAnswer:
        return self.run(self.routes.invite(other))

    def accept(self, other: str) -> ContactAnswer:
        return self.run(self.routes.accept(other))

    def decline(self, other: str) -> ContactAnswer:
        return self.run(self.routes.decline(other))

    def remove(self, other: str) -> None:
        self.run(self.routes.remove(other))

    def block(self, other: str) -> ContactAnswer:
        return self.run(self.routes.block(other))

    def unblock(self, other: str) -> None:
        self.run(self.routes.unblock(other))

    def contacts(self) -> list[Contact]:
        return self.run(self.routes.contacts())

    def send(
        self, to: str, text: str, client_id: str | None = None, ttl: float | None = None
    ) -> Sent:
        return self.run(self.routes.send(to, text, client_id, ttl))

    def read(self, *ids: str) -> int:
        return self.run(self.routes.read(ids))

    def create_group(self, name: str, members: Sequence[str]) -> Group:
        return self.run(self.routes.create_group(name, members))

    def groups(self) -> list[Group]:
        return self.run(self.routes.groups())

    def add_members(self, group: str, pins: Sequence[str]) -> Group:
        return self.run(self.routes.add_members(group, pins))

    def remove_member(self, group: str, member: str) -> None:
        self.run(self.routes.remove_member(group, member))

    def leave(self, group: str) -> None:
        self.run(self.routes.leave(group))


class AsyncRunner:
    """Runs calls for the SDK: one short-lived HTTP client per call (contacts and
    groups change rarely; nothing is left open when the device stops)."""

    def __init__(
        self,
        url: str | None,
        pin: str,
        token: str,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.routes = Routes(pin)
        self._token = token
        self._timeout = timeout
        #: Where requests go instead of the network (tests: httpx.MockTransport).
        self.transport = transport

    async def run(self, call: Call[T]) -> T:
        if self.url is None:
            raise ValueError(
                "contacts, groups and Web Push need the relay's HTTP url: Device(url=...)"
            )
        async with httpx.AsyncClient(
            base_url=self.url,
            headers=_headers(self._token),
            timeout=self._timeout,
            transport=self.transport,
        ) as http:
            try:
                response = await http.request(call.method, call.path, json=call.body)
            except httpx.HTTPError as exc:
                raise _unreachable(self.url, exc) from None
        return _answered(call, response)


class Contacts:
    """``device.contacts``: who may message this device, and whom it may message.

    ``await device.contacts.invite(pin)``, then the other device's
    ``await other.contacts.accept(my_pin)``; both are told with a ``contact``
    message.  Raises :class:`ApiError` on an error answer."""

    def __init__(self, runner: AsyncRunner) -> None:
        self._run = runner.run
        self._routes = runner.routes

    async def invite(self, pin: str) -> ContactAnswer:
        return await self._run(self._routes.invite(pin))

    async def accept(self, pin: str) -> ContactAnswer:
        return await self._run(self._routes.accept(pin))

    async def decline(self, pin: str) -> ContactAnswer:
        return await self._run(self._routes.decline(pin))

    async def block(self, pin: str) -> ContactAnswer:
        return await self._run(self._routes.block(pin))

    async def unblock(self, pin: str) -> None:
        await self._run(self._routes.unblock(pin))

    async def remove(self, pin: str) -> None:
        await self._run(self._routes.remove(pin))

    async def list(self) -> builtins.list[Contact]:
        return await self._run(self._routes.contacts())


class Groups:
    """``device.groups``: groups this device created or belongs to.  Send to one with
    ``device.send(group_id, text)``."""

    def __init__(self, runner: AsyncRunner) -> None:
        self._run = runner.run
        self._routes = runner.routes

    async def create(self, name: str, members: Sequence[str]) -> Group:
        return await self._run(self._routes.create_group(name, members))

    async def add(self, group: str, pins: Sequence[str]) -> Group:
        return await self._run(self._routes.add_members(group, pins))

    async def remove(self, group: str, pin: str) -> None:
        await self._run(self._routes.remove_member(group, pin))

    async def leave(self, group: str) -> None:
        await self._run(self._routes.leave(group))

    async def list(self) -> builtins.list[Group]:
        return await self._run(self._routes.groups())
