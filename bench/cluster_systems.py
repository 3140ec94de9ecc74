"""The processes of bench.cluster_throughput: nats-server clusters, relays, and the
source trees the relays import.

- :class:`System`: the relays of one run (SQLite: one; cluster: ``--relays`` on a
  fresh 3-node :class:`NatsCluster`), every process stopped by its pid;
- :func:`pin_source`: the "after" code, a copy of src/ taken when the benchmark
  starts; :func:`before_tree`: the "before" code, a temporary git worktree of a
  commit (removed at the end).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import natsmon
from bench.common import (
    CLK_TCK,
    LOOPBACK,
    ROOT,
    RelayProcess,
    cpu_seconds,
    rss_kb,
    wait_quiet,
)
from pinrelay.testing import natsproc
from pinrelay.testing.natsproc import nats_server_binary

SQLITE = "sqlite"
DEFAULT = "cluster, sync default"
ALWAYS = "cluster, sync always"
RELAY_KINDS = (SQLITE, DEFAULT, ALWAYS)
TAGS = {SQLITE: "sqlite", DEFAULT: "default", ALWAYS: "always"}
BARE = "bare publish"
#: How the messages are pushed: POST /v1/messages (``--batch`` per request), or one
#: POST /v1/devices/{pin}/messages each, paced.
BATCH = "batch"
SINGLE = "single"
#: Which code the relays run: this checkout's src (pinned at the start), or --before's.
AFTER = "after"
BEFORE = "before"


def bare_kind(window: int, always: bool) -> str:
    """A bare nats-py publisher on the same cluster, no relay: JetStream's own cost."""
    return f"{BARE} x{window}, sync {'always' if always else 'default'}"


def tag_of(kind: str) -> str:
    if kind in TAGS:
        return TAGS[kind]
    return kind.replace(BARE, "bare").replace(", sync ", "-").replace(" ", "")


def kernel_threads_cpu() -> float:
    """utime+stime of every kernel thread (children of kthreadd, pid 2): the journal
    (jbd2) and the writeback workers an fsync wakes run there, not in the caller."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[1] == "2":
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


# --- nats-server processes ----------------------------------------------------------
class NatsCluster:
    """Three clustered JetStream nodes on loopback (:mod:`pinrelay.testing.natsproc`),
    in a fresh temporary folder, with ``sync`` as JetStream's ``sync_interval``."""

    def __init__(self, logs: Path, label: str, sync: str | None, size: int = 3) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pinrelay-bench-nats-"))
        self.sync = sync
        self.cluster = natsproc.NatsCluster(
            self.directory, size, cluster_name=label, logs=logs, sync=sync
        )
        self.nodes = self.cluster.nodes

    @property
    def urls(self) -> str:
        return ",".join(self.cluster.urls)

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    @property
    def monitors(self) -> dict[str, str]:
        return {n.name: n.monitor_url for n in self.nodes}

    async def start(self, timeout: float = 30.0) -> None:
        self.cluster.launch()
        await self.cluster.wait_ready_async(timeout, started=True)
        self.check_sync()

    def check_sync(self) -> None:
        """Each server says (GET /varz) that it fsyncs as its config asks."""
        for node in self.nodes:
            r = httpx.get(f"http://{LOOPBACK}:{node.http_port}/varz", timeout=2.0)
            r.raise_for_status()
            config = (r.json().get("jetstream") or {}).get("config") or {}
            if bool(config.get("sync_always")) != (self.sync == "always"):
                raise RuntimeError(f"{node.name}: sync_always is {config.get('sync_always')}")

    def cpu(self) -> list[float]:
        return [cpu_seconds(p) for p in self.pids]

    def rss(self) -> list[int]:
        return [rss_kb(p) for p in self.pids]

    def traffic(self, pids: list[int], since: natsmon.Traffic | None = None) -> natsmon.Traffic:
        """NATS messages of the connections ``pids`` hold (:mod:`bench.natsmon`)."""
        return natsmon.snapshot(self.monitors, pids, since)

    def stream_leader(self, stream: str = "PINRELAY") -> str:
        """The node that leads ``stream`` (as the nodes' /jsz say), or '?'."""
        with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, ValueError):
            for node in self.nodes:
                body = node.jsz("?streams=true")
                for account in body.get("account_details") or []:
                    for detail in account.get("stream_detail") or []:
                        if detail.get("name") == stream:
                            leader = (detail.get("cluster") or {}).get("leader")
                            if leader:
                                return str(leader)
        return "?"

    def stop(self) -> None:
        self.cluster.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class ClusterRelay(RelayProcess):
    """``pinrelay serve --store <the cluster> --node-id <name>``."""

    def __init__(
        self, logs: Path, store: str, node_id: str, *, admin_key: str | None = None, **kw: Any
    ) -> None:
        super().__init__(logs, name=node_id, **kw)
        self.store = store
        self.node_id = node_id
        if admin_key is not None:
            self.admin_key = admin_key

    @property
    def options(self) -> list[str]:
        return [
            *super().options,
            "--store",
            self.store,
            "--node-id",
            self.node_id,
            "--region",
            "local",
        ]


