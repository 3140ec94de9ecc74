"""Monitors: which components a relay's readings say are failing, and when a
failure becomes an automatic incident (PROTOCOL "Incidents and status").

Every relay judges its own readings (core/readings.py) each second
(:func:`judge`): a :class:`Finding` per component that is red now.  An
:class:`AutoIncidents` per relay turns findings into actions:

1. A component red without a break for ``incident_after_ms`` opens an incident
   (``source`` ``auto``) whose ``started_ms`` is when it turned red and whose
   ``opened_ms`` is now: the detection delay is in the record.
2. Its id is derived from the component, the region and the minute it turned red
   (:func:`auto_incident_id`): relays of a region that see one failure open one
   incident, and the store's compare-and-set on revision 1 lets one of them win
   (the others adopt it); an id a resolved incident took gives way to the next of
   the slot.  A relay that cannot reach its store opens it locally under that same
   id and writes it once it can.
3. While an automatic incident of the component and region is open, no other is
   opened: the relay holding it (``holder``) appends an update at once, with the
   new severity, when the failure worsens (a slow store that then fails: major to
   critical; an incident never becomes less severe), when the finding's words
   change (at most once per ``update_every_ms``) and, with the figures of the
   moment, every ``still_every_ms`` while it lasts, and resolves it once the
   component has been green for ``resolve_after_ms``.  Only the holder acts
   (never all relays); if the holder has been missing from the live relays for
   ``takeover_ms`` (heartbeats stop for everyone while the store is away: not at
   once), a live relay that sees the incident takes it over (``TakeOver``), and
   acts from then on.  The holder does not resolve it while another live relay of
   the region judges the component red (``red_elsewhere``).
4. Two open automatic incidents of one component and region (relays whose red
   starts fell in two slots, or that could not reach the store): the newer is
   resolved as continuing in the older, by the relay acting for it.

Pure: readings, the time and the set of live relays are passed in.
"""

from __future__ import annotations

import hashlib
from collections import deque

from msgspec import Struct

from pinrelay.core.incidents import MAX_UPDATES, Component, Incident, Severity
from pinrelay.core.readings import Readings

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANK: dict[Severity, int] = {"minor": 0, "major": 1, "critical": 2}


class Thresholds(Struct, frozen=True, kw_only=True):
    """When a reading is red; the defaults are in DECISIONS ("Monitors")."""

    #: A store probe (one durable write) slower than this is red (major); one that
    #: failed, or has waited longer than ``store_fail_ms``, is red (critical).
    store_slow_ms: int = 2_000
    store_fail_ms: int = 5_000
    #: Fewer links than this fraction of the recent peak is red, once the peak is
    #: at least ``links_min``.
    links_drop: float = 0.5
    links_min: int = 50
    #: The oldest message waiting for a linked device older than this is red.
    lag_ms: int = 30_000
    #: More loads shed (refused links and requests) a second than this is red.
    shed_per_s: float = 50.0
    #: Less free space on the data folder's disk than this is red.
    disk_free_min: int = 256 * 1024 * 1024


class Finding(Struct, frozen=True):
    component: Component
    severity: Severity
    #: What is wrong, in words and rounded figures (an update is appended when it
    #: changes).
    text: str


def judge(
    r: Readings,
    t: Thresholds,
    *,
    peak_links: int,
    connected: bool = True,
    probe_age_ms: int = 0,
    interval_s: float = 1.0,
) -> list[Finding]:
    """The components ``r`` says are red, the worst finding of each.

    ``connected``: the store's connection is up (a cluster's NATS connection);
    ``probe_age_ms``: how long the store's probe in flight has waited (0: none is)."""
    found: list[Finding] = []
    if not connected:
        found.append(Finding("cluster", "critical", f"Relay {r.node} lost its cluster connection"))
    if r.store_ms is None or probe_age_ms >= t.store_fail_ms:
        found.append(Finding("store", "critical", "Messages cannot be stored: store writes fail"))
    elif r.store_ms >= t.store_slow_ms or probe_age_ms >= t.store_slow_ms:
        found.append(Finding("store", "major", "Store writes are slow"))
    if r.disk_free is not None and r.disk_free < t.disk_free_min:
        mib = r.disk_free // (1024 * 1024)
        found.append(Finding("store", "major", f"The store's disk is almost full ({mib} MiB free)"))
    if peak_links >= t.links_min and r.links < peak_links * t.links_drop:
        fell = f"Linked devices fell from {peak_links} to about {_round(r.links)}"
        found.append(Finding("links", "major", fell))
    if r.lag_ms >= t.lag_ms:
        # In whole minutes (the text changing each second would be an update each time).
        late = (
            f"Deliveries are late by over {r.lag_ms // 60_000} min"
            if r.lag_ms >= 60_000
            else "Deliveries are late by up to a minute"
        )
        found.append(Finding("delivery", "major", late))
    if r.shed / max(interval_s, 1e-3) > t.shed_per_s:
        found.append(Finding("delivery", "minor", "The relay is shedding load"))
    worst: dict[Component, Finding] = {}
    for f in found:
        if f.component not in worst or _RANK[f.severity] > _RANK[worst[f.component].severity]:
            worst[f.component] = f
    return list(worst.values())


