"""Fixtures of the chat tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from pinrelay.core import frames
from tests.conftest import RelayFactory
from tests.linkclient import link
from tests.relayproc import RelayProc

Links = Callable[..., Awaitable[tuple[ClientConnection, frames.Welcome]]]


@pytest.fixture
async def links(relay_factory: RelayFactory) -> AsyncIterator[Links]:
    """Open links; every one is closed at the end, even when the test fails.

    Set up after ``relay_factory`` so torn down before it: the links close while the
    loop runs, and the relays then stop at once instead of draining for 5 s."""
    opened: list[ClientConnection] = []

    async def make(
        relay: RelayProc, device: dict[str, Any], **kwargs: Any
    ) -> tuple[ClientConnection, frames.Welcome]:
        ws, welcome = await link(relay, device, **kwargs)
        opened.append(ws)
        return ws, welcome

    yield make
    for ws in opened:
        await ws.close()
