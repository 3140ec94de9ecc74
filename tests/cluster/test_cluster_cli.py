"""`pinrelay cluster up|status|start` with real processes, every one stopped by pid."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pinrelay.client.device import Device, Message
from pinrelay.client.http import RelayClient
from pinrelay.cluster import pid_alive
from pinrelay.core import frames
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.relayproc import TIMEOUT_FACTOR


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PINRELAY_ADMIN_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "pinrelay.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout * TIMEOUT_FACTOR,
    )


def cli_json(*args: str) -> dict[str, Any]:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line ``proc`` prints, or fail with what it said on stderr."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0, "cluster up printed no endpoints in time"
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    stderr = proc.stderr.read().decode() if proc.stderr else ""
                    raise AssertionError(f"cluster up exited ({proc.wait()}): {stderr}")
                line += chunk
    return line


def recorded_pids(data: Path) -> list[int]:
    try:
        c = json.loads((data / "cluster.json").read_text())
    except (OSError, ValueError):
        return []
    return [n["pid"] for n in [*c["nats"], *c["relays"]] if n["pid"]]


def states(status: dict[str, Any]) -> dict[str, str]:
    return {n["name"]: n["state"] for n in [*status["nats"], *status["relays"]]}


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive once none is, or after ``timeout``."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, 0.05)
    return [p for p in pids if pid_alive(p)]


async def push_and_receive(data: Path, relays: list[dict[str, Any]], key: str) -> list[Message]:
    """Create a device and push through relay 1; link through relay 2."""
    with RelayClient(relays[0]["url"], key) as c:
        device = c.create_device("phone")
        c.push(device["pin"], {"text": "before link"}, ttl=60)
    got: list[Message] = []
    linked: list[frames.Welcome] = []
    enough = asyncio.Event()

    def on_message(m: Message) -> None:
        got.append(m)
        if len(got) == 2:
            enough.set()

    d = Device(
        device["pin"],
        device["token"],
        on_message,
        link_urls=[relays[1]["link_url"]],
        on_link=linked.append,
    )
    runner = asyncio.create_task(d.run())
    try:
        await wait_until_async(lambda: linked, 10.0, 0.02, "the link to relay 2")
        assert linked[0].node == "relay-2"
        with RelayClient(relays[0]["url"], key) as c:
            c.push(device["pin"], {"text": "while linked"}, ttl=60)
        await asyncio.wait_for(enough.wait(), 10 * TIMEOUT_FACTOR)
        # While the device is linked, status counts the link at relay 2.
        status = await asyncio.to_thread(cli_json, "cluster", "status", "--data", str(data))
        assert [r["links"] for r in status["relays"]] == [0, 1]
    finally:
        await d.stop()
        runner.cancel()
    return got


# Two partitions: the relays spread devices over two streams (serve --partitions).
UP_ARGS = ["--relays", "2", "--nats", "3", "--partitions", "2", "--data"]


def test_cluster_up_status_start_and_stop(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "PINRELAY_ADMIN_KEY"}
    up = subprocess.Popen(
        [sys.executable, "-m", "pinrelay.cli", "cluster", "up", *UP_ARGS, str(data), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        ends = json.loads(read_line(up, 40.0))
        assert ends["pid"] == up.pid
        assert [n["name"] for n in ends["nats"]] == ["n1", "n2", "n3"]
        assert [r["name"] for r in ends["relays"]] == ["relay-1", "relay-2"]
        assert ends["partitions"] == 2
        key_file = data / "admin.key"
        assert ends["admin_key"] == str(key_file)
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()

        # A device created and pushed to through relay 1 receives on relay 2.
        got = asyncio.run(push_and_receive(data, ends["relays"], key))
        assert [m.data for m in got] == [{"text": "before link"}, {"text": "while linked"}]

        status = cli_json("cluster", "status", "--data", str(data))
        assert set(states(status).values()) == {"alive"}
        assert status["supervisor_pid"] == up.pid
        streams = {s["name"]: s for s in status["streams"]}
        assert "PINRELAY" not in streams
        for name in ("PINRELAY_0", "PINRELAY_1"):
            assert streams[name]["leader"] in ("n1", "n2", "n3")

        # SIGKILL one NATS node by its recorded pid: dead; `cluster start` revives it.
        n2 = next(n for n in status["nats"] if n["name"] == "n2")
        os.kill(n2["pid"], signal.SIGKILL)
        assert not wait_gone([n2["pid"]], 5.0)
        assert states(cli_json("cluster", "status", "--data", str(data)))["n2"] == "dead"
        started = cli_json("cluster", "start", "n2", "--data", str(data))
        assert started["pid"] != n2["pid"]
        status = cli_json("cluster", "status", "--data", str(data))
        assert states(status)["n2"] == "alive"
        n2_now = next(n for n in status["nats"] if n["name"] == "n2")
        assert (n2_now["pid"], n2_now["port"]) == (started["pid"], n2["port"])
        # Starting a running node is one readable error.
        again = cli("cluster", "start", "n2", "--data", str(data))
        assert again.returncode != 0 and "running already" in again.stderr

        # SIGTERM `cluster up`: every recorded pid is gone, the restarted n2 too.
        pids = recorded_pids(data)
        assert started["pid"] in pids and len(pids) == 5
        up.send_signal(signal.SIGTERM)
        assert up.wait(30 * TIMEOUT_FACTOR) == 0
        assert wait_gone(pids, 1.0) == []
        after = cli_json("cluster", "status", "--data", str(data))
        assert set(states(after).values()) == {"dead"} and after["supervisor_pid"] is None
    finally:
        for pid in [up.pid, *recorded_pids(data)]:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        up.wait(10)
        for pipe in (up.stdout, up.stderr):
            if pipe is not None:
                pipe.close()


def test_cluster_errors_are_one_line(tmp_path: Path) -> None:
    done = cli("cluster", "status", "--data", str(tmp_path))
    assert done.returncode != 0
    assert "no cluster in" in done.stderr and done.stderr.count("\n") == 1
    done = cli("cluster", "up", "--nats", "1", "--data", str(tmp_path))
    assert done.returncode != 0 and "--nats must be at least 3" in done.stderr
    done = cli("cluster", "up", "--partitions", "0", "--data", str(tmp_path))
    assert done.returncode != 0 and "--partitions must be 1 to 64" in done.stderr
