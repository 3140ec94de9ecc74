"""Request and response bodies; the OpenAPI components are generated from these."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct, field

from pinrelay.core.channels import ChannelClass, ChannelName
from pinrelay.core.frames import Cursor, Msg, SystemMsg
from pinrelay.core.incidents import (
    MAX_TENANTS,
    MAX_TEXT,
    Component,
    ComponentState,
    IncidentState,
    Severity,
    Source,
)
from pinrelay.core.model import PushFields, Topic
from pinrelay.core.readings import Readings
from pinrelay.core.tenants import Quotas, TenantId, TenantName
from pinrelay.core.webhooks import MAX_SECRET, MAX_TO, MAX_URL, MIN_SECRET
from pinrelay.core.webhooks import EventKind as WebhookEventKind
from pinrelay.core.webhooks import Kind as WebhookKind
from pinrelay.core.webpush import SubscriptionView

Label = Annotated[str, Meta(min_length=1, max_length=200)]
KeyName = Annotated[str, Meta(min_length=1, max_length=100)]


class Info(Struct, kw_only=True):
    version: str
    node: str
    region: str
    link_urls: list[str]


class Health(Struct, kw_only=True):
    status: str


class DeviceCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    label: Label | None = None
    #: The tenant it belongs to: only the relay's admin key names one (default: the
    #: key's own tenant; ``default`` for the relay's admin key).
    tenant: TenantId | None = None


class DeviceCreated(Struct, kw_only=True):
    pin: str
    token: str
    label: str | None
    created_at: str
    link_urls: list[str]


class _DeviceFields(Struct, kw_only=True):
    """What a device's view and its export both open with."""

    pin: str
    #: Its tenant; null: none (its tenant was deleted, or it moved out).
    tenant: str | None
    label: str | None
    created_at: str
    last_seen: str | None


class DeviceView(_DeviceFields, kw_only=True):
    online: bool
    backlog: int
    last_cursor: int
    acked_cursor: int


class TokenRotated(Struct, kw_only=True):
    pin: str
    token: str


class PushResult(Struct, kw_only=True):
    id: str
    #: cursor and expires_at are null when a ttl=0 message was dropped (device offline).
    cursor: int | None
    expires_at: str | None
    dropped: bool = False


class BatchItemResult(Struct, kw_only=True):
    to: str
    status: int
    id: str | None = None
    cursor: int | None = None
    expires_at: str | None = None
    dropped: bool = False
    error: str | None = None


class BatchResult(Struct, kw_only=True):
    results: list[BatchItemResult]


KeyScope = Literal["push", "devices", "broadcast", "admin"]


class TenantKeyCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: KeyName
    scope: KeyScope


class KeyCreate(TenantKeyCreate, kw_only=True, forbid_unknown_fields=True):
    #: Only the relay's admin key names a tenant (default: the caller's own tenant;
    #: ``default`` for the relay's admin key).
    tenant: TenantId | None = None


class KeyCreated(Struct, kw_only=True):
    id: str
    name: str
    scope: str
    key: str
    created_at: str
    tenant: str


class KeyView(Struct, kw_only=True):
    id: str
    name: str
    scope: str
    created_at: str
    revoked: bool
    tenant: str


class KeyList(Struct, kw_only=True):
    keys: list[KeyView]


class Inbox(Struct, kw_only=True):
    #: The news of incidents affecting the device (PROTOCOL "System messages"):
    #: not stored, no cursor, never acked; current when the answer is made.
    system: list[SystemMsg] = field(default_factory=list)
    messages: list[Msg]
    #: The cursor to pass as ``after`` next time (and to ack when done).
    cursor: int


class AckBody(Struct, kw_only=True, forbid_unknown_fields=True):
    cursor: Cursor


class AckBodyWire(Struct, kw_only=True, forbid_unknown_fields=True):
    """AckBody as decoded: JSON Schema's "integer" admits 5.0, so the API does too."""

    cursor: Annotated[float, Meta(ge=0, le=2**53 - 1)]


# --- contacts and chat (PROTOCOL "Contacts", "Chat") --------------------------------
PinField = Annotated[str, Meta(pattern=r"^[0-9A-F]{8}$")]


class ContactInvite(Struct, kw_only=True, forbid_unknown_fields=True):
    pin: PinField


class ContactAnswer(Struct, kw_only=True):
    pin: str
    #: invited, pending, accepted, blocked; "declined" after a decline.
    state: str


class ContactView(Struct, kw_only=True):
    pin: str
    state: Literal["invited", "pending", "accepted", "blocked"]
    since: str


class ContactList(Struct, kw_only=True):
    contacts: list[ContactView]


