"""The CLI says what it does and what failed (issue 11, hole 8): `listen` reports
connecting, each failed attempt with its reason and next try, and "listening" only
after the relay's welcome; `push` needs --ttl; a PIN is accepted in any case."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.relayproc import TIMEOUT_FACTOR, RelayProc, free_port
from tests.test_cli import ok_json, one_line_error, run
from tests.test_datalock import listen_once

# Every test here on the `relay` fixture makes devices of its own: one relay for the
# module (tests/conftest.py).
pytestmark = pytest.mark.shared_relay

ATTEMPT_FAILED = re.compile(
    r"^attempt (\d+) failed: connection refused .*; next attempt at \d\d:\d\d:\d\d \(in [\d.]+ s\)$"
)


def stderr_lines_until(
    argv: list[str], enough: int, pattern: re.Pattern[str], timeout: float = 20.0
) -> list[str]:
    """Run the CLI until its stderr has ``enough`` lines matching ``pattern``; stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINRELAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinrelay.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sum(1 for line in lines if pattern.search(line)) < enough:
                left = deadline - time.monotonic()
                assert left > 0, f"not {enough} lines like {pattern.pattern} in time: {lines}"
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stderr.fileno(), 65536)
                assert chunk, f"the command exited ({proc.wait()}): {lines}"
                buf += chunk
                *done, rest = buf.split(b"\n")
                buf = rest
                lines += [d.decode() for d in done]
        assert proc.poll() is None, "it gave up instead of retrying"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return lines


def test_listen_without_a_relay_reports_each_failed_attempt() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["listen", "--pin", "0a1b2c3d", "--token", "t", "--url", url]
    lines = stderr_lines_until(argv, 3, ATTEMPT_FAILED)
    assert lines[0] == f"connecting to {url} as 0A1B2C3D…"
    failed = [m for m in map(ATTEMPT_FAILED.match, lines) if m]
    assert [int(m.group(1)) for m in failed] == [1, 2, 3]
    assert "connecting to" in lines[-2] and "(attempt 3)" in lines[-2]
    assert not any("listening" in line for line in lines)


def test_listen_json_reports_attempts_as_objects() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["listen", "--pin", "0A1B2C3D", "--token", "t", "--url", url, "--json"]
    lines = stderr_lines_until(argv, 2, re.compile('"attempt_failed"'))
    events: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert events[0] == {"event": "connecting", "url": url, "attempt": 1}
    failed = [e for e in events if e["event"] == "attempt_failed"]
    assert [e["attempt"] for e in failed] == [1, 2]
    for e in failed:
        assert e["reason"].startswith("connection refused")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["retry_at"])
        assert e["retry_in_s"] >= 0
    assert "listening" not in {e["event"] for e in events}


def test_listen_with_a_wrong_token_never_says_listening(relay: RelayProc) -> None:
    device = relay.create_device()
    r = run("listen", "--pin", device["pin"], "--token", "wrong", url=relay.url)
    one_line_error(r, "the relay refused the link: unauthorized (401)")
    assert "connecting to" in r.stderr
    assert "listening" not in r.stderr


def test_listen_says_listening_after_welcome(relay: RelayProc) -> None:
    device = relay.create_device()
    with relay.client() as c:
        c.push(device["pin"], {"n": 1}, ttl=60)
    for extra in ([], ["--inbox"]):
        argv = ["listen", "--pin", device["pin"], "--token", device["token"], "--count", "1"]
        r = run(*argv, *extra, url=relay.url)
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert lines[0].startswith("connecting to ")
        assert lines[1].startswith(f"listening as {device['pin']}")
        if not extra:
            assert "on node-1 (local)" in lines[1]
        with relay.client() as c:
            c.push(device["pin"], {"n": 2}, ttl=60)


def test_push_needs_a_ttl(relay: RelayProc) -> None:
    device = relay.create_device()
    r = run("push", device["pin"], "--data", "1", key=relay.admin_key, url=relay.url)
    one_line_error(r, "--ttl is required")
    assert ok_json(relay, "device", "show", device["pin"])["backlog"] == 0


def test_a_pin_in_lower_case_works(relay: RelayProc) -> None:
    device = relay.create_device()
    while device["pin"].isdigit():  # 2 % of PINs have no letter to lower
        device = relay.create_device()
    pin = device["pin"]
    lower = pin.lower()
    pushed = ok_json(relay, "push", lower, "--data", '{"a": 1}', "--ttl", "60")
    assert pushed["cursor"] == 1
    assert ok_json(relay, "device", "show", f" {lower} ")["pin"] == pin
    assert listen_once(relay, {"pin": lower, "token": device["token"]})["data"] == {"a": 1}
    assert ok_json(relay, "device", "rotate", lower)["pin"] == pin
    one_line_error(
        run("device", "show", "0xBADF00", key=relay.admin_key, url=relay.url),
        "a PIN is 8 hexadecimal digits",
    )
    assert ok_json(relay, "device", "delete", lower) == {"pin": pin, "deleted": True}
