"""The ``stored_bytes`` quota on a relay: its ledger, written to the store and added
to the other relays' (core/ledger.py says how it counts and why it errs high).

Ingest counts what it stores for a tenant's keys (pushes and broadcasts), the links
what their devices acknowledge; :meth:`StoredBytesQuota.check` refuses a push that
would take the tenant past its quota (429 naming it, nothing stored).  Every
``interval_s`` the relay writes its ledger if it changed and reads the others'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from pinrelay.core.ledger import COUNTED, Ledger, StoredBytes, total
from pinrelay.core.model import NewMessage
from pinrelay.core.quotas import over
from pinrelay.core.tenants import Quotas
from pinrelay.store.base import Store

log = logging.getLogger(__name__)


class StoredBytesQuota:
    def __init__(
        self, store: Store, node: str, clock: Callable[[], float], interval_s: float = 2.0
    ) -> None:
        self.store = store
        self.node = node
        self.clock = clock
        self.interval_s = interval_s
        self.ledger = StoredBytes()
        self._others: dict[str, Ledger] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Go on from this relay's last written ledger (a restart with its node id)."""
        try:
            ledgers = await self.store.ledgers()
        except Exception as exc:  # the store away: start from nothing, errs low
            log.warning("reading the stored-bytes ledgers failed: %r", exc)
            ledgers = {}
        self.ledger = StoredBytes(ledgers.pop(self.node, None))
        self._others = ledgers
        self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._sync()

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self._sync()
            except Exception as exc:
                log.warning("writing the stored-bytes ledger failed: %r", exc)

    async def _sync(self) -> None:
        snapshot = self.ledger.snapshot(int(self.clock() * 1000))
        if snapshot is not None:
            await self.store.put_ledger(self.node, snapshot)
        ledgers = await self.store.ledgers()
        ledgers.pop(self.node, None)
        self._others = ledgers

    # --- counting -----------------------------------------------------------------
    def stored(self, tenant: str, messages: Sequence[NewMessage]) -> None:
        for m in messages:
            if m.kind in COUNTED:
                self.ledger.add(tenant, len(m.data), m.expires_at_ms)

    def acked(self, tenant: str | None, items: Sequence[tuple[int, int]]) -> None:
        """A device of ``tenant`` acknowledged messages: (bytes, expiry) each."""
        if tenant is not None:
            for nbytes, expires_ms in items:
                self.ledger.remove(tenant, nbytes, expires_ms)

    def used(self, tenant: str) -> int:
        slots = [self.ledger.own(tenant), *(o.get(tenant, {}) for o in self._others.values())]
        return total(tenant, int(self.clock() * 1000), slots)

    def check(self, tenant: str | None, quotas: Quotas, incoming: int) -> None:
        """Raise 429 (nothing stored) if ``incoming`` bytes would take ``tenant`` past
        its ``stored_bytes`` quota."""
        limit = quotas.stored_bytes
        if tenant is None or limit is None:
            return
        if self.used(tenant) + incoming > limit:
            raise over(tenant, "stored_bytes", f"{limit} bytes of undelivered messages", 5.0)
