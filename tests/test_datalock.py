"""One relay per data folder (issue 11, hole 2): a second `serve` on a folder in use
refuses to start, in one line, and the first one keeps its data; the lock dies with
its holder, so a SIGKILLed relay leaves no stale lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinrelay import lockfile
from pinrelay.store.sqlite import SqliteStore
from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR, RelayProc, free_port
from tests.test_cli import one_line_error, run


def serve_beside(
    relay: RelayProc, timeout: float = 30, admin_key: str | None = "pra_second_relay_key"
) -> subprocess.CompletedProcess[str]:
    """`pinrelay serve` on ``relay``'s data folder, on ports of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINRELAY_")}
    if admin_key is not None:
        env["PINRELAY_ADMIN_KEY"] = admin_key
    argv = ["serve", "--data", str(relay.data), "--port", str(free_port())]
    argv += ["--link-port", str(free_port()), "--log-level", "warning"]
    return subprocess.run(
        [sys.executable, "-m", "pinrelay.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout * TIMEOUT_FACTOR,
    )


def listen_once(relay: RelayProc, device: dict[str, str]) -> dict[str, object]:
    r = run(
        "listen",
        "--pin",
        device["pin"],
        "--token",
        device["token"],
        "--count",
        "1",
        "--json",
        url=relay.url,
    )
    assert r.returncode == 0, r.stderr
    got: dict[str, object] = json.loads(r.stdout.splitlines()[0])
    return got


def test_second_serve_on_a_folder_in_use_refuses_and_the_first_keeps_its_data(
    relay: RelayProc,
) -> None:
    device = relay.create_device()
    with relay.client() as c:
        assert c.push(device["pin"], {"n": 1}, ttl=60)["cursor"] == 1

    second = serve_beside(relay)

    one_line_error(second, f"data folder {relay.data} is in use by pid {relay.pid}")
    assert "pinrelay.lock" in second.stderr
    assert relay.proc is not None and relay.proc.poll() is None
    # The first relay still owns its cursors: the next push is 2, and a device gets both.
    with relay.client() as c:
        assert c.push(device["pin"], {"n": 2}, ttl=60)["cursor"] == 2
    assert listen_once(relay, device)["data"] == {"n": 1}
    assert listen_once(relay, device)["data"] == {"n": 2}


def test_a_refused_serve_writes_nothing_in_the_folder(relay: RelayProc) -> None:
    # The first relay takes its key from the environment: no admin.key in its folder.
    assert not (relay.data / "admin.key").exists()
    second = serve_beside(relay, admin_key=None)
    one_line_error(second, f"data folder {relay.data} is in use by pid {relay.pid}")
    assert not (relay.data / "admin.key").exists()


def test_a_sigkilled_relay_leaves_no_stale_lock(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    first = relay_factory("data")
    device = first.create_device()
    with first.client() as c:
        c.push(device["pin"], {"text": "before the kill"}, ttl=60)
    first.kill()

    second = RelayProc(first.data)
    try:
        second.start()
        assert listen_once(second, device)["data"] == {"text": "before the kill"}
        assert lockfile.holder(first.data / lockfile.FOLDER_LOCK) == second.pid
    finally:
        second.stop()
        second.kill()


async def test_one_store_per_database_file(tmp_path: Path) -> None:
    """The store locks its file too, found through symlinks; its writer holds the
    lock with it, and closing the store frees it."""
    db = tmp_path / "a" / "pinrelay.db"
    other = tmp_path / "b"
    other.mkdir()
    first = SqliteStore(db)
    await first.open()
    try:
        (other / "pinrelay.db").symlink_to(db)
        second = SqliteStore(other / "pinrelay.db")
        started = time.monotonic()
        with pytest.raises(lockfile.Locked, match=f"in use by pid {os.getpid()}"):
            await second.open()
        assert time.monotonic() - started >= 1.0  # it waited for a holder on its way out
        await second.close()
        writer = first.writer_pid
        assert writer is not None
        lock = str(db) + ".lock"
        fds = f"/proc/{writer}/fd"
        assert any(os.readlink(f"{fds}/{fd}") == lock for fd in os.listdir(fds))
    finally:
        await first.close()
    assert lockfile.holder(Path(str(db) + ".lock")) is None
    again = SqliteStore(other / "pinrelay.db")
    await again.open()
    await again.close()
