"""What one relay knows of incidents, and who hears of each change.

Every relay keeps a board: the incidents open now or resolved in the last
``HISTORY_MS`` (90 days, for the status page's uptime, core/uptime.py), read from
the store every ``refresh_s`` (one listing a second per relay, at most
``MAX_READ`` incidents) and at once when this relay writes a change.
:meth:`IncidentBoard.incidents` gives those open or resolved in the last
``RECENT_MS``; :meth:`IncidentBoard.history` all it holds.  A change is an incident at a
revision the board has not seen; its event is ``opened``, ``updated`` or
``resolved`` (:func:`event_of`).

Two kinds of listener:

- ``on_event``: every relay hears every change it sees, once per revision that
  changes the state or the timeline (not a take-over, core/monitors.py), in
  revision order per incident (it tells its own links; PROTOCOL "Incidents and
  status").  A relay that first sees an incident at a later revision hears one
  event for it (the newest).  The first read after start is silent: it only
  learns what exists (devices that link hear of open incidents at ``hello``).
- ``on_written``: only the relay whose store write made the revision (the winner of
  the compare-and-set, core/incidents.py rule 2) hears it, before ``on_event``; for a
  revision a monitor kept on the board while the store was away, when it is written
  (``on_event`` heard it when it was kept: :meth:`IncidentBoard.published`).

A store that fails to answer leaves the board as it was, marked ``stale``
(:attr:`stale_since`): the status pages say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from pinrelay.core.incidents import Incident
from pinrelay.store.base import Store

log = logging.getLogger("pinrelay.incidents")

Event = Literal["opened", "updated", "resolved"]
Listener = Callable[[Event, Incident], Awaitable[None]]

#: How far back :meth:`IncidentBoard.incidents` goes (as the status pages list).
RECENT_MS = 14 * 86_400_000
#: How far back the board keeps resolved incidents (the status page's uptime).
HISTORY_MS = 90 * 86_400_000
#: Most incidents one read lists.
MAX_READ = 1000


def event_of(incident: Incident) -> Event:
    """What a revision of ``incident`` says happened."""
    if incident.state == "resolved":
        return "resolved"
    return "opened" if incident.rev == 1 else "updated"


class IncidentBoard:
    def __init__(self, store: Store, clock: Callable[[], float], *, refresh_s: float = 1.0):
        self.store = store
        self.clock = clock
        self.refresh_s = refresh_s
        self._known: dict[str, Incident] = {}
        self.on_event: list[Listener] = []
        self.on_written: list[Listener] = []
        #: When reads of the store began to fail (clock seconds); None: fresh.
        self.stale_since: float | None = None
        #: When the board last read the store successfully (clock seconds).
        self.read_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False

    # --- reading ------------------------------------------------------------
    def incidents(self) -> list[Incident]:
        """Open ones and those resolved in the last RECENT_MS, newest (started, id)
        first."""
        since = int(self.clock() * 1000) - RECENT_MS
        return [
            i
            for i in self.history()
            if i.state == "open" or (i.resolved_ms is not None and i.resolved_ms >= since)
        ]

    def history(self) -> list[Incident]:
        """Open ones and those resolved in the last HISTORY_MS, newest (started, id)
        first."""
        found = list(self._known.values())
        found.sort(key=lambda i: (i.started_ms, i.id), reverse=True)
        return found

    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents() if i.state == "open"]

    def get(self, incident_id: str) -> Incident | None:
        return self._known.get(incident_id)

    # --- changes ------------------------------------------------------------
    async def written(self, incident: Incident) -> None:
        """This relay stored ``incident`` (it won the compare-and-set)."""
        if not self._tells(incident):
            self._remember(incident)
            return
        event = event_of(incident)
        for listener in self.on_written:
            await _call(listener, event, incident)
        await self.seen(incident)

    async def published(self, incident: Incident) -> None:
        """This relay stored ``incident`` late: a revision a monitor kept on the
        board while the store was away (monitors.py), whose ``on_event`` was heard
        then; ``on_written`` hears it now (a take-over is never kept)."""
        self._remember(incident)
        event = event_of(incident)
        for listener in self.on_written:
            await _call(listener, event, incident)

    async def seen(self, incident: Incident) -> None:
        """``incident`` was read (or written here): tell ``on_event`` if it is new."""
        if not self._tells(incident):
            self._remember(incident)
            return
        self._known[incident.id] = incident
        event = event_of(incident)
        for listener in self.on_event:
            await _call(listener, event, incident)

    def _tells(self, incident: Incident) -> bool:
        """A revision newer than the known one that changes its state or timeline
        (another relay taking an incident over changes neither)."""
        known = self._known.get(incident.id)
        if known is None:
            return True
        changed = (known.state, known.updates) != (incident.state, incident.updates)
        return incident.rev > known.rev and changed

    def replace(self, incident: Incident) -> None:
        """Know ``incident`` as stored, whatever this relay knew of its id (a
        relay's own copy lost to another relay's write), telling no one: the
        next newer revision is told as usual."""
        self._known[incident.id] = incident

    def _remember(self, incident: Incident) -> None:
        known = self._known.get(incident.id)
        if known is None or incident.rev > known.rev:
            self._known[incident.id] = incident

    async def refresh(self) -> None:
        """Read the store once (raises what the store raises)."""
        now = self.clock()
        since = max(0, int(now * 1000) - HISTORY_MS)
        found = await self.store.list_incidents(since, MAX_READ)
        self.read_at, self.stale_since = now, None
        if not self._started:  # the first read only learns (module doc)
            for incident in found:  # beside what this relay kept while it could not write
                self._remember(incident)
            self._started = True
            return
        for incident in sorted(found, key=lambda i: (i.started_ms, i.id)):
            await self.seen(incident)
        for gone in [
            k
            for k, i in self._known.items()
            if i.state != "open" and i.resolved_ms is not None and i.resolved_ms < since
        ]:
            # Aged out of HISTORY_MS (one not read, but resolved since, may be one this
            # relay resolved and could not write yet: kept, or it would be told again).
            del self._known[gone]

    # --- the loop -----------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> bool:
        """Read the store once; if it fails, keep what is known, marked stale from
        now (:attr:`stale_since`).  Whether it read."""
        try:
            await self.refresh()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store away: keep what is known, marked stale
            if self.stale_since is None:
                self.stale_since = self.clock()
                log.warning("incidents: store unreadable (%r); serving what is known", exc)
            return False
        return True

    async def _forever(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.refresh_s)


async def _call(listener: Listener, event: Event, incident: Incident) -> None:
    """A listener that fails is logged; it never stops the others."""
    try:
        await listener(event, incident)
    except Exception:
        log.exception("incident listener %r failed on %s %s", listener, event, incident.id)
