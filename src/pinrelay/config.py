"""Relay configuration: command-line flags and PINRELAY_* environment variables."""

from __future__ import annotations

import os
import re
import resource
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pinrelay.core.channels import DEFAULT_MARKETING_CAP, FANOUT_PAGE
from pinrelay.core.chat import ChatLimits
from pinrelay.core.model import Limits
from pinrelay.core.monitors import Thresholds
from pinrelay.core.webpush import WebPushLimits

#: File descriptors kept back for the store, the HTTP API and logs.
FD_RESERVE = 256


@dataclass(frozen=True, slots=True)
class RelayConfig:
    data: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 7780
    link_port: int = 7781
    #: The host name devices use to reach the link (defaults to ``host``).
    public_host: str | None = None
    node: str = "node-1"
    region: str = "local"
    heartbeat_s: float = 30.0
    hello_timeout_s: float = 10.0
    default_window: int = 64
    max_window: int = 1024
    #: 0: as many as the open-file limit allows.
    max_links: int = 0
    sweep_interval_s: float = 5.0
    #: SQLite: a quiet relay commits small writes on its loop (store/sqlite.py).
    inline_commits: bool = True
    #: Marketing broadcasts a device gets a (UTC) day (core/channels.py).
    marketing_cap: int = DEFAULT_MARKETING_CAP
    #: How long an unfinished broadcast's fan-out may stand still before another
    #: relay (or this one, restarted) resumes it.
    broadcast_takeover_s: float = 30.0
    #: How long done and expired broadcasts, and audit lines, are kept (broadcast.py).
    broadcast_keep_days: float = 90.0
    audit_keep_days: float = 400.0
    #: Members a broadcast's fan-out stores per write.
    broadcast_page: int = FANOUT_PAGE
    #: How long a monitor stays red before it opens an incident, and green before
    #: the incident resolves (core/monitors.py).
    incident_after_s: float = 20.0
    #: How often a relay probes its store, judges its monitors, and reads its
    #: incidents and webhooks (each a store request: tests that count NATS traffic
    #: make it rare).
    watch_every_s: float = 1.0
    resolve_after_s: float = 60.0
    #: When each monitor is red (``--monitor NAME=VALUE``).
    monitor: Thresholds = field(default_factory=Thresholds)
    #: Failed authentications per source and PIN per minute before 429 (per source:
    #: 10 times as many; DECISIONS 31).
    auth_failure_limit: int = 10
    limits: Limits = field(default_factory=Limits)
    chat: ChatLimits = field(default_factory=ChatLimits)
    webpush: WebPushLimits = field(default_factory=WebPushLimits)
    #: The origin (``https://relay.example``) Web Push endpoints are made with, for a
    #: relay behind a proxy; None: ``http_url``.
    public_url: str | None = None
    admin_key: str | None = None
    #: None: the embedded SQLite store under ``data``.  ``nats://h1:p1,nats://h2:p2``:
    #: the JetStream engine on that NATS cluster (several relays share it).
    store: str | None = None
    #: JetStream only: devices spread over this many streams (fixed once data exists).
    partitions: int = 1
    #: JetStream only: read backlogs with batched Direct Get (any replica, checked
    #: against the device's last cursor), not one leader request per message.
    direct_reads: bool = True
    #: JetStream only: purge a device's acknowledged messages when its ack is written
    #: (about 130 µs of NATS CPU per message), instead of leaving them, unreadable, to
    #: expire with their TTL (docs/DECISIONS.md, entry 34).
    purge_acked: bool = False
    #: Cluster mode: how often this relay refreshes its record among the live relays,
    #: and how long the record lives without a refresh.
    relay_heartbeat_s: float = 2.0
    relay_ttl_s: float = 6.0
    #: HTTP API connections held at once; more get 503 (api/httpbounds.py). They come
    #: out of the open-file limit apart from the links: neither can starve the other.
    http_max_connections: int = 1024
    #: Seconds a request has for its request line and headers (from the connection,
    #: or from its first byte on a kept-alive one), and then for its whole body.
    http_header_timeout_s: float = 5.0
    http_body_timeout_s: float = 10.0
    #: Seconds an idle kept-alive HTTP connection is held.
    http_keepalive_timeout_s: float = 5.0
    #: Request line and headers together, bytes; more: 431 (a request line alone
    #: over ``MAX_REQUEST_LINE``: 414).
    http_max_header_bytes: int = 16 * 1024
    #: Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: addresses or
    #: networks separated by commas, "*" for any.  Empty: none, the peer is the client.
    forwarded_allow_ips: str = ""
    #: Least seconds between two ``system`` messages updating the same incident
    #: (opened and resolved always go out; link/system.py).
    incident_notify_every_s: float = 300.0
    #: Serve ``/metrics`` to anyone; off: only with the admin key.
    metrics_public: bool = False
    #: Seconds between two readings kept for incident reports (figures.py).
    figures_every_s: float = 10.0
    #: Outgoing webhooks (src/pinrelay/webhooks.py, DECISIONS 56): the longest wait
    #: between two attempts of one delivery, and how long a relay's lease on a
    #: subscription's outbox lives without renewal (another relay then takes over).
    webhook_retry_cap_s: float = 300.0
    webhook_lease_s: float = 15.0
    #: Seconds between two refreshes of the ``/status`` page (DECISIONS 60).
    status_refresh_s: int = 60

    @property
    def nats_urls(self) -> list[str] | None:
        """The NATS servers of ``store``, or None for the embedded store."""
        return nats_urls(self.store)

    @property
    def http_url(self) -> str:
        return f"http://{self._public_host()}:{self.port}"

    def _public_host(self) -> str:
        host = self.public_host or self.host
        if host in ("0.0.0.0", "::", ""):  # a wildcard is no address to connect to
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return host

    @property
    def push_origin(self) -> str:
        """Web Push endpoints' origin, which VAPID tokens must name as ``aud``."""
        return (self.public_url or self.http_url).rstrip("/")

    @property
    def link_url(self) -> str:
        return f"ws://{self._public_host()}:{self.link_port}/v1/link"


