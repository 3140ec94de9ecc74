"""Fixtures shared by the process-level tests: real relays on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.relayproc import RelayProc

RelayFactory = Callable[..., RelayProc]

# Every httpx client builds an SSL context when it is created, even for http:// URLs,
# and with SSL_CERT_FILE set (as on these machines) it parses that whole CA bundle:
# ~70 ms a client here, several times that on a busy machine. The tests create
# thousands of clients (readiness polls, device creation, each CLI call), all on plain
# HTTP to 127.0.0.1: with a CA directory instead, OpenSSL reads a certificate only
# when a TLS handshake needs one (3 ms a client). Set here, it reaches the CLI and
# relay processes the tests start too.
os.environ.pop("SSL_CERT_FILE", None)
os.environ.setdefault("SSL_CERT_DIR", "/etc/ssl/certs")

#: Seconds a relay has to drain and exit on SIGTERM at the end of a test.
STOP_TIMEOUT = 5.0


def stop_all(procs: list[RelayProc], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every relay still running at once, then wait for them together (by
    pid; SIGKILL for one not gone by the deadline): a test with three relays waits
    for the slowest drain, not for the sum of them."""
    running = [p for p in procs if p.proc is not None and p.proc.poll() is None]
    for p in running:
        assert p.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in running:
        assert p.proc is not None
        try:
            p.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            p.kill()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """Start relays on demand; every one is stopped by pid, even when a test fails."""
    started: list[RelayProc] = []

    def start(name: str = "relay", **kwargs: object) -> RelayProc:
        proc = RelayProc(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start()

    yield start
    stop_all(started)


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProc]:
    """One relay on SQLite for the tests of a module marked ``shared_relay``."""
    proc = RelayProc(tmp_path_factory.mktemp("shared-relay") / "relay")
    try:
        yield proc.start()
    finally:
        stop_all([proc])


@pytest.fixture
def relay(request: pytest.FixtureRequest, relay_factory: RelayFactory) -> RelayProc:
    """A fresh relay with the default flags; the module's shared one for a test marked
    ``shared_relay`` (a relay start costs 1-2 s, 4-5 s on a busy machine: about 100
    of them are saved; docs/DECISIONS.md, entry 43).

    Mark only tests that make devices of their own and look at nothing relay-wide
    (metrics, key lists, failed-authentication counts per source, shutdown). The
    shared one is on SQLite: a module whose ``relay_factory`` starts another kind of
    relay provides its own ``shared_relay`` (tests/clusterrelay.py has one on a NATS
    cluster)."""
    if request.node.get_closest_marker("shared_relay") is None:
        return relay_factory()
    shared: RelayProc = request.getfixturevalue("shared_relay")
    assert shared.proc is not None and shared.proc.poll() is None, (
        f"the module's shared relay exited:\n{shared.output()}"
    )
    return shared
