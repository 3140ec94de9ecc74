"""The storage contract every engine fulfils (tests/store/test_contract.py).

The link, the API and delivery talk only to this protocol, so the JetStream
engine fits without changes to them.  "Durable" means: when an awaited write
returns, the data survives a crash of the process and of the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

from pinrelay.core.channels import (
    AuditEntry,
    Broadcast,
    BroadcastCounts,
    Channel,
    ChannelClass,
)
from pinrelay.core.credits import ServiceLevel
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import Incident
from pinrelay.core.ledger import Ledger
from pinrelay.core.makegood import Code
from pinrelay.core.model import Accepted, ApiKey, Device, NewMessage, StoredMessage
from pinrelay.core.readings import Readings
from pinrelay.core.social import Action, State, Transition
from pinrelay.core.tenants import DEFAULT_TENANT, Tenant
from pinrelay.core.webhooks import OutboxEntry, Webhook


class StoreClosed(PinrelayError):
    """The store is closed or failing: nothing was stored; answer 503, retry later."""

    code = ErrorCode.OVERLOADED


class Rejected(msgspec.Struct, frozen=True):
    """One item of an append that was not stored, and why."""

    pin: str
    reason: str
    id: str | None = None


#: How long relays' recorded figures are kept (Store.put_readings): 90 days.
FIGURES_KEEP_MS = 90 * 86_400_000
#: How long a day's delays per tenant are kept (Store.put_delay_day): 400 days.
DELAY_DAYS_KEEP_MS = 400 * 86_400_000

#: The reason of a message for a PIN that has no device.
UNKNOWN_DEVICE = "unknown device"
#: The reason of a receipt not stored because it was before (Store.append's
#: ``unread`` and ``read`` where receipts are atomic).
RECEIPT_STORED = "receipt stored before"
#: The reason of a ttl=0 message that was not stored because its device was offline.
DROPPED_OFFLINE = "dropped: ttl is 0 and the device is offline"


class AppendResult(msgspec.Struct, array_like=True):
    """One appended message's outcome as engines keep it (for idempotent replays) and
    pass it around: stored (``cursor``) or not (``reason``)."""

    pin: str
    id: str | None = None
    cursor: int = 0
    expires_ms: int = 0
    reason: str | None = None


def to_results(results: Sequence[AppendResult]) -> list[Accepted | Rejected]:
    return [
        Rejected(r.pin, r.reason, r.id)
        if r.reason is not None
        else Accepted(r.id or "", r.pin, r.cursor, r.expires_ms)
        for r in results
    ]


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """Scopes an ``Idempotency-Key`` header and fingerprints the request body."""

    key: str
    fingerprint: str
    #: When the key was first used; it is remembered 24 h from then.
    created_ms: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    devices: int
    #: Stored: not yet acknowledged (expired ones until they are swept); the cluster
    #: engine also counts acknowledged ones until their TTL removes them.
    messages: int


class Contact(msgspec.Struct, frozen=True):
    """One entry of a device's contacts (core/social.py)."""

    pin: str
    state: State
    since_ms: int


class Unread(msgspec.Struct, frozen=True):
    """A chat message delivered to ``reader`` and not read yet: whom a ``read`` tells.

    Kept until it is read or ``expires_ms``; ``group`` is the group it was sent to.
    """

    reader: str
    id: str
    sender: str
    expires_ms: int
    group: str | None = None


class Group(msgspec.Struct, frozen=True):
    """A chat group: its members (the creator among them), by PIN."""

    id: str
    name: str
    creator: str
    members: list[str]
    created_ms: int


#: Most members a group may have, its creator included.
MAX_GROUP = 1000


class Redemption(msgspec.Struct, frozen=True):
    """What redeeming a pairing code found (Store.redeem_pairing).

    ``redeemed``: this call used the code, for ``pin``; ``used``: an earlier call
    did; ``expired``: it was not used in time; ``replaced``: a newer code was made for
    the device before this one was used; ``unknown``: no such code (never made, or
    forgotten an hour after it expired).
    """

    outcome: Literal["redeemed", "used", "expired", "replaced", "unknown"]
    pin: str | None = None