#: A node id names NATS subjects and KV keys: one token, no dots or wildcards.
NODE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def nats_urls(store: str | None) -> list[str] | None:
    """``nats://h1:p1,nats://h2:p2`` as a list; None for the embedded store.

    Raises ValueError for anything that is neither empty nor a list of nats:// (or
    tls://) URLs.
    """
    if not store:
        return None
    urls = [u.strip() for u in store.split(",") if u.strip()]
    if not urls or not all(u.startswith(("nats://", "tls://")) for u in urls):
        raise ValueError(f"--store takes nats://host:port URLs separated by commas, not {store!r}")
    return urls


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the links it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft == resource.RLIM_INFINITY:
        soft = 1_000_000
    return max(16, soft - FD_RESERVE)


def admin_key_from(data: Path, env: dict[str, str] | None = None) -> tuple[str, Path | None]:
    """The admin key: ``PINRELAY_ADMIN_KEY``, else ``<data>/admin.key`` (made 0600)."""
    env = dict(os.environ) if env is None else env
    key = env.get("PINRELAY_ADMIN_KEY")
    if key:
        return key, None
    path = data / "admin.key"
    if path.exists():
        return path.read_text().strip(), path
    from pinrelay.core.ids import new_secret

    key = "pra_" + new_secret(os.urandom, 32)
    data.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, path


#: ``--monitor`` names and the Thresholds field each sets (with its unit's factor).
_MONITOR_NAMES: dict[str, tuple[str, int]] = {
    "store-slow-ms": ("store_slow_ms", 1),
    "store-fail-ms": ("store_fail_ms", 1),
    "links-drop": ("links_drop", 0),
    "links-min": ("links_min", 1),
    "lag-ms": ("lag_ms", 1),
    "shed-per-s": ("shed_per_s", 0),
    "disk-free-mib": ("disk_free_min", 1024 * 1024),
}


def monitor_thresholds(items: list[str]) -> Thresholds:
    """Thresholds from ``--monitor NAME=VALUE`` items (ValueError: one line why)."""
    given: dict[str, float | int] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in _MONITOR_NAMES:
            known = ", ".join(_MONITOR_NAMES)
            raise ValueError(f"--monitor {item!r}: the names are {known}")
        field_name, factor = _MONITOR_NAMES[name]
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--monitor {item!r}: {value!r} is not a number") from None
        if not number >= 0 or number == float("inf"):
            raise ValueError(f"--monitor {item!r}: must be a number at least 0")
        given[field_name] = int(number * factor) if factor else number
    return Thresholds(**given)  # type: ignore[arg-type]