class System:
    """The relays (and for the cluster, the nats-servers) of one run; the relays
    import ``pinrelay`` from ``src`` if given (the "before" tree)."""

    def __init__(
        self,
        logs: Path,
        kind: str,
        tag: str,
        relays: int,
        max_links: int,
        src: Path | None = None,
    ) -> None:
        self.kind = kind
        self.nats: NatsCluster | None = None
        self.relays: list[RelayProcess] = []
        if kind == SQLITE:
            relay = RelayProcess(logs, max_links=max_links, name=f"sqlite-{tag}")
            self.relays = [relay]
        else:
            self.nats = NatsCluster(logs, tag, "always" if kind == ALWAYS else None)
            key: str | None = None
            for i in range(relays):
                relay = ClusterRelay(
                    logs, self.nats.urls, f"relay-{i + 1}", admin_key=key, max_links=max_links
                )
                relay.log_path = logs / f"{tag}-relay-{i + 1}.log"
                key = relay.admin_key
                self.relays.append(relay)
        for relay in self.relays:
            relay.src = src

    async def start(self) -> None:
        if self.nats is not None:
            await self.nats.start()
        for relay in self.relays:
            await relay.start(timeout=60.0)

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()
            relay.remove_data()
        if self.nats is not None:
            self.nats.stop()

    @property
    def relay_pids(self) -> list[int]:
        return [r.pid for r in self.relays]

    @property
    def nats_pids(self) -> list[int]:
        return self.nats.pids if self.nats is not None else []

    def relay_cpu(self) -> float:
        """The relays' CPU seconds, with their children's (the SQLite writer process)."""
        return sum(r.cpu() for r in self.relays)

    def nats_cpu(self) -> list[float]:
        return self.nats.cpu() if self.nats is not None else []

    def traffic(self, since: natsmon.Traffic | None = None) -> natsmon.Traffic | None:
        """The relays' NATS messages so far (None without NATS)."""
        return self.nats.traffic(self.relay_pids, since) if self.nats is not None else None

    async def wait_quiet(self, timeout: float = 15.0) -> None:
        """Until every relay and nats-server is idle (each checked in turn)."""
        for pid in [*self.relay_pids, *self.nats_pids]:
            await wait_quiet(pid, timeout=timeout)


# --- source trees -------------------------------------------------------------------
def pin_source() -> Path:
    """Copy src/ as it is now to a temporary folder (outside the repository, where mypy
    and pytest would find a second ``pinrelay``); every relay of this run that runs
    "after" code imports that copy (PYTHONPATH comes before the editable install), so
    all runs measure the same code even if src/ changes while the benchmark runs.
    The caller removes it."""
    dest = Path(tempfile.mkdtemp(prefix="pinrelay-bench-src-"))
    shutil.copytree(
        ROOT / "src",
        dest,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        dirs_exist_ok=True,
    )
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(dest) + (os.pathsep + old if old else "")
    return dest


def git(*argv: str) -> str:
    done = subprocess.run(
        ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def before_tree(commit: str) -> Iterator[tuple[Path, str]]:
    """A temporary detached worktree of ``commit``: (its src folder, the short
    commit); removed on exit, whatever happened."""
    short = git("rev-parse", "--short", f"{commit}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="pinrelay-before-") as tmp:
        tree = Path(tmp) / "tree"
        git("worktree", "add", "--detach", str(tree), short)
        try:
            yield tree / "src", short
        finally:
            git("worktree", "remove", "--force", str(tree))


def nats_version() -> str:
    try:
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().rsplit(" ", 1)[-1] or "?"
