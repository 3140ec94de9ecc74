"""System messages: what a relay's linked devices hear of incidents (PROTOCOL "System
messages").

A ``system`` message is derived from an incident on the board (incident_board.py),
never stored per device: the store may be what is down.  Rules:

1. A device is affected by an incident that names no tenants, or names the device's
   tenant; and that has no region, or this relay's region (``LinkConfig.region``).
2. Every relay hears every new revision (``IncidentBoard.on_event``) and writes the
   frame to each of its own linked devices affected; ``opened`` and ``resolved`` at
   once, ``updated`` at most once per ``every_s`` per incident (counted from the last
   opened or updated frame this relay sent for it).  A held-back update goes out
   when the interval allows, with the incident's newest revision then.
3. At ``hello``, after ``welcome`` and before any stored message, a device gets one
   frame per incident affecting it: each open one at its newest revision, and those
   resolved in the last ``HELLO_RESOLVED_MS`` with their ``resolved`` frame.
4. The frame is a ``msg`` (frames.SystemMsg): ``id`` is ``<incident id>.<n>``, n
   the changes told so far (timeline entries, plus one once resolved: a take-over's
   revision, which changes neither, keeps it), the same on every relay and every
   time (clients drop an id they have seen);
   ``cursor`` null (no window slot, never acked), ``topic`` and ``from`` null,
   ``urgency`` high, ``sent_at`` the event's time, ``expires_at`` a day later.
5. A link whose outgoing buffer is over the high-water mark (it does not read) is
   not written to: it is marked, and once it drains gets what rule 3 gives (one
   flag per link, no queue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

import msgspec

from pinrelay.core import frames
from pinrelay.core.incidents import Incident
from pinrelay.core.timefmt import rfc3339
from pinrelay.incident_board import Event, IncidentBoard

log = logging.getLogger("pinrelay.incidents")

#: A device that links gets the ``resolved`` frame of incidents resolved this recently.
HELLO_RESOLVED_MS = 3_600_000
#: ``expires_at`` of a system message: this long after its event.
EXPIRES_MS = 86_400_000
#: The text of a ``resolved`` frame when the resolve gave none.
RESOLVED_TEXT = "Resolved."
#: What this relay told of one incident, kept for its report: at most this many.
MAX_TOLD = 200


class Told(NamedTuple):
    """One event this relay told its links of (for the incident's report)."""

    at_ms: int
    event: Event
    #: Links written to (or marked, when paused: they get it once they drain).
    links: int
    text: str


class SystemLink(Protocol):
    """What this module needs of a link (link/server.py LinkProtocol)."""

    @property
    def linked(self) -> bool: ...  # authenticated: ``welcome`` was sent

    @property
    def tenant(self) -> str | None: ...

    def send_system(self, data: bytes) -> None: ...


def affects(incident: Incident, tenant: str | None, region: str) -> bool:
    """Rule 1."""
    if incident.region is not None and incident.region != region:
        return False
    return not incident.tenants or (tenant is not None and tenant in incident.tenants)


def message_id(incident: Incident) -> str:
    """Rule 4: one id per state and timeline, whatever revision carries them."""
    told = len(incident.updates) + (1 if incident.state == "resolved" else 0)
    return f"{incident.id}.{told}"


def event_now(incident: Incident) -> Event:
    """What the incident's state and timeline say (not its revision: a take-over's
    revision of a new incident is still its opening)."""
    if incident.state == "resolved":
        return "resolved"
    return "opened" if len(incident.updates) <= 1 else "updated"


def system_frame(incident: Incident, event: Event) -> bytes:
    """The ``msg`` frame telling of ``incident`` at its revision (rule 4), encoded."""
    return frames.encode(system_msg(incident, event))


def system_msg(incident: Incident, event: Event) -> frames.SystemMsg:
    """The ``msg`` frame telling of ``incident`` at its revision (rule 4)."""
    last = incident.updates[-1] if incident.updates else None
    if event == "resolved":
        at = incident.resolved_ms or incident.started_ms
        # A resolve with a text adds an entry at resolved_ms; without one, say so.
        resolving = last is not None and last.at_ms == at and len(incident.updates) > 1
        text = last.text if resolving and last is not None else RESOLVED_TEXT
    elif event == "opened" or last is None:
        first = incident.updates[0] if incident.updates else None
        at = first.at_ms if first is not None else incident.started_ms
        text = first.text if first is not None else ""
    else:
        at, text = last.at_ms, last.text
    data = {
        "incident": incident.id,
        "event": event,
        "text": text,
        "component": incident.component,
        "severity": incident.severity,
    }
    return frames.SystemMsg(
        id=message_id(incident),
        data=msgspec.Raw(msgspec.json.encode(data)),
        sent_at=rfc3339(at),
        expires_at=rfc3339(at + EXPIRES_MS),
    )


class SystemNotices:
    """Tells this relay's links of incidents (rules 2, 3 and 5)."""

    def __init__(
        self,
        board: IncidentBoard,
        links: Callable[[], Iterable[SystemLink]],
        *,
        region: str,
        clock: Callable[[], float],
        every_s: float,
    ) -> None:
        self.board = board
        self._links = links
        self.region = region
        self.clock = clock
        self.every_s = every_s
        #: Per incident: when this relay last sent its opened or updated frame, and
        #: which message id.
        self._last: dict[str, tuple[float, str]] = {}
        #: Per incident: the timer of an update held back (rule 2).
        self._held: dict[str, asyncio.TimerHandle] = {}
        #: Per incident the board knows: what this relay told (``told``).
        self._told: dict[str, list[Told]] = {}
        board.on_event.append(self.on_event)

    # --- rule 2 -----------------------------------------------------------
    async def on_event(self, event: Event, incident: Incident) -> None:
        iid = incident.id
        event = event_now(incident)
        if event == "resolved":
            held = self._held.pop(iid, None)
            if held is not None:
                held.cancel()
            self._last.pop(iid, None)
            self._tell(incident, event)
            return
        now = self.clock()
        last = self._last.get(iid)
        if event == "opened" or last is None or now - last[0] >= self.every_s:
            held = self._held.pop(iid, None)
            if held is not None:
                held.cancel()
            self._last[iid] = (now, message_id(incident))
            self._tell(incident, event)
        elif iid not in self._held:
            delay = last[0] + self.every_s - now
            loop = asyncio.get_running_loop()
            self._held[iid] = loop.call_later(delay, self._release, iid)

    def _release(self, iid: str) -> None:
        """A held-back update's interval is over: the newest revision goes out."""
        self._held.pop(iid, None)
        incident = self.board.get(iid)
        last = self._last.get(iid)
        if incident is None or incident.state != "open":
            self._last.pop(iid, None)
            return
        if last is not None and message_id(incident) == last[1]:
            return  # nothing new since (a take-over's revision)
        self._last[iid] = (self.clock(), message_id(incident))
        self._tell(incident, event_now(incident))

    def _tell(self, incident: Incident, event: Event) -> None:
        if incident.region is not None and incident.region != self.region:
            return
        msg = system_msg(incident, event)
        data = frames.encode(msg)
        told = 0
        for link in list(self._links()):
            if link.linked and affects(incident, link.tenant, self.region):
                link.send_system(data)
                told += 1
        log.info("incident %s %s (rev %d): told %d links", incident.id, event, incident.rev, told)
        text = msgspec.json.decode(msg.data)["text"]
        kept = self._told.setdefault(incident.id, [])
        kept.append(Told(int(self.clock() * 1000), event, told, text))
        del kept[:-MAX_TOLD]
        for gone in [i for i in self._told if self.board.get(i) is None]:
            del self._told[gone]  # aged off the board

    def told(self, incident_id: str) -> list[Told]:
        """What this relay told its links of the incident, oldest first (kept in
        memory while the board knows the incident; a restart forgets it)."""
        return list(self._told.get(incident_id, ()))

    # --- rules 3 and 5 ----------------------------------------------------
    def current(self, tenant: str | None) -> list[frames.SystemMsg]:
        """What a device of ``tenant`` gets when it links (rule 3), oldest incident
        first; also the inbox's ``system`` (api/inbox.py)."""
        now_ms = int(self.clock() * 1000)
        found: list[frames.SystemMsg] = []
        for incident in reversed(self.board.incidents()):
            if not affects(incident, tenant, self.region):
                continue
            if incident.state == "open":
                found.append(system_msg(incident, event_now(incident)))
            elif (incident.resolved_ms or 0) >= now_ms - HELLO_RESOLVED_MS:
                found.append(system_msg(incident, "resolved"))
        return found

    def hello(self, link: SystemLink) -> None:
        """``link`` was just welcomed (or drained its buffer): what rule 3 gives."""
        for msg in self.current(link.tenant):
            link.send_system(frames.encode(msg))

    def close(self) -> None:
        for held in self._held.values():
            held.cancel()
        self._held.clear()
