"""The device link: WebSocket frames over a bare asyncio.Protocol."""

from pinrelay.link.server import LinkConfig, LinkServer

__all__ = ["LinkConfig", "LinkServer"]
