"""``device.channels``: the broadcast channels a device joins, leaves and refuses, with
its own token (PROTOCOL "Channels and broadcasts"; api/channels.py).

A broadcast arrives as a message of kind ``broadcast``; :func:`broadcast_of` reads
its channel and the tenant's value, and ``await device.channels.unsubscribe(message)``
is the unsubscribe action every broadcast carries.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from pinrelay.client.contacts import AsyncRunner, Call, _nothing, _seg

ChannelClass = Literal["service", "marketing"]


class Channel(msgspec.Struct, kw_only=True, frozen=True):
    """A channel of the device's tenant, and whether the device joined it."""

    id: str
    name: str
    klass: ChannelClass = msgspec.field(name="class")
    joined: bool


class Channels(msgspec.Struct, kw_only=True, frozen=True):
    channels: list[Channel]
    #: The classes whose broadcasts the device refuses.
    refused: list[ChannelClass]


@dataclass(frozen=True, slots=True)
class BroadcastInfo:
    """What a ``broadcast`` message says besides the tenant's value."""

    channel: str
    name: str
    klass: ChannelClass
    #: The tenant's value, as it broadcast it.
    data: Any
    #: The request that leaves the channel (``DELETE``, with the device's token).
    unsubscribe: str


def broadcast_of(kind: str, data: Any) -> BroadcastInfo | None:
    """The broadcast a message carries (None: not a broadcast)."""
    if kind != "broadcast" or not isinstance(data, dict):
        return None
    try:
        return BroadcastInfo(
            channel=str(data["channel"]),
            name=str(data["name"]),
            klass=data["class"],
            data=data.get("data"),
            unsubscribe=str(data["unsubscribe"]),
        )
    except KeyError:
        return None


_channels = msgspec.json.Decoder(Channels)


class ChannelRoutes:
    """``device.channels``: join, leave, refuse a class, list (over HTTP: needs ``url``).
    Raises :class:`pinrelay.client.http.ApiError` on an error answer."""

    def __init__(self, runner: AsyncRunner) -> None:
        self._run = runner.run
        self._base = runner.routes.base

    async def list(self) -> Channels:
        return await self._run(Call("GET", f"{self._base}/channels", None, _channels.decode))

    async def join(self, channel: str) -> Channels:
        path = f"{self._base}/channels/{_seg(channel)}"
        return await self._run(Call("POST", path, None, _channels.decode))

    async def leave(self, channel: str) -> None:
        path = f"{self._base}/channels/{_seg(channel)}"
        await self._run(Call("DELETE", path, None, _nothing))

    async def unsubscribe(self, message: Any) -> None:
        """Leave the channel a broadcast ``message`` (an SDK Message) came from."""
        info = broadcast_of(message.kind, message.data)
        if info is None:
            raise ValueError("not a broadcast: nothing to unsubscribe from")
        await self.leave(info.channel)

    async def refuse(self, klass: ChannelClass, refused: bool = True) -> None:
        """Refuse every broadcast of ``klass`` (``refused=False``: take that back)."""
        path = f"{self._base}/refusals/{_seg(klass)}"
        await self._run(Call("PUT" if refused else "DELETE", path, None, _nothing))

    async def refusals(self) -> builtins.list[ChannelClass]:
        return (await self.list()).refused
