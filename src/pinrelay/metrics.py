"""Prometheus metrics, one registry per relay (so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.accepted_push = self.accepted.labels("push")
        self.delivered = Counter(
            "pinrelay_messages_delivered", "Messages written to a device link or inbox", registry=r
        )
        self.acked = Counter(
            "pinrelay_messages_acked", "Messages acknowledged by devices", registry=r
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
        self.commit_seconds = Histogram(
            "pinrelay_store_commit_seconds",
            "Store commit latency (one group commit)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.commit_batch = Histogram(
            "pinrelay_store_commit_batch",
            "Writes per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.backlog = Gauge(
            "pinrelay_backlog_messages", "Messages stored and not yet acknowledged", registry=r
        )
        self.devices = Gauge("pinrelay_devices", "Devices registered", registry=r)

    def observe_commit(self, seconds: float, writes: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(writes)
