"""A real relay process for tests: started with `pinrelay serve`, stopped by pid."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from pinrelay.client.http import RelayClient

#: Scales every wait in the process-level tests (slow CI machines: set it to 2 or 3).
TIMEOUT_FACTOR = float(os.environ.get("PINRELAY_TEST_TIMEOUT_FACTOR", "1"))


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_FIRST = max(1024, _EPHEMERAL_LOW - 12_000)
#: Ports handed out in this session: two servers of one test never get the same one.
_picked: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A port from ``bind(0)`` is an ephemeral one: between the pick and the server's
    bind, any outgoing connection (a NATS route, a relay's NATS client) may take it
    as its source port, and the server fails with "address already in use".
    """
    if len(_picked) > (_EPHEMERAL_LOW - _FIRST) // 2:
        _picked.clear()
    while True:
        port = random.randint(_FIRST, _EPHEMERAL_LOW - 1)
        if port in _picked:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _picked.add(port)
        return port


class RelayProc:
    """One `pinrelay serve` subprocess on free loopback ports with its own data dir."""

    def __init__(
        self,
        data: Path,
        *,
        admin_key: str | None = "pra_test_admin_key",
        extra: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.data = data
        self.admin_key = admin_key
        self.extra = extra or []
        self.cwd = cwd
        self.port = free_port()
        self.link_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"{data.name}-relay.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def link_url(self) -> str:
        return f"ws://127.0.0.1:{self.link_port}/v1/link"

    def start(self, timeout: float = 20.0, *, wait: bool = True) -> RelayProc:
        """Start the relay; wait until /readyz answers 200 unless ``wait`` is false."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PINRELAY_ADMIN_KEY", None)
        if self.admin_key is not None:
            env["PINRELAY_ADMIN_KEY"] = self.admin_key
        cmd = [
            sys.executable,
            "-m",
            "pinrelay.cli",
            "serve",
            "--data",
            str(self.data),
            "--port",
            str(self.port),
            "--link-port",
            str(self.link_port),
            "--log-level",
            "warning",
            *self.extra,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout * TIMEOUT_FACTOR)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"relay not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_output(self, text: str, timeout: float = 10.0) -> str:
        """The relay's output once it holds ``text`` (its banner follows readiness)."""
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        while text not in self.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.output()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no drain, no flush; only what was committed survives."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful drain); SIGKILL if it does not exit in time."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(5.0)

    def client(self, key: str | None = None) -> RelayClient:
        return RelayClient(self.url, key or self.admin_key)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def create_device(self, label: str | None = None) -> dict[str, Any]:
        with self.client() as c:
            return c.create_device(label)