def _round(n: int) -> int:
    """Two significant figures: an update for each link that comes and goes would be noise."""
    if n < 100:
        return n
    digits = len(str(n)) - 2
    return round(n, -digits)


class Peak:
    """The most links seen in the last ``window_ms`` (the baseline of the links monitor)."""

    def __init__(self, window_ms: int = 600_000) -> None:
        self.window_ms = window_ms
        self._seen: deque[tuple[int, int]] = deque()  # (at, links), links decreasing

    def add(self, at_ms: int, links: int) -> int:
        if self._seen and self._seen[-1][0] > at_ms:  # the clock stepped back
            self._seen = deque((min(at, at_ms), n) for at, n in self._seen)
        while self._seen and self._seen[-1][1] <= links:
            self._seen.pop()
        self._seen.append((at_ms, links))
        while self._seen[0][0] < at_ms - self.window_ms:
            self._seen.popleft()
        return self._seen[0][1]


#: The slots of rule 2: relays' red starts differ by a probe or two, and a slot's
#: edge between them would give two ids (then rule 4 merges them).
SLOT_MS = 60_000


def auto_incident_id(component: Component, region: str, red_since_ms: int, n: int = 0) -> str:
    """Rule 2: the same id on every relay that saw the failure begin in one slot;
    ``n``: the next one, when the slot's earlier ids are taken by resolved incidents."""
    slot = red_since_ms // SLOT_MS
    digest = hashlib.sha256(f"auto|{component}|{region}|{slot}|{n}".encode()).digest()
    value = int.from_bytes(digest[:8], "big") >> 4
    return "I" + "".join(_B32[(value >> shift) & 31] for shift in range(55, -1, -5))


class Open(Struct, frozen=True):
    finding: Finding
    started_ms: int
    #: The opening text: the finding's words and the figures of the moment.
    text: str


class Update(Struct, frozen=True):
    incident: Incident
    text: str
    #: The incident's new severity when the failure worsened (None: unchanged).
    severity: Severity | None = None


class Resolve(Struct, frozen=True):
    incident: Incident
    text: str


class TakeOver(Struct, frozen=True):
    incident: Incident


Action = Open | Update | Resolve | TakeOver


class _Track:
    __slots__ = ("green_since", "last_text", "last_update_ms", "red_since")

    def __init__(self) -> None:
        self.red_since: int | None = None
        self.green_since: int | None = None
        self.last_text: str | None = None
        self.last_update_ms = 0