#: The longest period a budget (Store.take_budget) may have: the cluster's bucket of
#: budgets forgets a key this long after its last try.
BUDGET_PERIOD_MAX_MS = 3600 * 1000


def check_budget(key: str, limit: int, period_ms: int) -> None:
    """INVALID unless Store.take_budget's arguments are within its contract."""
    ok_key = 0 < len(key) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    if not ok_key or limit < 1 or not 0 < period_ms <= BUDGET_PERIOD_MAX_MS:
        raise PinrelayError(f"budget {key[:64]!r}: bad key, limit or period", ErrorCode.INVALID)


#: How long a used or expired pairing code is remembered after its expiry, so that
#: trying it again says "used" or "expired" rather than "unknown".
PAIRING_KEEP_MS = 3600 * 1000


class Subscription(msgspec.Struct, frozen=True):
    """A Web Push subscription (PROTOCOL "Web Push"): pushes to ``/push/<id>`` go to
    ``pin``'s device.  ``id`` is 22 base64url characters (132 random bits).

    ``p256dh``/``auth`` are the device's public encryption key and auth secret
    (base64url), kept to echo them; ``vapid_key`` is the application server's public
    key the subscription is restricted to.  A deleted subscription is kept as a
    tombstone (``deleted_ms``) for SUBSCRIPTION_GONE_KEEP_MS, so pushes get 410.
    """

    id: str
    pin: str
    created_ms: int
    p256dh: str | None = None
    auth: str | None = None
    vapid_key: str | None = None
    deleted_ms: int | None = None


class PushReceipt(msgspec.Struct, frozen=True):
    """A Web Push message's delivery, kept for the sender's receipt subscription
    (RFC 8030 §6; pinrelay/webpush.py) until ``expires_ms``.  ``key`` is
    ``core.webpush.receipt_key(subscription, message id)``."""

    key: str
    state: Literal["delivered"]
    at_ms: int
    expires_ms: int


#: How long a push receipt is kept after the delivery it reports.
PUSH_RECEIPT_KEEP_MS = 24 * 3600 * 1000

#: Most live subscriptions one device may hold.
MAX_SUBSCRIPTIONS = 100
#: How long a deleted subscription still answers 410 Gone (then 404).
SUBSCRIPTION_GONE_KEEP_MS = 30 * 24 * 3600 * 1000


class Move(msgspec.Struct, frozen=True):
    """A device's request to move to another tenant (PROTOCOL "Portability"), kept on
    the device until that tenant accepts it, the device withdraws it or asks for
    another, or ``expires_ms`` passes (then it is ignored, and replaced by the next)."""

    tenant: str
    expires_ms: int


#: How long a move request waits for the receiving tenant's acceptance.
MOVE_KEEP_MS = 7 * 24 * 3600 * 1000

#: Most tenants one device may grant pushes to.
MAX_GRANTS = 32

#: Most entries a device's contacts may hold (an invitation to a stranger included).
MAX_CONTACTS = 5000

#: Called after each commit with (seconds it took, writes in the batch).
CommitObserver = Callable[[float, int], None]


