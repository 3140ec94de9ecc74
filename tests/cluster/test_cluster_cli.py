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

from pinrelay import lockfile
from pinrelay.client.device import Device, Message
from pinrelay.client.http import RelayClient
from pinrelay.cluster import pid_alive, plan, save
from pinrelay.core import frames
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.relayproc import TIMEOUT_FACTOR


def cli(
    *args: str, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PINRELAY_ADMIN_KEY"}
    env["COLUMNS"] = "80"
    return subprocess.run(
        [sys.executable, "-m", "pinrelay.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
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


def forget_pid(data: Path, name: str) -> None:
    """Drop a node's pid from cluster.json, as a lost update between two commands can."""
    path = data / "cluster.json"
    c = json.loads(path.read_text())
    for n in [*c["nats"], *c["relays"]]:
        if n["name"] == name:
            n["pid"] = None
    path.write_text(json.dumps(c))


def check_status_text(data: Path, status: dict[str, Any]) -> None:
    """`cluster status` fits 80 columns and shows every port of every node."""
    text = cli("cluster", "status", "--data", data.name, cwd=data.parent)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, text.stdout
    rows = {line.split()[0]: line for line in lines if line.strip()}
    for n in status["nats"]:
        for what in ("port", "cluster_port", "http_port"):
            assert f" {n[what]}" in rows[n["name"]], (n, text.stdout)
    for r in status["relays"]:
        assert f"http {r['port']}  link {r['link_port']}" in rows[r["name"]], text.stdout
    first = status["relays"][0]["port"]
    assert f"--url http://127.0.0.1:{first}" in text.stdout
    assert f'--key "$(cat {data.name}/admin.key)"' in text.stdout


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
        check_status_text(data, status)
        # The node's lock, not cluster.json, says whether it runs: with its pid lost
        # from cluster.json, `cluster start` still refuses, and records the pid again.
        relay2 = next(r for r in status["relays"] if r["name"] == "relay-2")
        for name, pid in (("n2", started["pid"]), ("relay-2", relay2["pid"])):
            forget_pid(data, name)
            again = cli("cluster", "start", name, "--data", str(data))
            assert again.returncode != 0
            assert f"{name} is running already (pid {pid})" in again.stderr
            assert again.stderr.count("\n") == 1, again.stderr
        status = cli_json("cluster", "status", "--data", str(data))
        assert set(states(status).values()) == {"alive"}

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


def test_status_of_a_stopped_cluster_fits_80_columns(tmp_path: Path) -> None:
    data = tmp_path / "c"
    data.mkdir()
    save(plan(data, relays=3, nats=3, host="127.0.0.1"))
    status = cli_json("cluster", "status", "--data", str(data))
    assert set(states(status).values()) == {"dead"}
    check_status_text(data, status)


def test_start_refuses_a_node_whose_lock_is_held(tmp_path: Path) -> None:
    """Whoever holds a node's lock runs it, whatever cluster.json says."""
    data = tmp_path / "c"
    data.mkdir()
    save(plan(data, relays=1, nats=3, host="127.0.0.1"))
    try:
        with lockfile.acquire(data / "n1" / lockfile.FOLDER_LOCK, "n1"):
            # status believes the lock over cluster.json too (no NATS answers here)
            status = cli_json("cluster", "status", "--data", str(data))
            n1 = next(n for n in status["nats"] if n["name"] == "n1")
            assert (n1["pid"], n1["state"]) == (os.getpid(), "unhealthy")
            done = cli("cluster", "start", "n1", "--data", str(data))
        assert done.returncode != 0
        assert f"n1 is running already (pid {os.getpid()})" in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert recorded_pids(data) == [os.getpid()]  # recorded again
    finally:
        for pid in recorded_pids(data):
            if pid != os.getpid() and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_cluster_errors_are_one_line(tmp_path: Path) -> None:
    done = cli("cluster", "status", "--data", str(tmp_path))
    assert done.returncode != 0
    assert "no cluster in" in done.stderr and done.stderr.count("\n") == 1
    done = cli("cluster", "up", "--nats", "1", "--data", str(tmp_path))
    assert done.returncode != 0 and "--nats must be at least 3" in done.stderr
    done = cli("cluster", "up", "--partitions", "0", "--data", str(tmp_path))
    assert done.returncode != 0 and "--partitions must be 1 to 64" in done.stderr