#: A chat text: 1 to 32 KiB of UTF-8 (the byte bound is checked apart: 413), without
#: control characters (C0, DEL, C1) but tab, line feed and carriage return
#: (core/chat.py).
ChatText = Annotated[
    str,
    Meta(
        min_length=1,
        pattern="^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]*$",
        description="1 B to 32 KiB of UTF-8 (more: 413)",
    ),
]


class ChatSend(Struct, kw_only=True, forbid_unknown_fields=True):
    #: A contact's PIN or a group id.
    to: Annotated[str, Meta(pattern="^([0-9A-F]{8}|G[0-9A-HJKMNP-TV-Z]{12})$")]
    text: ChatText
    client_id: Annotated[str, Meta(min_length=1, max_length=64)]
    #: Seconds; default a week.
    ttl: Annotated[float, Meta(ge=1, le=30 * 24 * 3600)] | None = None


class ChatSent(Struct, kw_only=True):
    id: str
    to: str


class ReadBody(Struct, kw_only=True, forbid_unknown_fields=True):
    ids: Annotated[list[str], Meta(min_length=1, max_length=256)]


class ReadDone(Struct, kw_only=True):
    #: Read receipts stored: ids delivered to this device and not read before.
    receipts: int


#: A group's name: 1 to 100 characters, no control character at all (C0, DEL, C1).
GroupName = Annotated[
    str, Meta(min_length=1, max_length=100, pattern="^[^\\x00-\\x1f\\x7f-\\x9f]*$")
]


class GroupCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: GroupName
    members: Annotated[list[PinField], Meta(max_length=1000)]


class GroupMembers(Struct, kw_only=True, forbid_unknown_fields=True):
    pins: Annotated[list[PinField], Meta(min_length=1, max_length=1000)]


class GroupView(Struct, kw_only=True):
    group: str
    name: str
    creator: str
    members: list[str]
    #: PINs asked for that are not the creator's accepted contacts: not added.
    ignored: list[str] = []


class GroupList(Struct, kw_only=True):
    groups: list[GroupView]


# --- pairing (PROTOCOL "Pairing") ---------------------------------------------------
class PairingCreated(Struct, kw_only=True):
    pin: str
    #: Ten Crockford base32 digits in two groups, e.g. "7KQ2M-X9D4T"; shown once.
    code: str
    expires_at: str


class PairingRedeem(Struct, kw_only=True, forbid_unknown_fields=True):
    #: As typed: any case, spaces and hyphens ignored, I/L read as 1 and O as 0.
    code: Annotated[str, Meta(min_length=1, max_length=64)]


class PairingRedeemed(Struct, kw_only=True):
    pin: str
    #: The device's new token (the old one stops working).
    token: str
    link_urls: list[str]


# --- tenants (PROTOCOL "Tenants") ---------------------------------------------------
class TenantCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: TenantName
    quotas: Quotas = Quotas()


class TenantChange(Struct, kw_only=True, forbid_unknown_fields=True):
    """What ``PATCH /v1/tenants/{id}`` changes; an absent field is left as it is."""

    name: TenantName | None = None
    suspended: bool | None = None
    quotas: Quotas | None = None


class TenantView(Struct, kw_only=True):
    id: str
    name: str
    created_at: str
    suspended: bool
    quotas: Quotas
    #: Set once the tenant was deleted (its id is never used again).
    deleted_at: str | None = None


class TenantList(Struct, kw_only=True):
    tenants: list[TenantView]


class GrantCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    tenant: TenantId


class GrantList(Struct, kw_only=True):
    #: The tenants besides the device's own that may push to it.
    tenants: list[str]


# --- portability (PROTOCOL "Portability") ---------------------------------------------
class MoveRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    #: The tenant the device asks to move to (it must accept).
    tenant: TenantId


class MoveView(Struct, kw_only=True):
    """A device's pending request to move to ``tenant``, until ``expires_at``."""

    pin: str
    tenant: str
    expires_at: str


class MoveDone(Struct, kw_only=True):
    """The device belongs to ``tenant`` now, with its data, cursor and token."""

    pin: str
    tenant: str


class ExportedDevice(_DeviceFields, kw_only=True):
    #: The highest cursor stored for it, and the highest it acknowledged.
    last_cursor: int
    acked_cursor: int