class AutoIncidents:
    """One relay's rules 1-3 (module doc)."""

    def __init__(
        self,
        node: str,
        region: str,
        *,
        incident_after_ms: int,
        resolve_after_ms: int,
        update_every_ms: int = 60_000,
        still_every_ms: int = 300_000,
        takeover_ms: int = 15_000,
        max_step_ms: int | None = None,
    ) -> None:
        """``max_step_ms``: the most time one step counts (red and green runs,
        updates, missing holders): a wall clock that steps further ahead since the
        last step (NTP, a resumed VM) counts as this much, one that steps back as
        none (None: any step counts in full)."""
        self.node = node
        self.region = region
        self.incident_after_ms = incident_after_ms
        self.resolve_after_ms = resolve_after_ms
        self.update_every_ms = update_every_ms
        self.still_every_ms = still_every_ms
        self.takeover_ms = takeover_ms
        self.max_step_ms = max_step_ms
        self._tracks: dict[Component, _Track] = {}
        #: Since when each incident's holder has been missing from the live relays.
        self._missing: dict[str, int] = {}
        #: The previous step's time (``max_step_ms``).
        self._last_ms: int | None = None

    def _acts(self, incident: Incident, alive: frozenset[str] | None) -> bool:
        """Whether this relay may act for ``incident``: it holds it, or its holder
        is gone (rule 3)."""
        return incident.holder == self.node or alive is None or incident.holder not in alive

    def red_since(self, component: Component) -> int | None:
        track = self._tracks.get(component)
        return None if track is None else track.red_since

    def step(
        self,
        now_ms: int,
        findings: list[Finding],
        open_auto: list[Incident],
        alive: frozenset[str] | None = None,
        figures: str = "",
        *,
        store_ok: bool = True,
        red_elsewhere: frozenset[Component] = frozenset(),
    ) -> list[Action]:
        """What this relay does now.  ``open_auto``: the open automatic incidents of
        this region it knows; ``alive``: the live relays (None: a single relay);
        ``figures``: what is affected, in words, for the texts; ``store_ok``: False
        while the store is away, and with it the heartbeats that say who is alive: no
        holder counts as missing then (its ``takeover_ms`` starts once it is back);
        ``red_elsewhere``: the components other live relays of the region judge red
        (their heartbeats): the holder resolves none of them, its green run starts
        once they are green everywhere."""
        self._rebase(now_ms)
        red = {f.component: f for f in findings}
        if not store_ok:
            self._missing.clear()
        for gone in self._missing.keys() - {i.id for i in open_auto}:
            del self._missing[gone]
        held: dict[Component, Incident] = {}
        actions: list[Action] = []
        for i in sorted(open_auto, key=lambda i: (i.started_ms, i.id)):
            first = held.setdefault(i.component, i)
            if first is not i and self._acts(i, alive):  # rule 4: two of one failure
                actions.append(Resolve(i, f"Continues as incident {first.id}."))
        for component in sorted({*red, *held, *self._tracks}):
            track = self._tracks.setdefault(component, _Track())
            finding = red.get(component)
            if finding is not None:
                track.green_since = None
                if track.red_since is None:
                    track.red_since = now_ms
            else:
                track.red_since = None
                if track.green_since is None:
                    track.green_since = now_ms
            incident = held.get(component)
            if incident is None:
                if finding is not None and now_ms - (track.red_since or now_ms) >= (
                    self.incident_after_ms
                ):
                    text = _with(finding.text, figures)
                    actions.append(Open(finding, track.red_since or now_ms, text))
                    track.last_text, track.last_update_ms = finding.text, now_ms
                continue
            if incident.holder != self.node:
                if store_ok and self._acts(incident, alive):
                    since = self._missing.setdefault(incident.id, now_ms)
                    if now_ms - since >= self.takeover_ms:
                        actions.append(TakeOver(incident))
                else:
                    self._missing.pop(incident.id, None)
                continue
            if finding is None:
                if component in red_elsewhere:
                    track.green_since = None  # not green in the region yet
                elif now_ms - (track.green_since or now_ms) >= self.resolve_after_ms:
                    actions.append(Resolve(incident, _resolved_text(incident, now_ms)))
                continue
            if track.last_text is None:  # taken over, or this relay restarted
                track.last_text, track.last_update_ms = finding.text, incident.updates[-1].at_ms
            if len(incident.updates) >= MAX_UPDATES - 1:
                continue  # full but for its resolving text (core/incidents.py)
            since_update = now_ms - track.last_update_ms
            if _RANK[finding.severity] > _RANK[incident.severity]:  # worse: say so at once
                text = _with(finding.text, figures)
                actions.append(Update(incident, text, finding.severity))
            elif finding.text != track.last_text and since_update >= self.update_every_ms:
                actions.append(Update(incident, _with(finding.text, figures)))
            elif since_update >= self.still_every_ms:
                minutes = round((now_ms - incident.started_ms) / 60_000)
                text = _with(f"Still failing after {minutes} min: {finding.text}", figures)
                actions.append(Update(incident, text))
            else:
                continue
            track.last_text, track.last_update_ms = finding.text, now_ms
        return actions

    def _rebase(self, now_ms: int) -> None:
        """A clock that stepped back, or ahead by more than ``max_step_ms`` since the
        last step: the times kept move with it, so that runs count at most
        ``max_step_ms`` of the step (a red run's start moves too: it is the new
        clock's time of it)."""
        last, self._last_ms = self._last_ms, now_ms
        if last is None or self.max_step_ms is None:
            return
        shift = (now_ms - last) - min(max(now_ms - last, 0), self.max_step_ms)
        if shift == 0:
            return
        for track in self._tracks.values():
            if track.red_since is not None:
                track.red_since += shift
            if track.green_since is not None:
                track.green_since += shift
            if track.last_update_ms:
                track.last_update_ms += shift
        for incident_id in self._missing:
            self._missing[incident_id] += shift


def _with(text: str, figures: str) -> str:
    return f"{text}. {figures}" if figures else text


def _resolved_text(incident: Incident, now_ms: int) -> str:
    minutes = max(1, round((now_ms - incident.started_ms) / 60_000))
    return f"Resolved: {incident.component} is working again (after about {minutes} min)."
