"""``pinrelay serve``: a relay on the embedded SQLite store or on a NATS JetStream
cluster, from its flags (config.py holds the defaults)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from pinrelay import __version__
from pinrelay.cli_common import fail, out
from pinrelay.config import RelayConfig
from pinrelay.core.channels import DEFAULT_MARKETING_CAP, FANOUT_PAGE
from pinrelay.core.chat import ChatLimits


def _origin(url: str | None) -> str | None:
    """``--public-url`` as an origin: http(s), a host, no path."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        fail(f"--public-url {url!r}: use an origin such as https://relay.example")
    return f"{parts.scheme}://{parts.netloc}"


# `serve --help` in panels: each panel is a table of its own, so one long option
# name or range does not squeeze every help text to a narrow column.
_WHERE = "Where it runs"
_CLUSTER = "Cluster store (--store)"
_SQLITE = "SQLite store"
_LINKS = "Device links"
_LIMITS = "Limits"
_HTTP = "HTTP API"
_BROADCASTS = "Broadcasts and audit"
_INCIDENTS = "Incidents, monitors, webhooks"


# --- serve ----------------------------------------------------------------------
def _default(field: str) -> Any:
    """A setting's default, from config.py: one place for it, shown by ``--help``."""
    return next(f.default for f in dataclasses.fields(RelayConfig) if f.name == field)


