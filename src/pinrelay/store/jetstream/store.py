"""JetStreamStore: the Store protocol over the parts of this package.

It holds the options and the connection's life (open, close, health) and hands
each protocol call to the part that owns it: :class:`~.devices.Devices` and
:class:`~.keys.Keys` (KV records), :class:`~.appends.Appender` (with
:class:`~.idempotency.Leases` for an Idempotency-Key and
:class:`~.group.GroupCommit` for concurrent appends), :class:`~.reads.Reader`,
:class:`~.acks.Acker`, :class:`~.contacts.ContactLists`,
:class:`~.unread.Unreads` (read-receipt bookkeeping), :class:`~.groups.Groups`,
:class:`~.subscriptions.Subscriptions` (Web Push), :class:`~.expiry.Expiries`
(failed receipts), :class:`~.tenants.Tenants`, :class:`~.channels.Channels`
(channels, memberships, consent) and :class:`~.broadcasts.Broadcasts` with
:class:`~.broadcasts.Audit`.  They share one
:class:`~.api.Api` (the connection, retries and the error boundary) and one
:class:`~.layout.Layout` (names).  :class:`~.following.Following` starts and stops
what an open store follows (the KV watches, the feed, the expiry consumers).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from pinrelay.core.channels import AuditEntry, Broadcast, BroadcastCounts, Channel, ChannelClass
from pinrelay.core.credits import ServiceLevel
from pinrelay.core.incidents import Incident
from pinrelay.core.ledger import Ledger
from pinrelay.core.makegood import Code
from pinrelay.core.model import Accepted, ApiKey, Device, NewMessage, StoredMessage
from pinrelay.core.quotas import over
from pinrelay.core.readings import Readings
from pinrelay.core.social import Action, State, Transition
from pinrelay.core.tenants import DEFAULT_TENANT, Tenant
from pinrelay.core.webhooks import OutboxEntry, Webhook
from pinrelay.store.base import (
    AppendResult,
    Contact,
    Group,
    IdempotencyKey,
    Move,
    PushReceipt,
    Redemption,
    Rejected,
    StoreClosed,
    StoreStats,
    Subscription,
    Unread,
    to_results,
)
from pinrelay.store.jetstream import setup
from pinrelay.store.jetstream.acks import Acker
from pinrelay.store.jetstream.api import Api, refused
from pinrelay.store.jetstream.appends import Appender
from pinrelay.store.jetstream.broadcasts import Audit, Broadcasts, Ledgers
from pinrelay.store.jetstream.budgets import Budgets
from pinrelay.store.jetstream.channels import Channels
from pinrelay.store.jetstream.contacts import ContactLists
from pinrelay.store.jetstream.credits import Credits
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.expiry import Expiries
from pinrelay.store.jetstream.feed import Feed
from pinrelay.store.jetstream.figures import Figures
from pinrelay.store.jetstream.following import Following
from pinrelay.store.jetstream.group import GroupCommit
from pinrelay.store.jetstream.groups import Groups
from pinrelay.store.jetstream.idempotency import IDEMPOTENCY_LEASE_S, Leases
from pinrelay.store.jetstream.incidents import Incidents
from pinrelay.store.jetstream.keys import Keys
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import LAYOUT_VERSION, Layout
from pinrelay.store.jetstream.pairing import Pairings
from pinrelay.store.jetstream.pushreceipts import PushReceipts
from pinrelay.store.jetstream.reads import Reader
from pinrelay.store.jetstream.records import to_device
from pinrelay.store.jetstream.subscriptions import Subscriptions
from pinrelay.store.jetstream.tenants import Tenants
from pinrelay.store.jetstream.unread import Unreads
from pinrelay.store.jetstream.webhooks import Webhooks

log = logging.getLogger(__name__)


class JetStreamStore:
    """The cluster engine: one JetStream stream (or one per partition) plus twelve KV buckets."""

    atomic_receipts = False

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        stream: str = "PINRELAY",
        subject_prefix: str = "dev",
        bucket_prefix: str = "pinrelay",
        replicas: int = 3,
        direct_reads: bool = False,
        request_timeout: float = 2.0,
        retry_for: float = 3.0,
        ttl_grace_s: int = 2,
        sweep_scan: int = 1_000,
        atomic: bool = True,
        idem_lease_s: float = IDEMPOTENCY_LEASE_S,
        connect_timeout: float = 10.0,
        name: str = "pinrelay",
        partitions: int = 1,
        purge_acked: bool = False,
        group_commit: bool = True,
        expiry_wait_s: float = 30.0,
        chat_expiry: bool = True,
    ) -> None:
        self.layout = Layout(stream, subject_prefix, partitions, bucket_prefix)
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.stream = stream
        #: Devices are spread over this many streams by a hash of the PIN (opt-in).
        self.partitions = partitions
        self.prefix = subject_prefix
        self.bucket_prefix = bucket_prefix
        self.replicas = replicas
        self.request_timeout = request_timeout
        self.name = name
        #: How long open() tries to reach a server at all.
        self.connect_timeout = connect_timeout
        self._want_atomic = atomic
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        buckets = self.layout.buckets
        self.api = Api(request_timeout, retry_for)
        kv = Kv(self.api)
        self.devices = Devices(kv, buckets)
        self.keys = Keys(kv, buckets)
        self.contact_lists = ContactLists(kv, buckets.contacts, self.devices)
        self.unread = Unreads(kv, buckets.unread, ttl_grace_s)
        self.groups = Groups(kv, buckets.groups)
        self.leases = Leases(kv, buckets.idem, idem_lease_s)
        self.pairings = Pairings(kv, self.layout.pairing)
        self.budgets = Budgets(kv, self.layout.budgets)
        self.push_receipts = PushReceipts(kv, self.layout.push_receipts)
        self.subscriptions = Subscriptions(kv, buckets.subscriptions, self.devices)
        self.tenants = Tenants(kv, buckets.tenants)
        self.channels = Channels(kv, buckets.channels, self.devices)
        self.broadcasts = Broadcasts(kv, buckets.channels)
        self.audit_log = Audit(kv, buckets.channels)
        self.ledger_records = Ledgers(kv, buckets.channels)
        self.incidents = Incidents(kv, buckets.channels)
        self.credits = Credits(kv, buckets.channels, self.devices)
        self.figures = Figures(self.api, bucket_prefix, replicas)
        self.webhooks = Webhooks(kv, buckets.channels)
        self.reader = Reader(self.api, self.layout, self.devices, direct_reads)
        self.appender = Appender(self.api, self.layout, self.devices, self.reader, ttl_grace_s)
        #: Concurrent appends share atomic batches (:mod:`.group`); off: each alone.
        self.group = GroupCommit(self.api, self.appender.publish_part) if group_commit else None
        self.appender.grouped = None if self.group is None else self.group.publish
        if group_commit:
            self.unread.share_batches()
        self.acker = Acker(
            self.api, self.layout, self.devices, self.reader, sweep_scan, purge_acked=purge_acked
        )
        #: Chats that expired undelivered (:mod:`.expiry`).
        self.expiries = Expiries(self.layout)
        #: How long :meth:`expired_chats` waits for the first notice: a long poll
        #: (a notice is handed over as soon as it fires), so an idle relay sends one
        #: pull request per stream every 30 s, not a stream of them.
        self.expiry_wait_s = expiry_wait_s
        #: Schedule chats' expiries where the streams can (off: bench.js_chat_expiry's
        #: "before"; nobody is told of a chat that expires undelivered).
        self._chat_expiry = chat_expiry
        #: New messages in stream order, for the devices this relay follows (the router).
        self.feed = Feed(self.layout, self.devices.cache)
        self.reader.known = self.feed.known
        self.acker.followed = self.feed.followed
        self.feed.on_unfollow = self.acker.settle
        #: Started by open, stopped by close: what this store follows.
        self.following = Following(
            [
                self.tenants.watch,
                self.devices.watch,
                self.keys.watch,
                self.contact_lists.watch,
                self.groups.watch,
                self.subscriptions.watch,
            ],
            self.feed,
            self.expiries,
        )

    # --- names -----------------------------------------------------------------
    @property
    def streams(self) -> list[str]:
        """The message streams, partition 0 first."""
        return self.layout.streams

    def bucket_names(self) -> list[str]:
        return [
            *self.layout.bucket_names(),
            self.layout.pairing.name,
            self.layout.push_receipts.name,
            self.layout.budgets.name,
        ]

    @property
    def direct_fallbacks(self) -> int:
        """Direct reads that a lagging follower sent to the leader (for metrics)."""
        return self.reader.direct_fallbacks

    # --- lifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        """Connect, then create or check the streams and the buckets (idempotent)."""
        nc = await setup.connect(
            self.servers,
            self.name,
            self.connect_timeout,
            self._on_error,
            self._on_disconnected,
            self._on_reconnected,
        )
        js = nc.jetstream(timeout=max(self.request_timeout, 10.0))
        layout = setup.Setup(self.layout, self.replicas, self._want_atomic, self.request_timeout)
        try:
            prepared = await layout.run(nc, js, self.connect_timeout)
        except BaseException:
            await nc.close()
            raise
        self.appender.atomic = prepared.atomic
        self.appender.expiry = self.expiries.enabled = prepared.expiry and self._chat_expiry
        self.contact_lists.atomic = self.unread.atomic = prepared.bucket_batches
        self.groups.atomic = prepared.bucket_batches
        self.subscriptions.atomic = prepared.bucket_batches
        self.acker.closed = False
        self._nc, self._js = nc, js
        self.api.attach(nc)
        try:
            await self._migrate(layout, js, prepared.layout)
        except BaseException:
            await self.close()
            raise
        try:
            await self.following.start(nc, js, time.monotonic() + self.connect_timeout)
        except Exception as exc:
            await self.close()
            raise StoreClosed(f"cannot follow the streams and buckets: {exc!r}") from exc

    async def _migrate(self, layout: setup.Setup, js: JetStreamContext, found: int) -> None:
        """Bring data of layout ``found`` to :data:`~.layout.LAYOUT_VERSION` (:mod:`.setup`,
        "Layout versions"); each step idempotent, so run again after a lost stamp.

        1 → 2 (tenants): records that name no tenant read as the default tenant's
        (:mod:`.records`), so the step is only creating that tenant, which every open
        does when it is missing (:meth:`.tenants.Tenants.ensure_default`).
        """
        if await self.tenants.ensure_default():
            log.info("the default tenant created (data layout %d found)", found)
        if found < LAYOUT_VERSION:
            await layout.stamp(js, self.connect_timeout)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # A message dropped before our callback saw it: a feed delivery, perhaps.
            log.warning("NATS: %r; every followed device reads the store", exc)
            self.feed.resync()
            return
        log.debug("NATS: %r", exc)

    async def _on_disconnected(self) -> None:
        if self._nc is None:  # our own close(): not news
            return
        log.warning("NATS connection lost; reconnecting")

    async def _on_reconnected(self) -> None:
        # A removal announced while we were away is lost: read every record again.
        self.tenants.cache.clear()
        self.devices.cache.clear()
        self.keys.cache.clear()
        self.contact_lists.cache.clear()
        self.groups.cache.clear()
        self.subscriptions.cache.clear()
        nc = self._nc
        log.warning(
            "NATS connection back (%s)", nc.connected_url.netloc if nc and nc.connected_url else "?"
        )

    async def close(self) -> None:
        connected = self._nc is not None and not self._nc.is_closed
        try:
            await self.acker.close(flush=connected)
        except Exception as exc:  # a lost ack is a redelivery, not a loss
            log.warning("writing held acks at close failed: %r", exc)
        await self.following.stop()
        nc, self._nc, self._js = self._nc, None, None
        self.api.attach(None)
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.drain()
            if not nc.is_closed:
                await nc.close()

    def healthy(self) -> bool:
        """Connected to a NATS server (a lost connection reconnects by itself)."""
        nc = self._nc
        return nc is not None and nc.is_connected

    @property
    def connection(self) -> tuple[NATS, JetStreamContext]:
        """The store's NATS connection, shared with the router (raises StoreClosed)."""
        nc, js = self._nc, self._js
        if nc is None or js is None or nc.is_closed:
            raise StoreClosed("store is closed")
        return nc, js

    # --- tenants (.tenants) ----------------------------------------------------------
    async def create_tenant(self, tenant: Tenant) -> None:
        await self.tenants.create(tenant)

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        return await self.tenants.get(tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        return await self.tenants.all()

    async def update_tenant(self, tenant: Tenant) -> bool:
        return await self.tenants.update(tenant)

    # --- devices -------------------------------------------------------------------
    async def create_device(
        self,
        pin: str,
        token_hash: str,
        label: str | None,
        now_ms: int,
        tenant: str | None = DEFAULT_TENANT,
        max_devices: int | None = None,
    ) -> Device | None:
        # Counted first, so that relays racing cannot pass the quota (.tenants,
        # "Device counts"); taken back if no device was made.
        if tenant is not None and not await self.tenants.count_devices(tenant, 1, max_devices):
            raise over(tenant, "devices", f"{max_devices} devices")
        rec = None
        try:
            rec = await self.devices.create(pin, token_hash, label, now_ms, tenant)
        finally:
            if rec is None and tenant is not None:
                await self.tenants.count_devices(tenant, -1)
        return None if rec is None else to_device(pin, rec)

    async def set_device_tenant(self, pin: str, tenant: str | None) -> bool:
        got = await self.devices.get_fresh(pin)
        if not await self.devices.set_tenant(pin, tenant):
            return False
        old = None if got is None else got.rec.tenant
        await self.channels.leave_all(pin)
        if old != tenant:
            if old is not None:
                await self.tenants.count_devices(old, -1)
            if tenant is not None:
                await self.tenants.count_devices(tenant, 1)
        return True

    async def request_move(self, pin: str, move: Move | None) -> bool:
        return await self.devices.request_move(pin, move)

    async def pending_move(self, pin: str) -> Move | None:
        got = await self.devices.get(pin)
        if got is None or got.rec.move_to is None:
            return None
        return Move(got.rec.move_to, got.rec.move_expires_ms)

    async def accept_move(
        self, pin: str, tenant: str, now_ms: int, max_devices: int | None = None
    ) -> bool:
        # Only for a request the device record shows (the cache, else the leader's
        # copy): a refused acceptance writes nothing.
        pending = await self.pending_move(pin)
        if pending is None or pending.tenant != tenant:
            got = await self.devices.get_fresh(pin)
            if got is None or got.rec.move_to != tenant:
                return False
        # Counted first, as a create (.tenants, "Device counts"); taken back if no move.
        if not await self.tenants.count_devices(tenant, 1, max_devices):
            raise over(tenant, "devices", f"{max_devices} devices")
        moved = None
        try:
            moved = await self.devices.accept_move(pin, tenant, now_ms)
        finally:
            if moved is None:
                await self.tenants.count_devices(tenant, -1)
        if moved is None:
            return False
        if moved.left is not None:
            # The tenant it left counts one less (the same one: the +1 taken back).
            await self.tenants.count_devices(moved.left, -1)
        await self.channels.leave_all(pin)
        return True

    async def set_grant(self, pin: str, tenant: str, granted: bool) -> bool:
        return await self.devices.set_grant(pin, tenant, granted)

    async def grants_of(self, pin: str) -> list[str]:
        got = await self.devices.get(pin)
        return [] if got is None else list(got.rec.grants)

    async def get_device(self, pin: str) -> Device | None:
        got = await self.devices.get(pin)
        if got is None:
            return None
        rec = got.rec
        acked = self.reader.acked_cursor(pin, rec)
        if acked > rec.acked_cursor:  # held in memory, not written yet (.acks)
            rec = msgspec.structs.replace(
                rec, acked_cursor=acked, last_cursor=max(rec.last_cursor, acked)
            )
        return to_device(pin, rec)

    async def last_cursor(self, pin: str) -> int:
        got = await self.devices.get_fresh(pin)
        if got is None:
            return 0
        newest = await self.reader.newest(pin)
        return max(got.rec.last_cursor, self.reader.acked_cursor(pin, got.rec), newest)

    async def cursor_limit(self, pin: str) -> int:
        """The last sequence of the device's stream: a message that expired
        unacknowledged leaves no trace of its cursor, and a later one gets a higher
        sequence than any now in the stream."""
        if await self.devices.get(pin) is None:
            return 0
        stream = self.layout.stream_of(pin)
        info = await self.api.request(f"STREAM.INFO.{stream}", {}, "info")
        return int((info.get("state") or {}).get("last_seq", 0))

    async def delete_device(self, pin: str) -> bool:
        found = await self.devices.get_fresh(pin)
        if found is None:
            # A deletion that failed half-way left its subscriptions live: end them
            # (.subscriptions, "Deleted devices"; one read when there are none).
            await self.subscriptions.end_all(pin)
            await self.channels.forget(pin)
            return False
        # Out of its groups first, so that a deletion failing half-way is finished by
        # its retry (.groups, "Deleted devices").
        await self.groups.leave_all(pin)
        if not await self.devices.remove(pin):
            await self.subscriptions.end_all(pin)
            return False
        if found.rec.tenant is not None:
            await self.tenants.count_devices(found.rec.tenant, -1)
        # Messages stored meanwhile carry the old gen: no later device with this PIN sees
        # them; a contacts record written meanwhile does too (.contacts).
        await self.acker.purge(pin, None)
        self.acker.forget(pin)
        await self.contact_lists.remove(pin)
        await self.unread.remove_all(pin)
        await self.channels.forget(pin)
        # After the record's removal, so a create racing with it sees the device gone.
        await self.subscriptions.end_all(pin)
        return True

    async def set_token(self, pin: str, token_hash: str) -> bool:
        return await self.devices.set_token(pin, token_hash)

    async def touch_device(self, pin: str, now_ms: int) -> None:
        await self.devices.touch(pin, now_ms)

    async def backlog(self, pin: str, now_ms: int) -> int:
        return await self.reader.backlog(pin, now_ms)

    # --- keys --------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> None:
        await self.keys.create(key)

    async def find_key(self, key_hash: str) -> ApiKey | None:
        return await self.keys.find(key_hash)

    async def list_keys(self) -> list[ApiKey]:
        return await self.keys.all()

    async def revoke_key(self, key_id: str) -> bool:
        return await self.keys.revoke(key_id)

    # --- messages --------------------------------------------------------------------
    async def append(
        self,
        messages: Sequence[NewMessage | Rejected],
        idem: IdempotencyKey | None = None,
        tenant: str | None = None,
        unread: Sequence[Unread] = (),
        read: Sequence[Unread] = (),
    ) -> tuple[list[Accepted | Rejected], bool]:
        """Store ``messages``; see :meth:`pinrelay.store.base.Store.append` and
        :mod:`.appends` (atomicity, tenants) and :mod:`.idempotency` (a retried request).
        ``unread`` and ``read`` go to their bucket after the messages are stored
        (another stream): an entry is then proof that its receipt is stored, which
        Chat.delivered relies on, and a crash between repeats a receipt (dropped
        by its name within the duplicate window, :mod:`.appends`)."""
        if unread or read:
            stored = await self.append(messages, idem, tenant)
            if unread:
                await self.unread.put(unread)
            if read:
                await self.unread.put(read, read=True)
            return stored
        self.api.check_open()
        if not messages:
            return [], False
        if idem is None:
            results = await self.appender.append(messages, uuid.uuid4().hex, tenant)
            return to_results(results), False

        def publish(
            batch: Sequence[NewMessage | Rejected], nonce: str
        ) -> Awaitable[list[AppendResult]]:
            return self.appender.append(batch, nonce, tenant)

        results, replay = await self.leases.run(messages, idem, publish)
        return to_results(results), replay

    async def earlier_append(
        self, key: str, now_ms: int
    ) -> tuple[str, list[Accepted | Rejected]] | None:
        found = await self.leases.finished(key)
        return None if found is None else (found[0], to_results(found[1]))

    # --- contacts (.contacts) and read receipts (.unread) -------------------------------
    async def contact_action(
        self, actor: str, other: str, action: Action, now_ms: int, notice: NewMessage
    ) -> tuple[Transition, Accepted | None]:
        return await self.contact_lists.act_telling(
            actor, other, action, now_ms, notice, self.appender
        )

    async def contacts(self, owner: str) -> list[Contact]:
        return await self.contact_lists.listing(owner)

    async def contact_state(self, owner: str, other: str) -> State | None:
        return await self.contact_lists.state(owner, other)

    async def put_unread(self, entries: Sequence[Unread]) -> None:
        await self.unread.put(entries)

    async def find_unread(
        self, reader: str, ids: Sequence[str], now_ms: int, with_read: bool = False
    ) -> list[Unread]:
        return await self.unread.find(reader, ids, now_ms, with_read)

    async def drop_unread(self, reader: str, ids: Sequence[str]) -> None:
        await self.unread.drop(reader, ids)

    # --- groups (.groups) ----------------------------------------------------------
    async def create_group(self, group: Group) -> None:
        await self.groups.create(group)

    async def get_group(self, group_id: str) -> Group | None:
        return await self.groups.get(group_id)

    async def change_members(
        self, group_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Group | None:
        return await self.groups.change(group_id, add, remove)

    async def groups_of(self, pin: str) -> list[Group]:
        return await self.groups.of(pin)

    async def expired_chats(self, now_ms: int, limit: int) -> list[StoredMessage]:
        """Chats whose expiry schedule fired (:mod:`.expiry`), each handed to one
        relay; waits up to ``expiry_wait_s`` for the first.  Their cursors are the
        notices' sequences: keys for :meth:`forget`, not the messages' cursors."""
        self.api.check_open()
        return await self.expiries.due(now_ms, limit, self.expiry_wait_s)

    async def forget(self, keys: Sequence[tuple[str, int]]) -> int:
        """Delete the messages at these keys; a key :meth:`expired_chats` handed out
        names its notice instead, acknowledged (the chat itself goes by its TTL).  A
        notice's sequence is in the same stream as its PIN's messages, so never
        one of theirs."""
        rest = await self.expiries.done(list(keys))
        return len(keys) - len(rest) + await self.acker.delete(rest)

    async def read(self, pin: str, after: int, limit: int, now_ms: int) -> list[StoredMessage]:
        return await self.reader.read(pin, after, limit, now_ms)

    async def ack(self, pin: str, cursor: int) -> None:
        await self.acker.ack(pin, cursor)

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        await self.acker.ack_many(acks)

    async def sweep(self, now_ms: int, limit: int = 1000) -> int:
        return await self.acker.sweep(now_ms, limit)

    # --- Web Push subscriptions (.subscriptions) ------------------------------------------
    async def create_subscription(self, sub: Subscription) -> None:
        await self.subscriptions.create(sub)

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        return await self.subscriptions.get(sub_id)

    async def subscriptions_of(self, pin: str) -> list[Subscription]:
        return await self.subscriptions.of(pin)

    async def delete_subscription(self, pin: str, sub_id: str, now_ms: int) -> bool:
        return await self.subscriptions.delete(pin, sub_id, now_ms)

    async def put_push_receipts(self, receipts: Sequence[PushReceipt]) -> None:
        await self.push_receipts.put(receipts)

    async def get_push_receipt(self, key: str, now_ms: int) -> PushReceipt | None:
        return await self.push_receipts.get(key, now_ms)

    # --- channels and consent (.channels), broadcasts and audit (.broadcasts) -----------
    async def create_channel(self, channel: Channel, max_channels: int) -> None:
        await self.channels.create(channel, max_channels)

    async def get_channel(self, channel_id: str) -> Channel | None:
        return await self.channels.get(channel_id)

    async def list_channels(self, tenant: str | None) -> list[Channel]:
        return await self.channels.listing(tenant)

    async def delete_channel(self, channel_id: str, now_ms: int) -> bool:
        return await self.channels.delete(channel_id, now_ms)

    async def join_channel(self, pin: str, channel_id: str, joined: bool) -> bool:
        return await self.channels.join(pin, channel_id, joined)

    async def channels_of(self, pin: str) -> list[str]:
        return await self.channels.of(pin)

    async def channel_members(self, channel_id: str, after: str, limit: int) -> list[str]:
        return await self.channels.members(channel_id, after, limit)

    async def set_refusal(self, pin: str, klass: ChannelClass, refused: bool) -> bool:
        return await self.channels.set_refusal(pin, klass, refused)

    async def refusals_of(self, pin: str) -> list[ChannelClass]:
        return await self.channels.refusals_of(pin)

    async def admit(
        self, pins: Sequence[str], klass: ChannelClass, broadcast_id: str, day: int, cap: int | None
    ) -> list[str]:
        return await self.channels.admit(pins, klass, broadcast_id, day, cap)

    async def put_broadcast(self, broadcast: Broadcast) -> bool:
        return await self.broadcasts.put(broadcast)

    async def get_broadcast(self, broadcast_id: str) -> Broadcast | None:
        return await self.broadcasts.get(broadcast_id)

    async def unfinished_broadcasts(self) -> list[Broadcast]:
        return await self.broadcasts.unfinished()

    async def count_broadcasts(
        self, node: str, counts: Mapping[str, BroadcastCounts], batch: str = ""
    ) -> None:
        await self.broadcasts.count(node, counts, batch)

    async def broadcast_counts(self, broadcast_id: str) -> BroadcastCounts:
        return await self.broadcasts.counts(broadcast_id)

    async def put_ledger(self, node: str, ledger: Ledger) -> None:
        await self.ledger_records.put(node, ledger)

    async def ledgers(self) -> dict[str, Ledger]:
        return await self.ledger_records.all()

    async def prune_broadcasts(self, before_ms: int, limit: int) -> int:
        return await self.broadcasts.prune(before_ms, limit)

    async def prune_audit(self, before_ms: int, limit: int) -> int:
        return await self.audit_log.prune(before_ms, limit)

    async def append_audit(self, entry: AuditEntry) -> None:
        await self.audit_log.append(entry)

    async def audit(
        self, tenant: str | None, before_ms: int | None, limit: int
    ) -> list[AuditEntry]:
        return await self.audit_log.page(tenant, before_ms, limit)

    # --- incidents (.incidents) ---------------------------------------------------------
    async def put_incident(self, incident: Incident) -> bool:
        return await self.incidents.put(incident)

    async def get_incident(self, incident_id: str) -> Incident | None:
        return await self.incidents.get(incident_id)

    async def probe(self, node: str, now_ms: int) -> None:
        await self.incidents.probe(node, now_ms)

    async def list_incidents(self, since_ms: int, limit: int) -> list[Incident]:
        return await self.incidents.listing(since_ms, limit)

    # --- service levels, make-goods, codes (.credits) ----------------------------------
    async def put_service_level(self, tenant: str, level: ServiceLevel | None) -> None:
        await self.credits.put_level(tenant, level)

    async def service_levels(self) -> dict[str, ServiceLevel]:
        return await self.credits.all_levels()

    async def tenant_devices(self, tenant: str, after: str, limit: int) -> list[str]:
        return await self.credits.tenant_devices(tenant, after, limit)

    async def claim_makegood(self, incident: str, tenant: str, broadcast: str) -> str:
        return await self.credits.claim(incident, tenant, broadcast)

    async def issue_codes(self, codes: Sequence[Code]) -> list[Code]:
        return await self.credits.issue(codes)

    async def get_code(self, code: str) -> Code | None:
        return await self.credits.get_code(code)

    async def redeem_code(self, code: str, now_ms: int) -> tuple[Code | None, bool]:
        return await self.credits.redeem(code, now_ms)

    # --- figures (.figures) ------------------------------------------------------------
    async def put_readings(self, readings: Sequence[Readings]) -> None:
        await self.figures.put(readings)

    async def readings(self, since_ms: int, until_ms: int) -> list[Readings]:
        return await self.figures.between(since_ms, until_ms)

    async def put_delay_day(self, day_ms: int, delays: dict[str, tuple[int, ...]]) -> None:
        await self.credits.put_delay_day(day_ms, delays)

    async def delay_days(self, days_ms: Sequence[int]) -> dict[int, dict[str, tuple[int, ...]]]:
        return await self.credits.delay_days(days_ms)

    # --- webhooks (.webhooks) -------------------------------------------------------------
    async def put_webhook(self, webhook: Webhook, max_per_tenant: int) -> None:
        await self.webhooks.put(webhook, max_per_tenant)

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        return await self.webhooks.get(webhook_id)

    async def list_webhooks(self) -> list[Webhook]:
        return await self.webhooks.listing()

    async def delete_webhook(self, webhook_id: str) -> bool:
        return await self.webhooks.delete(webhook_id)

    async def enqueue_webhooks(self, entries: Sequence[OutboxEntry]) -> None:
        await self.webhooks.enqueue(entries)

    async def pending_webhooks(self, webhook_id: str, limit: int) -> list[OutboxEntry]:
        return await self.webhooks.pending(webhook_id, limit)

    async def webhook_done(self, webhook_id: str, key: str, now_ms: int) -> None:
        await self.webhooks.done(webhook_id, key, now_ms)

    async def lease_webhook(self, webhook_id: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        return await self.webhooks.lease(webhook_id, owner, now_ms, ttl_ms)

    async def prune_webhooks(self, before_ms: int) -> int:
        return await self.webhooks.prune(before_ms)

    # --- budgets (.budgets) ----------------------------------------------------------------
    async def take_budget(self, key: str, limit: int, period_ms: int, now_ms: int) -> int:
        return await self.budgets.take(key, limit, period_ms, now_ms)

    # --- pairing codes (.pairing) -------------------------------------------------------
    async def create_pairing(self, code_hash: str, pin: str, expires_ms: int) -> None:
        await self.pairings.create(code_hash, pin, expires_ms)

    async def redeem_pairing(self, code_hash: str, now_ms: int) -> Redemption:
        return await self.pairings.redeem(code_hash, now_ms)

    async def stats(self) -> StoreStats:
        self.api.check_open()
        messages = 0
        for name in self.streams:
            info = await self.api.request_unless(f"STREAM.INFO.{name}", {}, "info", refused)
            messages += int((info or {}).get("state", {}).get("messages", 0))
        devices = await self.devices.kv.count(self.layout.buckets.devices)
        return StoreStats(devices=devices, messages=messages)

    # --- housekeeping for tests and tools -------------------------------------------------
    async def destroy(self) -> None:
        """Delete the streams and the buckets (tests, `cluster` tooling)."""
        _, js = self.connection
        await setup.delete_streams(js, [*self.streams, *(f"KV_{b}" for b in self.bucket_names())])
