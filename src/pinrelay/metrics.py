"""Prometheus metrics, one registry per relay (so tests can run several)."""

from __future__ import annotations

from bisect import bisect_left
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pinrelay.core.readings import DELAY_BOUNDS_MS


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Tally:
    """A counter on the push path, kept as a plain int until the next scrape.

    prometheus_client takes a lock at every ``inc``; a push made three of them.
    """

    __slots__ = ("_counter", "count")

    def __init__(self, counter: _Incrementable) -> None:
        self._counter = counter
        self.count = 0

    def inc(self, amount: int = 1) -> None:
        self.count += amount

    def fold(self) -> None:
        if self.count:
            self._counter.inc(self.count)
            self.count = 0


class Waits:
    """How long messages waited for a linked device (core/readings.py), counted by
    DELAY_BOUNDS_MS bucket and the longest, since the monitors last took them."""

    __slots__ = ("counts", "longest", "tenants")

    def __init__(self) -> None:
        self.counts = [0] * (len(DELAY_BOUNDS_MS) + 1)
        self.longest = 0
        #: The counts per tenant (devices of no tenant: not kept).
        self.tenants: dict[str, list[int]] = {}

    def observe(self, wait_ms: int, tenant: str | None = None) -> None:
        bucket = bisect_left(DELAY_BOUNDS_MS, wait_ms)
        self.counts[bucket] += 1
        if wait_ms > self.longest:
            self.longest = wait_ms
        if tenant is not None:
            counts = self.tenants.get(tenant)
            if counts is None:
                counts = self.tenants[tenant] = [0] * len(self.counts)
            counts[bucket] += 1

    def take_tenants(self) -> dict[str, tuple[int, ...]]:
        """The counts per tenant since the last take."""
        tenants, self.tenants = self.tenants, {}
        return {t: tuple(c) for t, c in tenants.items()}

    def take(self) -> tuple[tuple[int, ...], int]:
        """The counts and the longest wait since the last take (empty: none)."""
        counts, longest = self.counts, self.longest
        self.counts, self.longest = [0] * len(counts), 0
        return (tuple(counts) if any(counts) else ()), longest


class Owed:
    """Linked devices the relay owes a message it has not sent (delivery.py), by
    since when: the delivery monitor's lag of a delivery that stopped.

    Kept in the order owing began: the clock only moves on, so the first is the
    oldest, and the monitors read it in O(1) however many devices are linked
    (a wall clock stepped back only makes it read a little young).  Starting and
    stopping are a dict insert and delete.
    """

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since: dict[object, int] = {}

    def start(self, who: object, at_ms: int) -> None:
        if who not in self._since:
            self._since[who] = at_ms

    def stop(self, who: object) -> None:
        self._since.pop(who, None)

    def oldest(self) -> int | None:
        """Since when the longest owing device has been owed (None: none is)."""
        return next(iter(self._since.values()), None)

    def __len__(self) -> int:
        return len(self._since)


#: Commit observations kept before they are folded into the histograms.
_COMMITS_KEPT = 1024


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.links_open = Gauge("pinrelay_links_open", "Authenticated device links", registry=r)
        self.links_capacity = Gauge(
            "pinrelay_links_capacity", "Links this process can hold", registry=r
        )
        self.links_refused = Counter(
            "pinrelay_links_refused", "Links refused at capacity or while draining", registry=r
        )
        self.accepted = Counter(
            "pinrelay_messages_accepted", "Messages stored durably", ["kind"], registry=r
        )
        self.accepted_push = Tally(self.accepted.labels("push"))
        self.delivered = Tally(
            Counter(
                "pinrelay_messages_delivered",
                "Messages written to a device link or inbox",
                registry=r,
            )
        )
        self.acked = Tally(
            Counter("pinrelay_messages_acked", "Messages acknowledged by devices", registry=r)
        )
        self.expired = Counter(
            "pinrelay_messages_expired", "Messages swept after their TTL", registry=r
        )
        self.dropped = Counter(
            "pinrelay_messages_dropped",
            "ttl=0 messages dropped because the device was offline",
            registry=r,
        )
        self.auth_failures = Counter(
            "pinrelay_auth_failures", "Failed authentications", ["edge"], registry=r
        )
        self.quota_refusals = Counter(
            "pinrelay_quota_refusals",
            "Calls and links refused by a tenant quota (rate counts each message)",
            ["quota"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "pinrelay_store_commit_seconds",
            "Store commit latency (one group commit)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.inline_commits = Gauge(
            "pinrelay_store_inline_commits",
            "SQLite group commits made on the relay's loop, not by its writer process, "
            "since the relay started",
            registry=r,
        )
        self.commit_batch = Histogram(
            "pinrelay_store_commit_batch",
            "Writes per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.backlog = Gauge(
            "pinrelay_backlog_messages",
            "Messages stored (a cluster keeps acknowledged ones, unreadable, until they expire)",
            registry=r,
        )
        self.devices = Gauge("pinrelay_devices", "Devices registered", registry=r)
        #: Waits of messages for linked devices (the delivery monitor and reports).
        self.waits = Waits()
        self.owed = Owed()
        owed = self.owed
        Gauge(
            "pinrelay_delivery_owed",
            "Linked devices owed a stored message not sent yet (window not full)",
            registry=r,
        ).set_function(lambda: len(owed))
        self.webhook_attempts = Counter(
            "pinrelay_webhook_attempts",
            "Webhook deliveries attempted by this relay, by result (ok: answered 2xx)",
            ["result"],
            registry=r,
        )
        self.long_polls = Gauge(
            "pinrelay_inbox_long_polls",
            "Inbox requests waiting for a message (GET .../inbox?wait=)",
            registry=r,
        )
        self.webhooks_known = Gauge(
            "pinrelay_webhooks_known",
            "Webhook subscriptions this relay has read (it delivers them while the store is away)",
            registry=r,
        )
        self.webhooks_in_memory = Gauge(
            "pinrelay_webhook_deliveries_in_memory",
            "Webhook deliveries heard while the store was away, not written to it yet",
            registry=r,
        )

        self._commits: list[tuple[float, int]] = []

    def observe_commit(self, seconds: float, writes: int) -> None:
        self._commits.append((seconds, writes))
        if len(self._commits) >= _COMMITS_KEPT:
            self._fold_commits()

    def _fold_commits(self) -> None:
        commits, self._commits = self._commits, []
        for seconds, writes in commits:
            self.commit_seconds.observe(seconds)
            self.commit_batch.observe(writes)

    def exposition(self) -> bytes:
        """The text format for ``/metrics``, with every tally folded in first."""
        for value in vars(self).values():
            if isinstance(value, Tally):  # every one, including any added later
                value.fold()
        self._fold_commits()
        return generate_latest(self.registry)