class Store(Protocol):
    #: Whether :meth:`append` stores its ``unread`` and ``read`` in the messages' own
    #: transaction, each receipt only once (SQLite); the cluster's are other streams.
    atomic_receipts: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def healthy(self) -> bool:
        """Whether the store can take writes now (``/readyz``; cheap, no I/O)."""
        ...

    # --- tenants (core/tenants.py) ----------------------------------------------
    async def create_tenant(self, tenant: Tenant) -> None:
        """Store a new tenant (durable, seen by every relay).  CONFLICT if its id is
        taken, by a live tenant or a tombstone.  A store holds the ``default`` tenant
        from its first open on (the migration that made existing data its own)."""
        ...

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """The tenant, or its tombstone (``deleted_ms`` set); None if there never was
        one.  Asked on every call with a key: keep it cheap (an engine may cache, but
        a suspension or deletion must be seen by every relay within a second or so)."""
        ...

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, tombstones included, by id."""
        ...

    async def update_tenant(self, tenant: Tenant) -> bool:
        """Replace a live tenant's name, suspension and quotas (by ``tenant.id``);
        False if there is no live tenant with that id.  Setting ``deleted_ms`` makes
        it a tombstone for good: its devices keep their data and count as tenant-less
        (a device's ``tenant`` still names it; edges resolve it)."""
        ...

    # --- devices -------------------------------------------------------------
    async def create_device(
        self,
        pin: str,
        token_hash: str,
        label: str | None,
        now_ms: int,
        tenant: str | None = DEFAULT_TENANT,
        max_devices: int | None = None,
    ) -> Device | None:
        """Create a device of ``tenant``; None if the PIN is taken.

        ``max_devices``: the tenant's devices quota; if it holds that many already,
        RATE_LIMITED naming the quota and nothing made.  Creates racing on several
        relays never take a tenant past it."""
        ...

    async def set_device_tenant(self, pin: str, tenant: str | None) -> bool:
        """Move the device to ``tenant`` (None: no tenant), with its data and cursor,
        and drop its grants and channel memberships (its refusals stay); False if
        there is no such device."""
        ...

    async def request_move(self, pin: str, move: Move | None) -> bool:
        """Keep ``move`` as the device's pending move request, replacing any other
        (None: withdraw it); durable, seen by every relay.  False if there is no such
        device.  Deleting the device forgets it."""
        ...

    async def pending_move(self, pin: str) -> Move | None:
        """The device's move request as kept (expired or not); None for none or no device."""
        ...

    async def accept_move(
        self, pin: str, tenant: str, now_ms: int, max_devices: int | None = None
    ) -> bool:
        """Complete the device's pending move if it is to ``tenant`` and unexpired at
        ``now_ms``: as :meth:`set_device_tenant`, and the request is used up, in one
        atomic write (a transaction, a compare-and-set), so of any number of calls at
        most one returns True.  False (nothing changed) for no such request or device.
        ``max_devices``: ``tenant``'s devices quota, as for :meth:`create_device`
        (RATE_LIMITED naming it, nothing moved); device counts follow the move, and
        grants and memberships are dropped as there."""
        ...

    async def set_grant(self, pin: str, tenant: str, granted: bool) -> bool:
        """Let ``tenant`` push to the device as its own tenant does (or stop it);
        False if there is no such device.  At most MAX_GRANTS per device (CONFLICT)."""
        ...

    async def grants_of(self, pin: str) -> list[str]:
        """The tenants ``pin``'s device granted, sorted; [] for no device."""
        ...

    async def get_device(self, pin: str) -> Device | None: ...

    async def delete_device(self, pin: str) -> bool:
        """Delete a device and all its messages; False if there was none."""
        ...

    async def set_token(self, pin: str, token_hash: str) -> bool: ...

    async def touch_device(self, pin: str, now_ms: int) -> None: ...

    async def backlog(self, pin: str, now_ms: int) -> int:
        """Unexpired messages stored for ``pin``."""
        ...

    async def last_cursor(self, pin: str) -> int:
        """The highest cursor stored for ``pin`` as far as the store can tell (0: none).

        Where ``Device.last_cursor`` may lag on an engine that writes no device record
        per message; it may cost a read.  On the cluster engine a message that expired
        unacknowledged may have had a higher one: see :meth:`cursor_limit`.
        """
        ...

    async def cursor_limit(self, pin: str) -> int:
        """The highest cursor ``pin``'s device may name (a hello, an ack).

        At least every cursor ever handed out for it, and no cursor at or below it
        can acknowledge a message stored later.  It may cost a read: edges ask only
        when ``Device.last_cursor`` would refuse.
        """
        ...

    # --- API keys ------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> None: ...

    async def find_key(self, key_hash: str) -> ApiKey | None: ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str) -> bool: ...

    # --- contacts (core/social.py) --------------------------------------------
    async def contact_action(
        self, actor: str, other: str, action: Action, now_ms: int, notice: NewMessage
    ) -> tuple[Transition, Accepted | None]:
        """Apply ``actor``'s ``action`` about ``other`` to both entries and, when the
        transition tells ``other`` something, append ``notice`` to it with
        ``data = core.chat.contact_data(notify)`` (its Accepted, else None).

        Atomic where the engine can be (SQLite: one transaction; so an invitation
        costs one commit whether ``other`` exists or not; the cluster spends the same
        requests either way, store/jetstream/contacts.py).  The Accepted's id is
        ``notice.id``, or an id after it on the cluster when a retried attempt told
        something else than the first (store/jetstream/store.py).  Raises what
        :func:`pinrelay.core.social.transition` raises (nothing written), and
        CONFLICT when ``actor`` already holds MAX_CONTACTS entries."""
        ...

    async def contacts(self, owner: str) -> list[Contact]:
        """``owner``'s entries, by PIN."""
        ...

    async def contact_state(self, owner: str, other: str) -> State | None:
        """``owner``'s entry for ``other`` (a send's consent check: keep it cheap)."""
        ...

    # --- groups --------------------------------------------------------------
    async def create_group(self, group: Group) -> None:
        """Store a new group (its id is new: random, 60 bits)."""
        ...

    async def get_group(self, group_id: str) -> Group | None: ...

    async def change_members(
        self, group_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Group | None:
        """Add and remove members (atomically where the engine can); the group after,
        or None if there is none.  A group left with no member is deleted.  Adding
        past MAX_GROUP members raises CONFLICT (nothing changed)."""
        ...

    async def groups_of(self, pin: str) -> list[Group]:
        """The groups ``pin`` is a member of, by id."""
        ...

    # --- read receipts ---------------------------------------------------------
    async def put_unread(self, entries: Sequence[Unread]) -> None:
        """Remember delivered chat messages until they are read (durable)."""
        ...

    async def find_unread(
        self, reader: str, ids: Sequence[str], now_ms: int, with_read: bool = False
    ) -> list[Unread]:
        """Those of ``ids`` delivered to ``reader`` and not read yet (unexpired):
        until :meth:`drop_unread`, or an :meth:`append` whose ``read`` names them
        (``with_read``: those too, until the expiry that read gave them)."""
        ...

    async def drop_unread(self, reader: str, ids: Sequence[str]) -> None:
        """Forget ``ids`` as unread (their read receipts are stored apart; Chat.read
        uses :meth:`append`'s ``read``)."""
        ...

    # --- budgets (chat.py: invitations) ------------------------------------------
    async def take_budget(self, key: str, limit: int, period_ms: int, now_ms: int) -> int:
        """Count one try against ``key``'s budget, ``limit`` tries in a burst and then
        one every ``period_ms / limit`` (core/ratelimit.take), shared by every relay of
        a cluster and kept across restarts.  0 if the try fits (it is counted), else
        the ms until one would (nothing counted).  ``period_ms`` at most
        BUDGET_PERIOD_MAX_MS; a key is 1-64 characters of ``A-Z a-z 0-9 _ -``."""
        ...

    # --- pairing codes (api/pairing.py) ----------------------------------------
    async def create_pairing(self, code_hash: str, pin: str, expires_ms: int) -> None:
        """Remember a pairing code for ``pin``, by its hash, until ``expires_ms``
        (durable; every relay of a cluster can redeem it).  It replaces the device's
        earlier codes not used yet: redeeming one of those answers ``replaced``
        (the newest code made wins, whatever the relays' clocks say).  CONFLICT if
        the hash is taken by another code."""
        ...

    async def redeem_pairing(self, code_hash: str, now_ms: int) -> Redemption:
        """Use the code once: of any number of calls, on any relay, at most one gets
        ``redeemed`` (atomic: a transaction, or a compare-and-set).  A code is kept
        PAIRING_KEEP_MS past its expiry, then forgotten."""
        ...

    # --- Web Push subscriptions (pinrelay/webpush.py) ---------------------------
    async def create_subscription(self, sub: Subscription) -> None:
        """Store a new subscription (durable, seen by every relay of a cluster).
        CONFLICT when its id is taken or when ``sub.pin`` already holds
        MAX_SUBSCRIPTIONS live ones (nothing stored)."""
        ...

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        """The subscription, or its tombstone (``deleted_ms`` set); None if there
        never was one or it was forgotten.  On every push: keep it cheap (an engine
        may cache, but a deletion must be seen by every relay within a second or so)."""
        ...

    async def subscriptions_of(self, pin: str) -> list[Subscription]:
        """``pin``'s live subscriptions, oldest first."""
        ...

    async def delete_subscription(self, pin: str, sub_id: str, now_ms: int) -> bool:
        """Make ``pin``'s live subscription a tombstone; False if it has none by that
        id.  Deleting a device makes tombstones of all its subscriptions."""
        ...

    async def put_push_receipts(self, receipts: Sequence[PushReceipt]) -> None:
        """Keep these receipts (durable: stored before the ack that caused them)."""
        ...

    async def get_push_receipt(self, key: str, now_ms: int) -> PushReceipt | None:
        """The receipt by its key, unless there is none or it expired."""
        ...

    # --- channels and broadcasts (core/channels.py) ----------------------------
    async def create_channel(self, channel: Channel, max_channels: int) -> None:
        """Store a new channel (its id is new: random, 60 bits; durable, seen by
        every relay).  CONFLICT when its tenant holds ``max_channels`` live ones."""
        ...

    async def get_channel(self, channel_id: str) -> Channel | None:
        """The channel, or its tombstone (``deleted_ms`` set); None if there never was one."""
        ...

    async def list_channels(self, tenant: str | None) -> list[Channel]:
        """The live channels of ``tenant`` (None: of every tenant), by id."""
        ...

    async def delete_channel(self, channel_id: str, now_ms: int) -> bool:
        """Make a live channel a tombstone and forget its members; False if there is
        no live channel by that id."""
        ...

    async def join_channel(self, pin: str, channel_id: str, joined: bool) -> bool:
        """Make ``pin`` a member of the channel (``joined``) or not; repeating either
        changes nothing.  False if there is no such device.  CONFLICT when joining
        would make the device a member of more than MAX_MEMBERSHIPS channels.  The
        caller checked that the channel is live and the device's tenant's.  Deleting
        the device forgets its memberships and refusals."""
        ...

    async def channels_of(self, pin: str) -> list[str]:
        """The ids of the channels ``pin`` is a member of, sorted."""
        ...

    async def channel_members(self, channel_id: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` members of the channel with a PIN above ``after`` ("":
        from the first), sorted: the fan-out's pages."""
        ...

    async def set_refusal(self, pin: str, klass: ChannelClass, refused: bool) -> bool:
        """The device refuses every broadcast of ``klass`` (or no longer does);
        False if there is no such device."""
        ...

    async def refusals_of(self, pin: str) -> list[ChannelClass]:
        """The classes ``pin`` refuses, sorted; [] for none or no device."""
        ...

    async def admit(
        self,
        pins: Sequence[str],
        klass: ChannelClass,
        broadcast_id: str,
        day: int,
        cap: int | None,
    ) -> list[str]:
        """Those of ``pins`` (in order) that take broadcast ``broadcast_id``: the
        ones that do not refuse ``klass`` and, with a ``cap``, were admitted fewer
        than ``cap`` broadcasts on ``day`` (core.channels.day_of).  Counting is
        durable before this returns, and asking again for the same broadcast (a
        fan-out resumed after a crash) admits the same devices without counting
        them twice: each device remembers the last broadcast it was counted for."""
        ...

    async def put_broadcast(self, broadcast: Broadcast) -> bool:
        """Store a new broadcast, or its progress (durable, seen by every relay).
        A record never goes back: an update whose ``after`` is below the stored
        one's, or that would undo ``done_ms``, changes nothing and returns False
        (two relays resuming the same fan-out)."""
        ...

    async def get_broadcast(self, broadcast_id: str) -> Broadcast | None: ...

    async def unfinished_broadcasts(self) -> list[Broadcast]:
        """Broadcasts whose fan-out has not ended (``done_ms`` None), oldest first."""
        ...

    async def count_broadcasts(
        self, node: str, counts: Mapping[str, BroadcastCounts], batch: str = ""
    ) -> None:
        """Add what relay ``node`` counted since it last called (by broadcast id).

        ``batch`` names the call: a broadcast whose last batch from ``node`` was this
        one adds nothing, so a call whose answer was lost (it may have been stored)
        can be made again as it was, before any other ("": no such check)."""
        ...

    async def broadcast_counts(self, broadcast_id: str) -> BroadcastCounts:
        """Every relay's counts of the broadcast, summed (zeros for none)."""
        ...

    async def put_ledger(self, node: str, ledger: Ledger) -> None:
        """Keep relay ``node``'s stored-bytes ledger (core/ledger.py), replacing its
        last; need not survive a crash (the ledger errs by seconds anyway)."""
        ...

    async def ledgers(self) -> dict[str, Ledger]:
        """Every relay's last ledger, by node."""
        ...

    async def prune_broadcasts(self, before_ms: int, limit: int) -> int:
        """Forget up to ``limit`` broadcasts both done and expired before
        ``before_ms``, with their counts (make-goods are kept: their codes name
        them); how many (broadcast.py, ``--broadcast-keep-days``)."""
        ...

    async def prune_audit(self, before_ms: int, limit: int) -> int:
        """Forget up to ``limit`` audit lines written before ``before_ms``, oldest
        first; how many (``--audit-keep-days``)."""
        ...

    async def append_audit(self, entry: AuditEntry) -> None:
        """Keep one line of the audit log (durable before this returns)."""
        ...

    async def audit(
        self, tenant: str | None, before_ms: int | None, limit: int
    ) -> list[AuditEntry]:
        """Up to ``limit`` lines of ``tenant``'s audit log (None: every tenant's)
        older than ``before_ms`` (None: from the newest), newest first."""
        ...

    # --- incidents (core/incidents.py) -------------------------------------------
    async def put_incident(self, incident: Incident) -> bool:
        """Store a new incident (``rev`` 1) or its next revision (durable, seen by
        every relay) by compare-and-set: only if no incident has its id (``rev``
        1), or the stored one is open and ``rev`` is the stored one's + 1
        (core.incidents.follows).  Otherwise nothing changes and False is returned:
        the caller reads again.  Writing the revision already stored (a retry whose
        answer was lost) changes nothing and returns True.  A resolved incident is
        never replaced, so a stale writer cannot reopen it."""
        ...

    async def get_incident(self, incident_id: str) -> Incident | None: ...

    async def probe(self, node: str, now_ms: int) -> None:
        """One small durable write, as replicated as messages are (the monitors'
        probe, core/monitors.py): returns once stored, raises StoreClosed if it cannot be."""
        ...

    async def list_incidents(self, since_ms: int, limit: int) -> list[Incident]:
        """Up to ``limit`` incidents open now or resolved at or after ``since_ms``,
        newest (``started_ms``, then id) first."""
        ...

    # --- service levels, make-goods and codes (core/credits.py, core/makegood.py) ---
    async def put_service_level(self, tenant: str, level: ServiceLevel | None) -> None:
        """Set the tenant's service level (None: remove it); durable."""
        ...

    async def service_levels(self) -> dict[str, ServiceLevel]:
        """Every tenant's service level, by tenant id."""
        ...

    async def tenant_devices(self, tenant: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` PINs of the tenant's devices above ``after`` ("": from the
        first), sorted: a make-good's pages."""
        ...

    async def claim_makegood(self, incident: str, tenant: str, broadcast: str) -> str:
        """Claim the make-good of (incident, tenant) for ``broadcast`` unless one
        holds it; the broadcast that holds it (core/makegood.py rule 2)."""
        ...

    async def issue_codes(self, codes: Sequence[Code]) -> list[Code]:
        """Record each code unless its (broadcast, PIN) has one (durable); for each,
        in order, the code stored for its (broadcast, PIN) (rule 3)."""
        ...

    async def get_code(self, code: str) -> Code | None: ...

    async def redeem_code(self, code: str, now_ms: int) -> tuple[Code | None, bool]:
        """Mark ``code`` redeemed at ``now_ms`` unless it was; the record (None:
        no such code) and whether this call redeemed it (rule 4)."""

    # --- figures (figures.py, core/readings.py) ------------------------------------
    async def put_readings(self, readings: Sequence[Readings]) -> None:
        """Keep relays' readings, one per (node, at_ms) (a repeat replaces it), and
        forget, a batch at a time, those older than FIGURES_KEEP_MS before the newest
        written.  Kept as a store keeps writes, but a crash of the store's machine
        may lose the last ones (they are figures, not messages)."""
        ...

    async def readings(self, since_ms: int, until_ms: int) -> list[Readings]:
        """Every relay's readings with ``since_ms <= at_ms <= until_ms``, oldest
        first (then by node)."""

    async def put_delay_day(self, day_ms: int, delays: dict[str, tuple[int, ...]]) -> None:
        """Keep the delay counts per tenant of the UTC day starting at ``day_ms``
        (delay_days.py); a repeat replaces it.  Kept DELAY_DAYS_KEEP_MS."""

    async def delay_days(self, days_ms: Sequence[int]) -> dict[int, dict[str, tuple[int, ...]]]:
        """The kept delay counts of those days (a day not kept is left out)."""

    # --- webhooks (core/webhooks.py; DECISIONS 56) -------------------------------
    async def put_webhook(self, webhook: Webhook, max_per_tenant: int) -> None:
        """Store a new subscription (durable); CONFLICT if its tenant (None: the
        relay's admin) holds ``max_per_tenant`` already."""
        ...

    async def get_webhook(self, webhook_id: str) -> Webhook | None: ...

    async def list_webhooks(self) -> list[Webhook]:
        """Every subscription, oldest first (a few per tenant)."""
        ...

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Forget a subscription, its outbox and its lease; False if there was none."""
        ...

    async def enqueue_webhooks(self, entries: Sequence[OutboxEntry]) -> None:
        """Add each entry its subscription's outbox lacks (same webhook and key:
        core/webhooks.py rule 2); one present, pending or done, is kept as it is.
        An entry with ``done_ms`` is added done (it was delivered while the store
        was away).  Durable when this returns."""
        ...

    async def pending_webhooks(self, webhook_id: str, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` of the subscription's entries not answered 2xx, in key
        order (rule 3)."""
        ...

    async def webhook_done(self, webhook_id: str, key: str, now_ms: int) -> None:
        """Mark an entry answered 2xx (kept, done, until :meth:`prune_webhooks`)."""
        ...

    async def lease_webhook(self, webhook_id: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        """Take or renew the lease on a subscription's outbox for ``owner`` until
        ``now_ms + ttl_ms``: True if ``owner`` holds it now (it was free, expired or
        its own).  ``ttl_ms`` 0 lets go of one's own lease (another owner may take
        it at once)."""
        ...

    async def prune_webhooks(self, before_ms: int) -> int:
        """Drop the done entries answered before ``before_ms``; how many."""
        ...

    # --- messages ------------------------------------------------------------
    async def append(
        self,
        messages: Sequence[NewMessage | Rejected],
        idem: IdempotencyKey | None = None,
        tenant: str | None = None,
        unread: Sequence[Unread] = (),
        read: Sequence[Unread] = (),
    ) -> tuple[list[Accepted | Rejected], bool]:
        """Store messages atomically, each after the last of its device.

        ``tenant``: the sender's tenant (None: no restriction, the relay's own edges
        and its admin).  A message to a device of another tenant that granted it
        nothing is rejected as UNKNOWN_DEVICE, as for a PIN with no device, and
        checked in the same write (no read first: a push costs no extra query).

        Returns one result per message, in order (a Rejected given passes
        through, so an idempotent replay repeats what the edge did not store),
        and whether it is a replay: when ``idem`` names a key seen before,
        nothing is stored and the first call's results come back (a different
        fingerprint raises CONFLICT).  A message
        with a topic replaces its device's stored message with that topic.

        ``unread``: entries remembered as :meth:`put_unread` does, the first
        ``len(unread)`` messages their delivered receipts, one each in order
        (Chat.delivered).  ``read``: entries these messages are the read receipts
        of, the same way, then no longer found (:meth:`drop_unread`; SQLite
        remembers them read until their ``expires_ms``, if sooner).  Where
        :attr:`atomic_receipts` (SQLite) both are in the messages' transaction, and
        a receipt whose entry was there already (``unread``) or read already
        (``read``) is not stored (Rejected RECEIPT_STORED): each receipt is stored
        once while its entry lives, whatever crashes or repeats.  Otherwise the
        entries are stored after the messages, so an entry is proof that its
        receipt is stored: a crash in between repeats a receipt, never loses one;
        there a message with a ``dedup`` name appended within the store's duplicate
        window (the cluster: 2 min) after one of that name was stored is not
        stored again either (Rejected RECEIPT_STORED).  With ``idem``, a replay
        may leave them out.
        """
        ...

    async def earlier_append(
        self, key: str, now_ms: int
    ) -> tuple[str, list[Accepted | Rejected]] | None:
        """The fingerprint and results of a finished :meth:`append` under the
        idempotency key ``key`` within its 24 h, else None.  A read, for an edge that
        refuses a request before it would append and must still answer a retry of
        one it stored as it answered the first (Chat.send)."""
        ...

    async def read(self, pin: str, after: int, limit: int, now_ms: int) -> list[StoredMessage]:
        """Up to ``limit`` unexpired messages with cursor > ``after``, in order."""
        ...

    async def ack(self, pin: str, cursor: int) -> None:
        """The device is done with every message up to ``cursor``: forget them.

        Unlike appends, an ack need not survive a crash: a forgotten ack only
        means a redelivery, which clients drop as a duplicate.
        """
        ...

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        """:meth:`ack` for many devices at once (one write where the engine can)."""
        ...

    async def sweep(self, now_ms: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired messages; how many went."""
        ...

    async def expired_chats(self, now_ms: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` chat messages expired unacknowledged at ``now_ms``, which
        :meth:`sweep` leaves until :meth:`forget` (their senders get ``failed``
        receipts first).  An engine whose messages expire by themselves is told of
        each such chat instead (the cluster's, by a schedule; store/jetstream/expiry.py),
        hands it to one caller at a time, and may wait a moment for the first."""
        ...

    async def forget(self, keys: Sequence[tuple[str, int]]) -> int:
        """Delete the messages at these (pin, cursor) keys; how many were there (a
        key deleted before counts 0, so of two callers that forget one key, one
        learns it deleted it).  For the keys of ``expired_chats`` (their failed
        receipts are stored): SQLite deletes the messages; the cluster acknowledges
        their notices (the messages go by their TTL)."""
        ...

    async def stats(self) -> StoreStats:
        """Counts for metrics; may take a while on a large store, never blocks the loop."""
        ...
