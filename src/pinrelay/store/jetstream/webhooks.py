"""Webhooks on the cluster (core/webhooks.py, DECISIONS 56), in ``<bucket_prefix>_channels``.

Beside the channels' and incidents' keys (the bucket is replicated R3 and file
stored like every bucket of the store), under their own prefixes:

- ``wh.<webhook id>``: the subscription (:class:`~pinrelay.core.webhooks.Webhook`,
  JSON).  The count per tenant is checked by listing before the create: two
  creates racing through two relays may pass it together (a bound, not a quota).
- ``wo.<webhook id>.<order key>``: one outbox entry
  (:class:`~pinrelay.core.webhooks.OutboxEntry`).  Enqueued with a create (the
  revision 0 compare-and-set), so every relay may enqueue the same delivery and
  one entry results (a create refused as "present" counts only once a read
  shows the entry: a leader without its quorum refuses so for its own
  uncommitted proposal); answered 2xx it is rewritten with ``done_ms`` and kept until
  pruned, so a relay that hears the revision late cannot enqueue it again.  The
  order key sorts as text (rule 3); listing is the stream's subjects under
  ``wo.<webhook id>.*``, from its leader.
- ``wl.<webhook id>``: the lease ``{owner, until_ms}`` on the subscription's
  outbox, changed by compare-and-set (:class:`~.cas.Keyed`): one relay delivers a
  subscription at a time, and another takes over once ``until_ms`` is past.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.webhooks import OutboxEntry, Webhook, is_webhook_id
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.cas import Keyed
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import json_enc


class Lease(Struct, frozen=True, kw_only=True):
    owner: str
    until_ms: int


class Webhooks:
    """Subscriptions, outboxes and leases (module doc)."""

    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.hooks = Keyed(kv, bucket, Webhook)
        self.entries = Keyed(kv, bucket, OutboxEntry)
        self.leases = Keyed(kv, bucket, Lease)

    async def put(self, webhook: Webhook, max_per_tenant: int) -> None:
        self.api.check_open()
        if sum(1 for h in await self.listing() if h.tenant == webhook.tenant) >= max_per_tenant:
            raise PinrelayError(
                f"at most {max_per_tenant} webhooks: delete one first", ErrorCode.CONFLICT
            )
        raw = json_enc.encode(webhook)
        if await self.kv.create(self.bucket, f"wh.{webhook.id}", raw) is None:
            got = await self.kv.get(self.bucket, f"wh.{webhook.id}")
            if got is None:  # refused as present, none read: uncommitted (DECISIONS 62)
                raise StoreClosed(f"webhook {webhook.id} not committed yet")
            if got.value != raw:  # else ours: a create whose answer was lost
                raise PinrelayError("webhook id taken: retry", ErrorCode.CONFLICT)

    async def get(self, webhook_id: str) -> Webhook | None:
        self.api.check_open()
        if not is_webhook_id(webhook_id):
            return None
        return await self.hooks.get(f"wh.{webhook_id}")

    async def listing(self) -> list[Webhook]:
        self.api.check_open()
        keys = await self.kv.keys(self.bucket, "wh.*")
        found = [h for h in await self.hooks.many(keys) if h is not None]
        found.sort(key=lambda h: (h.created_ms, h.id))
        return found

    async def delete(self, webhook_id: str) -> bool:
        self.api.check_open()
        if not is_webhook_id(webhook_id) or await self.get(webhook_id) is None:
            return False
        await self.kv.remove(self.bucket, f"wh.{webhook_id}")
        await self.kv.remove(self.bucket, f"wo.{webhook_id}.>")
        await self.kv.remove(self.bucket, f"wl.{webhook_id}")
        return True

    async def enqueue(self, entries: Sequence[OutboxEntry]) -> None:
        self.api.check_open()
        live = {w for w in {e.webhook for e in entries} if await self.get(w) is not None}
        for entry in entries:
            if entry.webhook not in live:
                continue  # deleted: its late events are dropped
            # create: absent only (rule 2); present (pending or done) stays as it is.
            key = f"wo.{entry.webhook}.{entry.key}"
            created = await self.kv.create(self.bucket, key, json_enc.encode(entry))
            # "Present" may be a leader's own proposal it cannot commit (a leader
            # without its quorum answers the next create so): durable only once a
            # read shows it (the caller keeps the entry until then).
            if created is None and await self.kv.get(self.bucket, key) is None:
                raise StoreClosed(f"outbox entry {key} not committed yet")

    async def pending(self, webhook_id: str, limit: int) -> list[OutboxEntry]:
        self.api.check_open()
        if not is_webhook_id(webhook_id):
            return []
        keys = sorted(await self.kv.keys(self.bucket, f"wo.{webhook_id}.*"))
        found: list[OutboxEntry] = []
        step = max(limit, 16)
        for at in range(0, len(keys), step):
            found += [
                e for e in await self.entries.many(keys[at : at + step]) if e and e.done_ms is None
            ]
            if len(found) >= limit:
                break
        return found[:limit]

    async def done(self, webhook_id: str, key: str, now_ms: int) -> None:
        self.api.check_open()

        def mark(old: OutboxEntry | None) -> OutboxEntry | None:
            if old is None or old.done_ms is not None:
                return None
            return OutboxEntry(
                webhook=old.webhook,
                key=old.key,
                id=old.id,
                event=old.event,
                incident=old.incident,
                done_ms=now_ms,
            )

        await self.entries.change(f"wo.{webhook_id}.{key}", mark)

    async def lease(self, webhook_id: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        self.api.check_open()

        def take(old: Lease | None) -> Lease | None:
            if old is not None and old.owner != owner and old.until_ms > now_ms:
                return None
            return Lease(owner=owner, until_ms=now_ms + ttl_ms)

        after, _ = await self.leases.change(f"wl.{webhook_id}", take)
        return after is not None and after.owner == owner and after.until_ms > now_ms

    async def prune(self, before_ms: int) -> int:
        self.api.check_open()
        keys = await self.kv.keys(self.bucket, "wo.*.*")
        gone = 0
        for key, entry in zip(keys, await self.entries.many(keys), strict=True):
            if entry is not None and entry.done_ms is not None and entry.done_ms < before_ms:
                await self.kv.remove(self.bucket, key)
                gone += 1
        return gone
