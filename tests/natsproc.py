"""Real nats-server processes for tests: a JetStream cluster on 127.0.0.1, stopped by pid.

Each node gets free ports, its own store directory and its own process group
(``start_new_session=True``); :meth:`NatsNode.stop` signals only that pid
(SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.relayproc import TIMEOUT_FACTOR, free_port

NATS_SERVER = Path(sys.executable).parent / "nats-server"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies without its finalizers
    (a pytest-timeout exit, a SIGKILL), so no nats-server outlives the run."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class NatsNode:
    """One nats-server with JetStream, a member of a cluster of ``route_ports``."""

    def __init__(self, name: str, directory: Path, cluster_name: str) -> None:
        self.name = name
        self.directory = directory
        self.cluster_name = cluster_name
        self.port = free_port()
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / f"{name}.log"
        self.config = directory / f"{name}.conf"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self, routes: list[int]) -> None:
        store = self.directory / f"{self.name}-js"
        store.mkdir(parents=True, exist_ok=True)
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.config.write_text(
            f"""
server_name: {self.name}
listen: 127.0.0.1:{self.port}
http: 127.0.0.1:{self.http_port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 2GB
}}
cluster {{
  name: {self.cluster_name}
  listen: 127.0.0.1:{self.cluster_port}
  routes: [{route_urls}]
}}
"""
        )

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(NATS_SERVER), "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies with no chance to hand over."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def jsz(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.http_port}/jsz", timeout=2.0)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


class NatsCluster:
    """Three (or ``size``) clustered JetStream nodes on loopback."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = [NatsNode(f"n{i + 1}", directory, "pinrelay-test") for i in range(size)]
        routes = [n.cluster_port for n in self.nodes]
        for node in self.nodes:
            node.write_config(routes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every live node answers and agrees on a JetStream meta leader."""
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        last: object = None
        while time.monotonic() < deadline:
            try:
                leaders = set()
                for node in self.nodes:
                    if not node.alive:
                        continue
                    meta = node.jsz().get("meta_cluster") or {}
                    leaders.add(meta.get("leader") or "")
                if len(leaders) == 1 and "" not in leaders:
                    return
                last = leaders
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(f"JetStream cluster not ready in {timeout} s: {last}")

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