class Export(Struct, kw_only=True):
    """Everything the relay holds about one device (``GET /v1/devices/{pin}/export``).

    ``messages`` are its undelivered messages after ``?after=`` in cursor order, as
    the link's ``msg`` frames; at most ``?limit=`` of them and about 4 MiB of data:
    ``truncated`` says more follow, fetched with ``?after=<cursor>``.
    """

    format: Literal["pinrelay-export/1"]
    exported_at: str
    device: ExportedDevice
    contacts: list[ContactView]
    groups: list[GroupView]
    #: Web Push subscriptions, with the keys the device gave (its own).
    subscriptions: list[SubscriptionView]
    #: Tenants the device lets push to it.
    grants: list[str]
    #: Its pending move to another tenant, if any.
    move: MoveView | None
    #: The ids of the broadcast channels it joined.
    channels: list[str]
    #: The channel classes whose broadcasts it refuses.
    refused: list[ChannelClass]
    messages: list[Msg]
    truncated: bool
    #: The last exported message's cursor (or ``after``): where the next page starts.
    cursor: int


# --- channels and broadcasts (PROTOCOL "Channels and broadcasts") ------------------
class ChannelCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: ChannelName
    klass: ChannelClass = field(name="class")


class BroadcastCreate(PushFields, kw_only=True, forbid_unknown_fields=True):
    """A broadcast's body: a push's, but it waits for its members (no ttl 0)."""

    ttl: Annotated[float, Meta(ge=1)]


class ChannelView(Struct, kw_only=True):
    id: str
    name: str
    klass: ChannelClass = field(name="class")
    tenant: str
    created_at: str


class ChannelList(Struct, kw_only=True):
    channels: list[ChannelView]


class BroadcastView(Struct, kw_only=True):
    """A broadcast and its fan-out so far (``done_at`` null: still going)."""

    id: str
    channel: str
    created_at: str
    expires_at: str
    #: Members the fan-out reached so far: ``stored`` + ``skipped``.
    members: int
    stored: int
    #: Members that refuse the channel's class, or had their day's marketing.
    skipped: int
    #: Sends to linked devices (a resend after a lost ack counts again) and acks,
    #: as relays counted them (a relay that dies loses its last second of counts).
    delivered: int
    acked: int
    done_at: str | None


class DeviceChannel(Struct, kw_only=True):
    id: str
    name: str
    klass: ChannelClass = field(name="class")
    joined: bool


class DeviceChannels(Struct, kw_only=True):
    """The channels of the device's tenant, which of them it joined, and the
    classes it refuses."""

    channels: list[DeviceChannel]
    refused: list[ChannelClass]


class AuditLine(Struct, kw_only=True):
    at: str
    tenant: str
    #: The key's id; ``admin``: the relay's admin key.
    key: str
    action: str
    channel: str
    broadcast: str | None = None
    #: For a broadcast: members it was stored for so far, and whether it is done.
    stored: int | None = None
    done: bool | None = None


class AuditLog(Struct, kw_only=True):
    entries: list[AuditLine]


# --- incidents and status (PROTOCOL "Incidents and status") --------------------------
#: An incident's text: 1 to 2,000 characters, no control characters but tab, line
#: feed and carriage return (core/incidents.py CONTROL).
IncidentText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TEXT,
        pattern="^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]*$",
    ),
]


class IncidentCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    component: Component
    severity: Severity
    text: IncidentText
    #: Where (a region's name); none: everywhere.
    region: Topic | None = None
    #: The tenants affected; none: every tenant, and the incident is on /status.
    tenants: Annotated[list[TenantId], Meta(max_length=MAX_TENANTS)] = field(default_factory=list)


class IncidentUpdateCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    text: IncidentText


class IncidentResolve(Struct, kw_only=True, forbid_unknown_fields=True):
    text: IncidentText | None = None


class IncidentUpdateView(Struct, kw_only=True):
    at: str
    text: str


class StatusIncident(Struct, kw_only=True):
    """An incident as ``/status.json`` shows it."""

    id: str
    state: IncidentState
    component: Component
    severity: Severity
    started_at: str
    resolved_at: str | None
    updates: list[IncidentUpdateView]


class IncidentView(StatusIncident, kw_only=True):
    """An incident as its admins see it: what the status page shows, and more."""

    region: str | None
    source: Source
    #: The tenants affected; empty: every tenant.
    tenants: list[str]
    #: When it was opened: later than ``started_at`` when a monitor opened it after
    #: the failure began (the detection delay).
    opened_at: str
    #: The relay acting for an automatic incident; null for an operator's.
    holder: str | None = None


class IncidentList(Struct, kw_only=True):
    incidents: list[IncidentView]


#: A share in percent, two decimals at most (core/uptime.py rule 5).
Percent = Annotated[float, Meta(ge=0, le=100)]


