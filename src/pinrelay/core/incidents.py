"""Incidents and the state of the relay's components (PROTOCOL "Incidents and status").

An incident says that one component is not working as it should, since when, and,
in a timeline of updates, what is known.  It is opened by an operator (the relay's
admin key) or, later, by a monitor (``source`` ``auto``); it collects updates while
open and is resolved once.  Rules:

1. An incident is ``open`` until it is resolved; a resolved incident is final: no
   update, no second resolve, never reopened (a new incident is opened instead).
2. Every change is a new revision (``rev`` + 1).  The store keeps a revision only
   if it follows the stored one (Store.put_incident): two writers that read the
   same revision cannot both write, and a stale writer cannot reopen a resolved
   incident.  The loser reads again and re-applies its change (or gets 409).
3. A component's state is the worst of its open incidents' (:data:`STATE_OF`);
   with none it is ``operational``.
4. An incident with no ``tenants`` affects everyone and is public (``/status``);
   one naming tenants is shown to the relay's admin and those tenants' admins only.

Pure: no I/O, no clock (``now_ms`` and ``rand`` are passed in).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Literal

from msgspec import Struct

from pinrelay.core.errors import ErrorCode, PinrelayError

Component = Literal["store", "cluster", "links", "delivery"]
#: The components on the status page, in this order (a fixed list for now).
COMPONENTS: tuple[Component, ...] = ("store", "cluster", "links", "delivery")
Severity = Literal["minor", "major", "critical"]
SEVERITIES: tuple[Severity, ...] = ("minor", "major", "critical")
ComponentState = Literal["operational", "degraded", "outage"]
IncidentState = Literal["open", "resolved"]
Source = Literal["operator", "auto"]

#: What an open incident of each severity makes its component (rule 3).
STATE_OF: dict[Severity, ComponentState] = {
    "minor": "degraded",
    "major": "degraded",
    "critical": "outage",
}
_RANK: dict[ComponentState, int] = {"operational": 0, "degraded": 1, "outage": 2}

#: Longest text of one update, in characters.
MAX_TEXT = 2000
#: Most updates of one incident (the opening text counts as the first).
MAX_UPDATES = 500
#: Most tenants one incident names (more: make it affect everyone).
MAX_TENANTS = 100
#: Characters a text may not hold: controls but tab, line feed and carriage return
#: (most are not allowed in XML 1.0: the Atom feed could not carry them).  The
#: API's schema says the same (api/schemas.py IncidentText).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = r"^I[0-9A-HJKMNP-TV-Z]{12}$"
_ID_RE = re.compile(ID_PATTERN)


def new_incident_id(rand: Callable[[int], bytes]) -> str:
    """``I`` and 12 Crockford base32 digits of ``rand`` (60 bits)."""
    value = int.from_bytes(rand(8), "big") >> 4
    return "I" + "".join(_B32[(value >> shift) & 31] for shift in range(55, -1, -5))


def is_incident_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


class Update(Struct, frozen=True, kw_only=True):
    """One entry of an incident's timeline."""

    at_ms: int
    text: str


class Incident(Struct, frozen=True, kw_only=True):
    id: str
    state: IncidentState
    component: Component
    severity: Severity
    started_ms: int
    #: Where it happens (a region's name); None: everywhere.
    region: str | None = None
    resolved_ms: int | None = None
    #: The timeline, oldest first: the opening text, updates, the resolving text.
    updates: tuple[Update, ...] = ()
    source: Source = "operator"
    #: The tenants affected; empty: every tenant (rule 4).
    tenants: tuple[str, ...] = ()
    #: The revision (rule 2): 1 when opened, one more for each change.
    rev: int = 1
    #: When it was opened, if later than ``started_ms`` (a monitor opens an incident
    #: ``--incident-after`` seconds after the failure started): the detection delay.
    opened_ms: int | None = None
    #: The relay acting for an automatic incident (core/monitors.py rule 3).
    holder: str | None = None

    @property
    def public(self) -> bool:
        return not self.tenants

    def affects(self, tenant: str | None) -> bool:
        """Whether ``tenant``'s admin may see it (None: the relay's admin sees all)."""
        return tenant is None or not self.tenants or tenant in self.tenants


def check_text(text: str) -> str:
    """``text`` if it is fit for an update: 1 to MAX_TEXT characters, no controls
    (CONTROL)."""
    if not text:
        raise PinrelayError("an incident's text may not be empty", ErrorCode.INVALID)
    if len(text) > MAX_TEXT:
        raise PinrelayError(
            f"an incident's text is at most {MAX_TEXT} characters", ErrorCode.INVALID
        )
    if CONTROL.search(text):
        raise PinrelayError(
            "an incident's text may hold no control characters but tab and line breaks",
            ErrorCode.INVALID,
        )
    return text