def serve(
    data: Annotated[
        Path, typer.Option(rich_help_panel=_WHERE, help="Folder for the database and admin key.")
    ] = Path("data"),
    host: Annotated[
        str, typer.Option(rich_help_panel=_WHERE, help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(rich_help_panel=_WHERE, help="HTTP API port.")] = 7780,
    link_port: Annotated[
        int, typer.Option(rich_help_panel=_WHERE, help="Device link (WebSocket) port.")
    ] = 7781,
    public_host: Annotated[
        str | None, typer.Option(rich_help_panel=_WHERE, help="Host name devices use in link URLs.")
    ] = None,
    node: Annotated[
        str,
        typer.Option(
            "--node-id",
            "--node",
            rich_help_panel=_WHERE,
            help="This relay's name, unique in a cluster (letters, digits, - and _).",
        ),
    ] = "node-1",
    store: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=_CLUSTER,
            help="nats://h1:4222,nats://h2:4222,...: run on that NATS JetStream cluster "
            "(several relays share it); default: the embedded SQLite store under --data.",
            show_default=False,
        ),
    ] = None,
    region: Annotated[
        str, typer.Option(rich_help_panel=_WHERE, help="This relay's region.")
    ] = "local",
    partitions: Annotated[
        int,
        typer.Option(
            rich_help_panel=_CLUSTER,
            help="With --store: spread devices over this many streams (1-64), so more "
            "than one NATS node leads message traffic. Every relay of a cluster must use "
            "the same count, and it cannot change once messages are stored.",
        ),
    ] = 1,
    leader_reads: Annotated[
        bool,
        typer.Option(
            "--leader-reads",
            rich_help_panel=_CLUSTER,
            help="With --store: read backlogs from each stream's leader, one request per "
            "message, instead of batched Direct Get from any replica.",
        ),
    ] = False,
    purge_acked: Annotated[
        bool,
        typer.Option(
            "--purge-acked",
            rich_help_panel=_CLUSTER,
            help="With --store: delete a device's acknowledged messages when its ack is "
            "written, at about 130 µs of NATS CPU a message, instead of leaving them, "
            "unreadable, until their TTL expires.",
        ),
    ] = False,
    heartbeat: Annotated[
        float, typer.Option(rich_help_panel=_LINKS, help="Seconds of silence before a ping.")
    ] = 30.0,
    hello_timeout: Annotated[
        float, typer.Option(rich_help_panel=_LINKS, help="Seconds a new link has to say hello.")
    ] = 10.0,
    max_links: Annotated[
        int,
        typer.Option(
            rich_help_panel=_LINKS, help="Most links to hold (0: the open-file limit allows)."
        ),
    ] = 0,
    sweep_interval: Annotated[
        float,
        typer.Option(
            rich_help_panel=_SQLITE,
            help="Seconds between sweeps of expired messages (SQLite; JetStream uses TTLs).",
        ),
    ] = 5.0,
    marketing_cap: Annotated[
        int,
        typer.Option(
            min=0,
            rich_help_panel=_BROADCASTS,
            help="Marketing broadcasts a device gets a (UTC) day.",
        ),
    ] = DEFAULT_MARKETING_CAP,
    broadcast_takeover: Annotated[
        float,
        typer.Option(
            min=1.0,
            rich_help_panel=_BROADCASTS,
            help="Seconds an unfinished broadcast's fan-out may stand still before "
            "a relay resumes it.",
        ),
    ] = 30.0,
    broadcast_keep_days: Annotated[
        float,
        typer.Option(
            min=1.0,
            rich_help_panel=_BROADCASTS,
            help="Days a broadcast's record and counts are kept once it is done and "
            "its messages expired (make-goods: always).",
        ),
    ] = 90.0,
    audit_keep_days: Annotated[
        float,
        typer.Option(
            min=1.0, rich_help_panel=_BROADCASTS, help="Days the audit log's lines are kept."
        ),
    ] = 400.0,
    inline_commits: Annotated[
        bool,
        typer.Option(
            rich_help_panel=_SQLITE,
            help="SQLite: while the writer process is idle, commit small writes (a chat "
            "message, a receipt, an ack) on the relay's loop, with the same fsync, "
            "instead of handing them over.",
        ),
    ] = True,
    incident_notify_every: Annotated[
        float,
        typer.Option(
            min=0.0,
            rich_help_panel=_INCIDENTS,
            help="Least seconds between two system messages updating the same incident "
            "(opened and resolved always go out at once).",
        ),
    ] = 300.0,
    broadcast_page: Annotated[
        int,
        typer.Option(
            min=1,
            max=1000,
            rich_help_panel=_BROADCASTS,
            help="Members a broadcast's fan-out stores per write.",
        ),
    ] = FANOUT_PAGE,
    max_data: Annotated[
        int, typer.Option(rich_help_panel=_LIMITS, help="Largest message data, bytes.")
    ] = 4096,
    auth_failure_limit: Annotated[
        int,
        typer.Option(
            rich_help_panel=_LIMITS,
            help="Failed authentications per source and PIN per minute (source: 10x).",
        ),
    ] = 10,
    max_ttl: Annotated[
        int, typer.Option(rich_help_panel=_LIMITS, help="Largest ttl, seconds.")
    ] = 30 * 24 * 3600,
    invites_per_hour: Annotated[
        int,
        typer.Option(
            rich_help_panel=_LIMITS,
            help="Contact invitations a device may send per hour (on all relays together).",
        ),
    ] = 20,
    sends_per_minute: Annotated[
        int,
        typer.Option(rich_help_panel=_LIMITS, help="Chat messages a device may send per minute."),
    ] = 600,
    chat_bytes_per_minute: Annotated[
        int,
        typer.Option(
            rich_help_panel=_LIMITS,
            help="Bytes a device's chat messages may store per minute, counted per copy "
            "(a group message: one per member), each its text and 256.",
        ),
    ] = ChatLimits().bytes_per_minute,
    public_url: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=_WHERE,
            help="Origin of Web Push endpoints, e.g. https://relay.example (a proxy).",
        ),
    ] = None,
    webpush_per_minute: Annotated[
        int,
        typer.Option(
            rich_help_panel=_LIMITS, help="Web Push requests a minute to one subscription."
        ),
    ] = 600,
    webpush_sender_per_minute: Annotated[
        int,
        typer.Option(
            rich_help_panel=_LIMITS,
            help="Web Push requests a minute from one sender (VAPID key or address).",
        ),
    ] = 6000,
    http_max_connections: Annotated[
        int,
        typer.Option(
            rich_help_panel=_HTTP,
            help="HTTP API connections held at once; more get 503 + Retry-After. They "
            "come out of the open-file limit apart from the links.",
        ),
    ] = _default("http_max_connections"),
    http_header_timeout: Annotated[
        float,
        typer.Option(
            rich_help_panel=_HTTP,
            help="Seconds a request has for its request line and headers.",
        ),
    ] = _default("http_header_timeout_s"),
    http_body_timeout: Annotated[
        float,
        typer.Option(
            rich_help_panel=_HTTP,
            help="Seconds a request has for its body, once its headers are in.",
        ),
    ] = _default("http_body_timeout_s"),
    http_keepalive_timeout: Annotated[
        float,
        typer.Option(
            rich_help_panel=_HTTP,
            help="Seconds an idle kept-alive HTTP connection is held.",
        ),
    ] = _default("http_keepalive_timeout_s"),
    http_max_header_bytes: Annotated[
        int,
        typer.Option(
            rich_help_panel=_HTTP,
            help="Largest request line and headers together, bytes; more get 431.",
        ),
    ] = _default("http_max_header_bytes"),
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            rich_help_panel=_HTTP,
            help="Proxies (addresses or networks, comma-separated; * for any) whose "
            "X-Forwarded-For and X-Forwarded-Proto are believed. Empty (the default):"
            " none; the peer is the client.",
            show_default=False,
        ),
    ] = _default("forwarded_allow_ips"),
    incident_after: Annotated[
        float,
        typer.Option(
            min=1.0,
            max=30.0,
            rich_help_panel=_INCIDENTS,
            help="Seconds a monitor stays red before it opens an incident.",
        ),
    ] = 20.0,
    resolve_after: Annotated[
        float,
        typer.Option(
            min=1.0,
            rich_help_panel=_INCIDENTS,
            help="Seconds the monitors stay green before it resolves.",
        ),
    ] = 60.0,
    monitor: Annotated[
        list[str] | None,
        typer.Option(
            rich_help_panel=_INCIDENTS,
            help="A monitor's threshold, NAME=VALUE, repeatable: store-slow-ms, "
            "store-fail-ms, links-drop, links-min, lag-ms, shed-per-s, disk-free-mib.",
            show_default=False,
        ),
    ] = None,
    metrics_public: Annotated[
        bool,
        typer.Option(
            "--metrics-public",
            rich_help_panel=_HTTP,
            help="Serve /metrics to anyone; without it, /metrics needs the admin key.",
            show_default=False,
        ),
    ] = False,
    watch_every: Annotated[
        float,
        typer.Option(
            min=0.1,
            rich_help_panel=_INCIDENTS,
            help="Seconds between two store probes and monitor checks, and two reads of"
            " the incidents and webhooks.",
        ),
    ] = _default("watch_every_s"),
    figures_every: Annotated[
        float,
        typer.Option(
            min=0.1,
            rich_help_panel=_INCIDENTS,
            help="Seconds between two readings of this relay's figures kept in the store "
            "for incident reports (90 days).",
        ),
    ] = _default("figures_every_s"),
    webhook_retry_cap: Annotated[
        float,
        typer.Option(
            rich_help_panel=_INCIDENTS,
            help="Longest wait, seconds, between two attempts of one webhook delivery.",
        ),
    ] = _default("webhook_retry_cap_s"),
    webhook_lease: Annotated[
        float,
        typer.Option(
            rich_help_panel=_INCIDENTS,
            help="Seconds a relay's lease on a webhook's outbox lives unrenewed; then"
            " another relay delivers it.",
        ),
    ] = _default("webhook_lease_s"),
    status_refresh: Annotated[
        int,
        typer.Option(
            rich_help_panel=_INCIDENTS,
            help="Seconds between two refreshes of the /status page, 5 to 3600.",
        ),
    ] = _default("status_refresh_s"),
    log_level: Annotated[
        str, typer.Option(rich_help_panel=_WHERE, help="debug, info, warning, error.")
    ] = "info",
) -> None:
    """Run a relay on the embedded SQLite store, or on a NATS JetStream cluster (--store)."""
    from pinrelay.config import (
        NODE_ID_RE,
        admin_key_from,
        monitor_thresholds,
        nats_urls,
    )
    from pinrelay.core.errors import PinrelayError
    from pinrelay.core.model import Limits
    from pinrelay.core.webpush import WebPushLimits
    from pinrelay.relay import Relay
    from pinrelay.relay import serve as run_relay

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not NODE_ID_RE.match(node):
        fail(f"--node-id {node!r}: use 1 to 64 letters, digits, '-' or '_'")
    if not 1 <= partitions <= 64:
        fail(f"--partitions {partitions}: use 1 to 64")
    if http_max_connections < 1:
        fail(f"--http-max-connections {http_max_connections}: use 1 or more")
    if http_max_header_bytes < 1024:
        fail(f"--http-max-header-bytes {http_max_header_bytes}: use 1024 or more")
    if not 5 <= status_refresh <= 3600:
        fail(f"--status-refresh {status_refresh}: use 5 to 3600 seconds")
    for flag, seconds in (
        ("--http-header-timeout", http_header_timeout),
        ("--http-body-timeout", http_body_timeout),
        ("--http-keepalive-timeout", http_keepalive_timeout),
        ("--webhook-retry-cap", webhook_retry_cap),
        ("--webhook-lease", webhook_lease),
    ):
        if not seconds > 0:
            fail(f"{flag} {seconds:g}: use more than 0 seconds")
    for flag, count in (
        ("--auth-failure-limit", auth_failure_limit),
        ("--invites-per-hour", invites_per_hour),
        ("--sends-per-minute", sends_per_minute),
        ("--chat-bytes-per-minute", chat_bytes_per_minute),
        ("--webpush-per-minute", webpush_per_minute),
        ("--webpush-sender-per-minute", webpush_sender_per_minute),
    ):
        if count < 1:
            fail(f"{flag} {count}: use 1 or more")
    try:
        urls = nats_urls(store)
    except ValueError as exc:
        fail(str(exc))
    from pinrelay.relay import lock_data_folder

    try:
        thresholds = monitor_thresholds(monitor or [])
    except ValueError as exc:
        fail(str(exc))
    try:  # before anything is written there (admin.key)
        lock = lock_data_folder(data)
    except OSError as exc:
        fail(f"cannot start: {exc}")
    try:
        admin_key, key_path = admin_key_from(data)
    except OSError as exc:
        fail(f"cannot use data folder {data}: {exc}")
    config = RelayConfig(
        data=data,
        host=host,
        port=port,
        link_port=link_port,
        public_host=public_host,
        node=node,
        region=region,
        heartbeat_s=heartbeat,
        hello_timeout_s=hello_timeout,
        sweep_interval_s=sweep_interval,
        marketing_cap=marketing_cap,
        broadcast_takeover_s=broadcast_takeover,
        broadcast_keep_days=broadcast_keep_days,
        audit_keep_days=audit_keep_days,
        inline_commits=inline_commits,
        broadcast_page=broadcast_page,
        incident_after_s=incident_after,
        resolve_after_s=resolve_after,
        monitor=thresholds,
        incident_notify_every_s=incident_notify_every,
        auth_failure_limit=auth_failure_limit,
        max_links=max_links,
        limits=Limits(max_data_bytes=max_data, max_ttl_s=max_ttl),
        chat=ChatLimits(
            invites_per_hour=invites_per_hour,
            sends_per_minute=sends_per_minute,
            bytes_per_minute=chat_bytes_per_minute,
        ),
        webpush=WebPushLimits(webpush_per_minute, webpush_sender_per_minute),
        public_url=_origin(public_url),
        admin_key=admin_key,
        store=",".join(urls) if urls else None,
        partitions=partitions,
        direct_reads=not leader_reads,
        purge_acked=purge_acked,
        http_max_connections=http_max_connections,
        http_header_timeout_s=http_header_timeout,
        http_body_timeout_s=http_body_timeout,
        http_keepalive_timeout_s=http_keepalive_timeout,
        http_max_header_bytes=http_max_header_bytes,
        forwarded_allow_ips=forwarded_allow_ips,
        metrics_public=metrics_public,
        figures_every_s=figures_every,
        watch_every_s=watch_every,
        webhook_retry_cap_s=webhook_retry_cap,
        webhook_lease_s=webhook_lease,
        status_refresh_s=status_refresh,
    )

    def ready(relay: Relay) -> None:
        where = f"in {escape(str(key_path))}" if key_path else "from $PINRELAY_ADMIN_KEY"
        store = (
            f"  store       NATS JetStream at {escape(', '.join(urls))} (region {escape(region)})"
            if urls
            else f"  data        {escape(str(data.resolve()))}"
        )
        for line in (
            f"[bold green]pinrelay {__version__}[/] relay [bold]{node}[/] is up",
            f"  HTTP API    http://{public_host or host}:{port}  (OpenAPI: /openapi.json)",
            f"  device link {config.link_url}",
            store,
            f"  admin key   {where}",
            f"  capacity    {relay.max_links} links",
        ):
            # One line each however long (a log keeps them whole; tests grep them).
            out.print(line, soft_wrap=True)
        sys.stdout.flush()

    profile_to = os.environ.get("PINRELAY_PROFILE")  # a developer's switch: cProfile
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        import uvloop

        uvloop.run(run_relay(config, on_ready=ready, lock=lock))
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another process has that port: choose others with --port and --link-port)"
        fail(f"cannot start: {exc}{hint}")
    except PinrelayError as exc:  # the store cannot be reached or set up
        fail(f"cannot start: {exc.detail}")
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)


def register(app: typer.Typer) -> None:
    app.command()(serve)