class StatusDay(Struct, kw_only=True):
    """One UTC day of a component on ``/status.json`` (core/uptime.py)."""

    #: ``YYYY-MM-DD`` (UTC).
    date: Annotated[str, Meta(pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    #: The worst state it had that day.
    state: ComponentState
    #: Percent of the day (today: until now) not in outage, rounded down.
    uptime: Percent


class StatusComponent(Struct, kw_only=True):
    name: Component
    state: ComponentState
    #: Percent of the last 90 UTC days (today until now) not in outage, rounded down
    #: to two decimals (PROTOCOL "Incidents and status").
    uptime_90d: Percent = 100.0
    #: The 90 days, oldest first; the last is today.
    days: list[StatusDay] = field(default_factory=list)


class Status(Struct, kw_only=True):
    components: list[StatusComponent]
    incidents: list[StatusIncident]
    #: True while this relay cannot read its store: what it serves is what it knew.
    stale: bool = False
    #: When this relay last read its store (RFC 3339); null before its first read.
    as_of: str | None = None


class MonitorFinding(Struct, kw_only=True):
    """A component a monitor of this relay finds failing now."""

    component: Component
    severity: Severity
    text: str
    #: Since when it is red, without a break.
    red_since: str


class MonitorsView(Struct, kw_only=True):
    """What this relay's monitors see (``GET /v1/monitors``)."""

    node: str
    region: str
    #: The last readings (null until the first, a second after start).
    readings: Readings | None
    red: list[MonitorFinding]
    #: Incidents opened or changed here while the store was away, not yet written.
    unwritten: list[str]


# --- incident reports (core/report.py; PROTOCOL "Incidents and status") ------------
class ReportRegion(Struct, kw_only=True):
    region: str
    #: Relays of the region that recorded figures during the incident.
    relays: int
    #: How long at least one of them had a delivery lag above ``delayed_over_ms``.
    impaired_ms: int


class ReportDelays(Struct, kw_only=True):
    """Messages delivered during the incident by delivery delay (accepted to written)."""

    #: Upper bounds of the buckets (ms); ``counts`` has one more, for the rest.
    bounds_ms: list[int]
    counts: list[int]
    #: Upper bound of the bucket holding the percentile; null: above the last bound,
    #: or nothing delivered.
    p50_ms: int | None
    p90_ms: int | None
    p99_ms: int | None


class ReportNotification(Struct, kw_only=True):
    at: str
    event: Literal["opened", "updated", "resolved"]
    #: ``status`` (the status page and its feed), ``devices``, ``webhook``...
    channel: str
    count: int | None = None
    text: str | None = None


class IncidentReport(Struct, kw_only=True):
    """What an incident cost, from the figures the relays recorded (core/report.py)."""

    incident: str
    state: IncidentState
    component: Component
    severity: Severity
    region: str | None
    started_at: str
    opened_at: str
    #: From the start of the failure to the incident's opening.
    detection_delay_ms: int
    #: null: still open (the figures run to now).
    ended_at: str | None
    duration_ms: int
    regions: list[ReportRegion]
    #: Device links held by the relays in scope when it started (an estimate).
    devices_affected: int
    #: The tenants named by the incident, or "all".
    tenants_affected: list[str] | Literal["all"]
    #: Messages delivered during the incident, and those delivered later than
    #: ``delayed_over_ms`` after they were accepted.
    delivered: int
    delayed: int
    delayed_over_ms: int
    delays: ReportDelays
    #: Messages that expired undelivered during the incident (should be 0).
    expired: int
    notifications: list[ReportNotification]
    #: Readings the figures come from, and the relays that recorded them.
    readings: int
    relays: list[str]
    #: The chart of backlog and delivery lag over time (PNG; ``report.svg`` too).
    chart: str


# --- webhooks (PROTOCOL "Webhooks", core/webhooks.py) ---------------------------------
WebhookUrl = Annotated[str, Meta(min_length=8, max_length=MAX_URL)]
WebhookSecret = Annotated[str, Meta(min_length=MIN_SECRET, max_length=MAX_SECRET)]


class WebhookCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    #: Where deliveries are posted: an http or https URL.
    url: WebhookUrl
    #: Signs each delivery (HMAC-SHA256); never shown again.
    secret: WebhookSecret
    events: Annotated[list[WebhookEventKind], Meta(min_length=1, max_length=1)]
    #: ``json`` (the delivery as documented), ``sms`` (``{"to", "text"}``) or ``chat``
    #: (``{"text"}``, Slack and Mattermost incoming webhooks).
    kind: WebhookKind = "json"
    #: The SMS recipient (kind ``sms``; default: the url's ``to`` query parameter).
    to: Annotated[str, Meta(min_length=1, max_length=MAX_TO)] | None = None


class WebhookView(Struct, kw_only=True):
    id: str
    #: Its tenant; null: the relay's admin made it (it hears every incident).
    tenant: str | None
    url: str
    events: list[WebhookEventKind]
    kind: WebhookKind
    to: str | None
    created_at: str


class WebhookList(Struct, kw_only=True):
    webhooks: list[WebhookView]
