"""A real relay process: ``pinrelay serve`` on free loopback ports, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from pinrelay.client.http import RelayClient
from pinrelay.testing import procs
from pinrelay.testing.ports import LOOPBACK, free_port
from pinrelay.testing.wait import TIMEOUT_FACTOR, wait_until, wait_until_async

#: How a relay is started unless told otherwise: this Python, this pinrelay.
PINRELAY = (sys.executable, "-m", "pinrelay.cli")


class RelayProc:
    """One ``pinrelay serve`` subprocess on free loopback ports with its own data dir.

    ``extra``: more ``serve`` options; ``log``: where its output goes (default
    ``<data>-relay.log`` beside ``data``); ``command``: how to run ``pinrelay``.
    """

    def __init__(
        self,
        data: Path,
        *,
        admin_key: str | None = "pra_test_admin_key",
        extra: list[str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        command: Sequence[str] = PINRELAY,
    ) -> None:
        self.data = data
        self.admin_key = admin_key
        self.extra = extra or []
        self.cwd = cwd
        self.command = list(command)
        self.port = free_port()
        self.link_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = log or data.parent / f"{data.name}-relay.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def link_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.link_port}/v1/link"

    @property
    def argv(self) -> list[str]:
        return [
            *self.command,
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

    def launch(self) -> subprocess.Popen[bytes]:
        """Start it (its own session, output appended to :attr:`log`); no wait."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PINRELAY_ADMIN_KEY", None)
        if self.admin_key is not None:
            env["PINRELAY_ADMIN_KEY"] = self.admin_key
        self.proc = procs.spawn(self.argv, self.log, env=env, cwd=self.cwd)
        return self.proc

    def start(self, timeout: float = 20.0, *, wait: bool = True) -> RelayProc:
        """Start the relay; wait until /readyz answers 200 unless ``wait`` is false."""
        self.launch()
        if wait:
            self.wait_ready(timeout)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.output()}")
        return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200

    def _not_ready(self) -> str:
        return f"relay not ready:\n{self.output()}"

    def wait_ready(self, timeout: float) -> None:
        """Until GET /readyz answers 200 (``timeout`` scaled by TIMEOUT_FACTOR); an
        exit meanwhile is a RuntimeError."""
        wait_until(self._ready, timeout, 0.05, self._not_ready, ignore=(httpx.HTTPError,))

    async def wait_ready_async(self, timeout: float) -> None:
        async with httpx.AsyncClient(timeout=2.0) as http:

            async def ready() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"relay exited with {self.proc.returncode}:\n{self.output()}"
                    )
                return (await http.get(f"{self.url}/readyz")).status_code == 200

            await wait_until_async(ready, timeout, 0.1, self._not_ready, ignore=(httpx.HTTPError,))

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_output(self, text: str, timeout: float = 10.0) -> str:
        """The relay's output once it holds ``text`` (its banner follows readiness);
        what it holds then if ``text`` never shows up (the caller asserts)."""
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: text in self.output(), timeout, 0.05, f"{text!r} in the output")
        return self.output()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no drain, no flush; only what was committed survives."""
        if self.proc is not None:
            procs.kill(self.proc)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful drain); SIGKILL if it does not exit in time."""
        assert self.proc is not None
        return procs.terminate(self.proc, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(timeout)

    def client(self, key: str | None = None) -> RelayClient:
        return RelayClient(self.url, key or self.admin_key)

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def create_device(self, label: str | None = None) -> dict[str, Any]:
        with self.client() as c:
            return c.create_device(label)


__all__ = ["TIMEOUT_FACTOR", "RelayProc", "free_port"]
