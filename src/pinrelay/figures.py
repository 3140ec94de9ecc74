"""The figures recorder: every relay keeps its readings (core/readings.py) in the
store, so an incident's report (core/report.py) and its chart can be made later,
from any relay, for 90 days (Store.put_readings).

Every ``every_s`` seconds (``--figures-every``, 10 by default) it takes one reading
from the callable it is given and writes it, with any still waiting, in one store
write.  A relay gives it the monitors' readings (monitors.py, one a second) folded
into one per interval (:class:`Folded`): counts summed, the lag at its worst, the
rest as last read.
While the store cannot be written, readings wait in memory, at most ``hold_s``
seconds of them (an hour; the oldest go first), and are written when it is back:
the report of a store outage covers the outage.  A relay killed loses only the
reading of the interval it was in (and those waiting for an unreachable store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from pinrelay.core.readings import Readings, add_counts
from pinrelay.delay_days import settle_yesterday
from pinrelay.store.base import Store

log = logging.getLogger(__name__)

#: Seconds between two readings by default.
EVERY_S = 10.0
#: Seconds of readings held while the store is away.
HOLD_S = 3600.0
#: Readings written by one store write, at most (an outage's are written in turns).
WRITE_BATCH = 500
#: Seconds a write may take before the readings wait for the next turn.
WRITE_TIMEOUT_S = 10.0
#: Seconds the last write may take when the relay stops (it is draining).
STOP_TIMEOUT_S = 2.0


def fold(earlier: Readings, later: Readings) -> Readings:
    """Two readings of one relay as one, over both intervals: delivered, delays,
    expired and shed summed; the worst lag and store time (None: a probe failed);
    links, backlog and disk space as last read."""
    store_ms = (
        None
        if earlier.store_ms is None or later.store_ms is None
        else max(earlier.store_ms, later.store_ms)
    )
    delays = add_counts(earlier.delay_counts, later.delay_counts)
    tenants = {
        t: add_counts(earlier.tenant_delays.get(t, ()), later.tenant_delays.get(t, ()))
        for t in earlier.tenant_delays.keys() | later.tenant_delays.keys()
    }
    return Readings(
        at_ms=later.at_ms,
        node=later.node,
        region=later.region,
        links=later.links,
        backlog=later.backlog,
        lag_ms=max(earlier.lag_ms, later.lag_ms),
        delivered=earlier.delivered + later.delivered,
        delay_counts=delays,
        tenant_delays=tenants,
        expired=earlier.expired + later.expired,
        shed=earlier.shed + later.shed,
        store_ms=store_ms,
        disk_free=later.disk_free,
    )


class Folded:
    """Readings taken more often than they are recorded, folded (:func:`fold`)
    until taken."""

    def __init__(self) -> None:
        self._held: Readings | None = None

    def add(self, r: Readings) -> None:
        self._held = r if self._held is None else fold(self._held, r)

    def take(self) -> Readings | None:
        """What was read since the last take (None: nothing)."""
        held, self._held = self._held, None
        return held


class FiguresRecorder:
    """Takes a reading every ``every_s`` s and keeps it in ``store`` (module doc)."""

    def __init__(
        self,
        store: Store,
        read: Callable[[], Readings | None],
        every_s: float = EVERY_S,
        hold_s: float = HOLD_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock``: the wall clock, to sum each settled day's delays per tenant
        (delay_days.py) after a write; None: not summed."""
        self.store = store
        self.read = read
        self.clock = clock
        #: The wall clock's hour (ms) yesterday's delays were last tried at.
        self._settle_tried: int | None = None
        self.every_s = every_s
        #: Readings not written yet, oldest first (bounded: ``hold_s`` of them).
        self.waiting: deque[Readings] = deque(maxlen=max(1, round(hold_s / every_s)))
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop taking readings; those waiting get one more try (a graceful stop)."""
        for task in (self._task, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._writer = None
        await self.flush(STOP_TIMEOUT_S)

    async def _run(self) -> None:
        """A reading every ``every_s`` s, whatever the store does: the writes go on
        beside (one at a time), so a store that hangs delays no reading."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.every_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due, loop.time() - self.every_s)  # after a stall: no burst
            self.take()
            if self._writer is None or self._writer.done():
                self._writer = loop.create_task(self.write())

    def take(self) -> None:
        """Take one reading (if there is one); it waits to be written."""
        try:
            r = self.read()
            if r is not None:
                self.waiting.append(r)
        except Exception:
            log.exception("taking a reading failed")

    async def tick(self) -> None:
        """Take one reading and write what waits (what the loop does, at once)."""
        self.take()
        await self.write()

    async def write(self) -> None:
        """Write what waits, a batch at a time, until done or the store fails;
        then, once an hour, sum yesterday's delays if they are settled."""
        while await self.flush() and self.waiting:
            pass
        if self.clock is None or self.waiting:
            return
        now_ms = int(self.clock() * 1000)
        hour = now_ms - now_ms % 3_600_000
        if self._settle_tried == hour:
            return
        self._settle_tried = hour
        try:
            await asyncio.wait_for(settle_yesterday(self.store, now_ms), WRITE_TIMEOUT_S * 6)
        except Exception as exc:  # tried again next hour; a credits call sums it too
            log.warning("delays of yesterday not summed: %r", exc)

    async def flush(self, timeout: float = WRITE_TIMEOUT_S) -> bool:
        """Write up to WRITE_BATCH waiting readings; whether it worked."""
        if not self.waiting:
            return True
        batch = [self.waiting[n] for n in range(min(WRITE_BATCH, len(self.waiting)))]
        try:
            await asyncio.wait_for(self.store.put_readings(batch), timeout)
        except Exception as exc:  # the store away: they wait (bounded)
            if not self._failing:
                log.warning("figures not recorded: %r; holding them until the store is back", exc)
            self._failing = True
            return False
        if self._failing:
            log.warning("figures recorded again (%d held)", len(self.waiting))
        self._failing = False
        written = {id(r) for r in batch}
        while self.waiting and id(self.waiting[0]) in written:
            self.waiting.popleft()  # (the oldest may have been dropped meanwhile)
        return True
