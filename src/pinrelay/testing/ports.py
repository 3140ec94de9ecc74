"""Free TCP ports on loopback (or on a given host), picked below the ephemeral range."""

from __future__ import annotations

import errno
import os
import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _share(first: int, end: int) -> tuple[int, int]:
    """This process's share of ``[first, end)``: under pytest-xdist (``make test``
    runs two workers), worker N of K picks only from the N-th of K equal slices, so
    two workers never pick the same port between a pick and the server's bind.  The
    processes a test starts inherit the worker's variables, and with them its slice."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return first, end
    n, k = int(worker[2:]), max(1, int(count))
    span = (end - first) // k
    return first + (n % k) * span, first + (n % k + 1) * span


_EPHEMERAL_LOW = _ephemeral_low()
_FIRST, _END = _share(max(1024, _EPHEMERAL_LOW - 12_000), _EPHEMERAL_LOW)
#: Ports handed out by this process: two servers of one test never get the same one.
_picked: set[int] = set()


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``port`` on ``host`` now (with SO_REUSEADDR, as
    servers do: a port whose old connections linger in TIME_WAIT counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A free port on ``host`` below the kernel's ephemeral range (in this process's
    share of it: :func:`_share`), not handed out before by this process.

    A port from ``bind(0)`` is an ephemeral one: between the pick and the server's
    bind, any outgoing connection (a NATS route, a relay's NATS client) may take it
    as its source port, and the server fails with "address already in use".
    """
    if len(_picked) > (_END - _FIRST) // 2:
        _picked.clear()
    while True:
        port = random.randint(_FIRST, _END - 1)
        if port in _picked:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise  # not a busy port (a host that is not this machine's): no retry
        _picked.add(port)
        return port
