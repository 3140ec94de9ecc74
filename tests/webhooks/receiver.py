"""A local webhook receiver for tests: an http.server on 127.0.0.1 that records what
it is sent and answers as told (the only stand-in the webhook tests use: the
receiver is the outside service)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from pinrelay.testing.ports import free_port


@dataclass(frozen=True)
class Got:
    headers: dict[str, str]
    body: bytes
    #: What the receiver answered.
    status: int

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class Receiver:
    """Answers ``status`` to every POST (200 by default); :meth:`down` closes its
    socket (connections are refused) until :meth:`up`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.got: list[Got] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def accepted(self) -> list[Got]:
        """What it answered 2xx, in order."""
        return [g for g in list(self.got) if 200 <= g.status < 300]

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(size)
                status = receiver.status
                receiver.got.append(
                    Got({k.lower(): v for k, v in self.headers.items()}, body, status)
                )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def receiving() -> Iterator[Receiver]:
    r = Receiver()
    r.up()
    try:
        yield r
    finally:
        r.down()
