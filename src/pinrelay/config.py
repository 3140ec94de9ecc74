"""Relay configuration: command-line flags and PINRELAY_* environment variables."""

from __future__ import annotations

import os
import resource
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pinrelay.core.model import Limits

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
    #: Failed authentications per source (and per PIN) per minute before 429.
    auth_failure_limit: int = 10
    limits: Limits = field(default_factory=Limits)
    admin_key: str | None = None

    @property
    def link_url(self) -> str:
        host = self.public_host or self.host
        if host in ("0.0.0.0", "::", ""):  # a wildcard is no address to connect to
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.link_port}/v1/link"


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
