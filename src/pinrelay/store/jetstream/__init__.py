"""Cluster engine: NATS JetStream (DESIGN, "Engines"; issue 5).

One module per concern, each small (issue 11); :class:`JetStreamStore` ties them
to the Store protocol:

- ``layout``: stream, subject and bucket names (pure);
- ``setup``: connecting, creating or checking the streams and buckets;
- ``errors``: the one boundary where nats-py's exceptions and JetStream API error
  answers become StoreClosed (retried first when transient);
- ``api``: raw JetStream API calls (requests, publishes, batched Direct Get), retried;
- ``records``: the stored message and KV records, with their codecs;
- ``kv``: KV get and compare-and-set, on the bucket's leader;
- ``devices``: device records (compare-and-set, last_cursor);
- ``keys``: API keys and their hash index;
- ``idempotency``: Idempotency-Key leases;
- ``appends``: publishing (headers, atomic batches, last_cursor);
- ``group``: group commit, concurrent appends sharing atomic batches;
- ``reads``: reading a backlog (leader or batched Direct Get);
- ``acks``: acks (purges) and the expiry sweep;
- ``contacts``: each device's contacts, one record per device (core/social.py);
- ``unread``: read-receipt bookkeeping, an entry per unread chat message;
- ``groups``: chat groups, a record per group and an index entry per member;
- ``pairing``: pairing codes, used once, the newest per device;
- ``subscriptions``: Web Push subscriptions, a record per id and an index per device;
- ``expiry``: failed receipts, a JetStream schedule per chat message;
- ``tenants``: tenants, a cached record per tenant (the default one made at open);
- ``store``: :class:`JetStreamStore` itself.

A message's cursor is its stream sequence: strictly increasing per device across
relays and failovers, with gaps (other devices' messages, collapsed topics), so not
SQLite's per-device 1, 2, 3 (the contract promises only "increasing").
"""

from pinrelay.store.jetstream.appends import MAX_ATOMIC_BATCH, ttl_seconds
from pinrelay.store.jetstream.errors import ApiError, setup_may_retry
from pinrelay.store.jetstream.idempotency import IDEMPOTENCY_LEASE_S, IDEMPOTENCY_TTL_S
from pinrelay.store.jetstream.layout import MAX_PARTITIONS, PARTITIONS_META
from pinrelay.store.jetstream.setup import ensure_bucket, settling, together
from pinrelay.store.jetstream.store import JetStreamStore

__all__ = [
    "IDEMPOTENCY_LEASE_S",
    "IDEMPOTENCY_TTL_S",
    "MAX_ATOMIC_BATCH",
    "MAX_PARTITIONS",
    "PARTITIONS_META",
    "ApiError",
    "JetStreamStore",
    "ensure_bucket",
    "settling",
    "setup_may_retry",
    "together",
    "ttl_seconds",
]
