"""NATS messages between given processes and the nats-servers, from the monitoring port.

Each nats-server's ``/connz`` lists its client connections with what each sent
(``in_msgs``, ``in_bytes``: PUBs and HPUBs the server received from it) and what it
was sent (``out_msgs``, ``out_bytes``: MSGs and HMSGs: replies, acks, deliveries to
its subscriptions).  A connection is told apart by its client port: the port of a
TCP socket that one of the given processes holds (``/proc/<pid>/fd`` →
``/proc/net/tcp``), so it does not matter how many connections a relay opens or
what it names them.  ``/varz``'s ``in_msgs`` (summed over the servers) counts every
message a server received: from clients, and from the other servers (routes:
JetStream's replication and the cluster's own traffic).

:func:`snapshot` before and after a run; :meth:`Traffic.since` gives the difference
(a connection opened meanwhile counts from zero).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import child_pids

#: Counters of one connection: in_msgs, out_msgs, in_bytes, out_bytes.
Counters = tuple[int, int, int, int]


def socket_ports(pids: Sequence[int]) -> set[int]:
    """Local TCP ports of the sockets held by ``pids`` and their children."""
    inodes: set[str] = set()
    for pid in [*pids, *(c for p in pids for c in child_pids(p))]:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(fd.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Traffic:
    """Per (server, connection id): the counters of the connections of interest;
    per server: varz in_msgs and out_msgs."""

    conns: dict[tuple[str, int], Counters] = field(default_factory=dict)
    varz: dict[str, tuple[int, int]] = field(default_factory=dict)

    def since(self, before: Traffic) -> TrafficDelta:
        delta = TrafficDelta(connections=len(self.conns))
        for key, now in self.conns.items():
            was = before.conns.get(key, (0, 0, 0, 0))
            delta.to_servers += now[0] - was[0]
            delta.from_servers += now[1] - was[1]
            delta.to_servers_bytes += now[2] - was[2]
            delta.from_servers_bytes += now[3] - was[3]
        for server, (now_in, now_out) in self.varz.items():
            was_in, was_out = before.varz.get(server, (0, 0))
            delta.all_in += now_in - was_in
            delta.all_out += now_out - was_out
        return delta


@dataclass
class TrafficDelta:
    """Messages (and bytes) the processes sent to the servers and received from them,
    and every message the servers received and sent (varz, routes included)."""

    to_servers: int = 0
    from_servers: int = 0
    to_servers_bytes: int = 0
    from_servers_bytes: int = 0
    all_in: int = 0
    all_out: int = 0
    connections: int = 0


def _get(url: str) -> dict[str, Any]:
    r = httpx.get(url, timeout=5.0)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def snapshot(
    monitors: dict[str, str], pids: Sequence[int], since: Traffic | None = None
) -> Traffic:
    """Counters of every connection that one of ``pids`` holds, on each server
    (``monitors``: name → http://host:port); with ``since``, also of the connections
    found then, should they have closed meanwhile (a server remembers closed ones)."""
    ports = socket_ports(pids)
    known = since.conns if since is not None else {}
    traffic = Traffic()
    for name, base in monitors.items():
        varz = _get(f"{base}/varz")
        traffic.varz[name] = (int(varz.get("in_msgs", 0)), int(varz.get("out_msgs", 0)))
        connz = _get(f"{base}/connz?state=any&limit=100000")
        for conn in connz.get("connections") or []:
            key = (name, int(conn["cid"]))
            if int(conn.get("port", 0)) in ports or key in known:
                traffic.conns[key] = (
                    int(conn.get("in_msgs", 0)),
                    int(conn.get("out_msgs", 0)),
                    int(conn.get("in_bytes", 0)),
                    int(conn.get("out_bytes", 0)),
                )
    return traffic
