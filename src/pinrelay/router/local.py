"""In-process router: one relay, devices linked to it, wake-ups by callback."""

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


class LocalRouter:
    def __init__(self) -> None:
        self._links: dict[str, Linked] = {}
        self._waiters: dict[str, set[Callable[[], None]]] = {}

    def __len__(self) -> int:
        return len(self._links)

    def attach(self, pin: str, link: Linked) -> None:
        """Make ``link`` the device's link; a previous one is closed (PROTOCOL "Replaced")."""
        old = self._links.get(pin)
        self._links[pin] = link
        if old is not None and old is not link:
            old.kick(ErrorCode.REPLACED, "another link for this device replaced this one")

    def detach(self, pin: str, link: Linked) -> None:
        if self._links.get(pin) is link:
            del self._links[pin]

    def is_online(self, pin: str) -> bool:
        return pin in self._links or pin in self._waiters

    def add_waiter(self, pin: str, waiter: Callable[[], None]) -> None:
        """A long-poll request waiting for the device's next message."""
        self._waiters.setdefault(pin, set()).add(waiter)

    async def waiter_ready(self, pin: str) -> None:
        """Return once a push through any relay would wake the device's waiters."""

    #: Whether :meth:`attach` wakes the link itself once it is routed (so the link
    #: need not read its backlog before that as well).
    wakes_after_attach = False

    #: Long-poll waiters re-read the store this often (None: wake-ups are never missed).
    waiter_recheck_s: float | None = None

    def remove_waiter(self, pin: str, waiter: Callable[[], None]) -> None:
        waiters = self._waiters.get(pin)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[pin]

    def wake(self, pin: str, fresh: list[StoredMessage] | None = None) -> None:
        link = self._links.get(pin)
        if link is not None:
            link.wake(fresh)
        for waiter in list(self._waiters.get(pin, ())):
            waiter()

    def kick(self, pin: str, code: ErrorCode, detail: str) -> None:
        link = self._links.pop(pin, None)
        if link is not None:
            link.kick(code, detail)
