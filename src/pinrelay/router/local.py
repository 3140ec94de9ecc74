"""In-process router: one relay, devices linked to it, wake-ups by callback."""

from __future__ import annotations

from collections.abc import Callable

from pinrelay.core.errors import ErrorCode
from pinrelay.core.model import StoredMessage
from pinrelay.router.base import Linked


class LocalRouter:
    """The :class:`~pinrelay.router.base.Router` of a single relay.

    The NATS router keeps one of these for the links and waiters it holds, and uses
    only its public methods (:meth:`link`, :meth:`take`, :meth:`has_waiters`).
    """

    #: Whether :meth:`attach` wakes the link itself once it is routed.
    wakes_after_attach = False
    #: Long-poll waiters re-read the store this often (None: wake-ups are never missed).
    waiter_recheck_s: float | None = None

    def __init__(self, link_url: str = "") -> None:
        self._link_url = link_url
        self._links: dict[str, Linked] = {}
        self._waiters: dict[str, set[Callable[[], None]]] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    @property
    def link_urls(self) -> list[str]:
        return [self._link_url]

    def live_nodes(self) -> frozenset[str] | None:
        return None

    def region_links(self) -> int:
        return len(self)

    def report_red(self, components: frozenset[str]) -> None:
        pass

    def red_elsewhere(self) -> frozenset[str]:
        return frozenset()

    def __len__(self) -> int:
        return len(self._links)

    def link(self, pin: str) -> Linked | None:
        """The device's link, if it is linked to this relay."""
        return self._links.get(pin)

    def take(self, pin: str) -> Linked | None:
        """Forget the device's link (without closing it) and return it."""
        return self._links.pop(pin, None)

    def has_waiters(self, pin: str) -> bool:
        return pin in self._waiters

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
