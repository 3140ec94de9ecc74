"""The routing contract (DESIGN, "router"): which link holds a device, and waking it.

Beside the ``Store`` protocol: the relay, the link server, ingest and the inbox talk
only to :class:`Router`; the in-process engine (router/local.py) and the NATS one
(router/nats.py) implement it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pinrelay.core.errors import ErrorCode
from pinrelay.core.model import StoredMessage


class Linked(Protocol):
    """What the router needs of a device's link."""

    def wake(self, fresh: list[StoredMessage] | None = None) -> None:
        """New messages may be stored for the device (``fresh``: just committed)."""

    def kick(self, code: ErrorCode, detail: str) -> None:
        """Close the link: send an error frame, then close with ``code.close_code``."""


class Router(Protocol):
    #: Whether :meth:`attach` wakes the link itself once it is routed (so the link
    #: need not read its backlog before that as well).
    wakes_after_attach: bool
    #: Long-poll waiters re-read the store this often (None: wake-ups are never missed).
    waiter_recheck_s: float | None

    async def start(self) -> None:
        """Connect and announce this relay (before links are accepted)."""

    async def stop(self) -> None:
        """Stop routing (after links were drained)."""

    @property
    def link_urls(self) -> list[str]:
        """Every live relay's link URL, this one's first (``drain`` alternates)."""
        ...

    def live_nodes(self) -> frozenset[str] | None:
        """The names of the live relays, this one's included (None: a relay alone)."""
        ...

    def region_links(self) -> int:
        """Device links held by this region's relays, as far as this relay knows."""
        ...

    def report_red(self, components: frozenset[str]) -> None:
        """The components this relay's monitors judge red now (told to the others
        with its heartbeats)."""
        ...

    def red_elsewhere(self) -> frozenset[str]:
        """The components the other live relays of this region judged red at their
        last heartbeat."""
        ...

    def __len__(self) -> int:
        """Links held by this relay."""
        ...

    def attach(self, pin: str, link: Linked) -> None:
        """Make ``link`` the device's link; a previous one is closed (PROTOCOL "Replaced")."""

    def detach(self, pin: str, link: Linked) -> None:
        """``link`` closed; the device is no longer linked here unless another replaced it."""

    def is_online(self, pin: str) -> bool:
        """Linked or long-polling, here or (as far as this relay knows) elsewhere."""
        ...

    def add_waiter(self, pin: str, waiter: Callable[[], None]) -> None:
        """A long-poll request waiting for the device's next message."""

    async def waiter_ready(self, pin: str) -> None:
        """Return once a push through any relay would wake the device's waiters."""

    def remove_waiter(self, pin: str, waiter: Callable[[], None]) -> None: ...

    def wake(self, pin: str, fresh: list[StoredMessage] | None = None) -> None:
        """Messages were stored for ``pin`` (``fresh``: just committed, in cursor order)."""

    def kick(self, pin: str, code: ErrorCode, detail: str) -> None:
        """Close the device's link wherever it is (token rotated, device deleted)."""