def open_incident(
    incident_id: str,
    component: Component,
    severity: Severity,
    text: str,
    now_ms: int,
    *,
    region: str | None = None,
    tenants: Iterable[str] = (),
    source: Source = "operator",
    opened_ms: int | None = None,
    holder: str | None = None,
) -> Incident:
    """A new open incident whose timeline starts with ``text`` (at ``opened_ms``,
    when given: a monitor's incident started before it was opened)."""
    if not is_incident_id(incident_id):
        raise PinrelayError(f"not an incident id: {incident_id!r}", ErrorCode.INVALID)
    named = tuple(sorted(set(tenants)))
    if len(named) > MAX_TENANTS:
        raise PinrelayError(f"an incident names at most {MAX_TENANTS} tenants", ErrorCode.INVALID)
    return Incident(
        id=incident_id,
        state="open",
        component=component,
        severity=severity,
        region=region,
        started_ms=now_ms,
        updates=(Update(at_ms=opened_ms or now_ms, text=check_text(text)),),
        source=source,
        tenants=named,
        opened_ms=opened_ms,
        holder=holder,
    )


def _resolved(incident: Incident) -> PinrelayError:
    return PinrelayError(f"incident {incident.id} is resolved (rule 1)", ErrorCode.CONFLICT)


def add_update(
    incident: Incident, text: str, now_ms: int, *, severity: Severity | None = None
) -> Incident:
    """``incident`` with one more update (CONFLICT if resolved; 422 past MAX_UPDATES);
    ``severity``: its new severity, if it changes (a monitor's failure that worsens)."""
    if incident.state == "resolved":
        raise _resolved(incident)
    if len(incident.updates) >= MAX_UPDATES - 1:  # one left for the resolving text
        raise PinrelayError(
            f"an incident holds at most {MAX_UPDATES} updates: resolve it and open another",
            ErrorCode.INVALID,
        )
    update = Update(at_ms=max(now_ms, _last_ms(incident)), text=check_text(text))
    return _next(incident, updates=(*incident.updates, update), severity=severity)


def resolve(incident: Incident, text: str | None, now_ms: int) -> Incident:
    """``incident`` resolved at ``now_ms`` (CONFLICT if it already is), with a last
    update when ``text`` is given."""
    if incident.state == "resolved":
        raise _resolved(incident)
    at = max(now_ms, _last_ms(incident))
    updates = incident.updates
    if text is not None:
        updates = (*updates, Update(at_ms=at, text=check_text(text)))
    return _next(incident, state="resolved", resolved_ms=at, updates=updates)


def take_over(incident: Incident, node: str) -> Incident:
    """``incident`` acted for by ``node`` from now on (its timeline unchanged)."""
    if incident.state == "resolved":
        raise _resolved(incident)
    return _next(incident, updates=incident.updates, holder=node)


def _last_ms(incident: Incident) -> int:
    """Times never go back along the timeline, whatever relay's clock wrote last."""
    return incident.updates[-1].at_ms if incident.updates else incident.started_ms


def _next(
    incident: Incident,
    *,
    updates: tuple[Update, ...],
    state: IncidentState | None = None,
    resolved_ms: int | None = None,
    holder: str | None = None,
    severity: Severity | None = None,
) -> Incident:
    return Incident(
        id=incident.id,
        state=state or incident.state,
        component=incident.component,
        severity=severity or incident.severity,
        region=incident.region,
        started_ms=incident.started_ms,
        resolved_ms=resolved_ms if resolved_ms is not None else incident.resolved_ms,
        updates=updates,
        source=incident.source,
        tenants=incident.tenants,
        rev=incident.rev + 1,
        opened_ms=incident.opened_ms,
        holder=holder if holder is not None else incident.holder,
    )


def follows(stored: Incident | None, new: Incident) -> bool:
    """Whether the store may replace ``stored`` with ``new`` (rule 2): a new incident
    at revision 1, or the next revision of an open one."""
    if stored is None:
        return new.rev == 1
    return stored.state == "open" and new.rev == stored.rev + 1 and new.id == stored.id


def component_states(incidents: Iterable[Incident]) -> list[tuple[Component, ComponentState]]:
    """Each component (COMPONENTS order) and its state from the open ``incidents``."""
    worst: dict[Component, ComponentState] = dict.fromkeys(COMPONENTS, "operational")
    for incident in incidents:
        if incident.state != "open":
            continue
        state = STATE_OF[incident.severity]
        if _RANK[state] > _RANK[worst[incident.component]]:
            worst[incident.component] = state
    return [(c, worst[c]) for c in COMPONENTS]
