"""docs/WEBPUSH.md's two programs, run as written: device.py subscribes through the SDK
and waits; push.py pushes with pywebpush and VAPID; device.py prints the plaintext."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pinrelay.testing.wait import wait_until
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

DOC = Path(__file__).resolve().parents[2] / "docs" / "WEBPUSH.md"


def program(name: str) -> str:
    """The ```python block of WEBPUSH.md that starts with ``# <name>:``."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    [found] = [b for b in blocks if b.startswith(f"# {name}:")]
    return found


def test_the_doc_programs_work(relay: RelayProc, tmp_path: Path) -> None:
    dev = relay.create_device()
    (tmp_path / "device.py").write_text(program("device.py"))
    (tmp_path / "push.py").write_text(program("push.py"))
    env = {**os.environ, "PIN": dev["pin"], "TOKEN": dev["token"], "PINRELAY_URL": relay.url}
    timeout = 60 * TIMEOUT_FACTOR

    def run(*argv: str) -> str:
        r = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    # Step 1, as the doc's shell line: the server's VAPID key.
    key = run(sys.executable, "-m", "pinrelay.cli", "webpush", "vapid", "vapid.pem")
    (tmp_path / "vapid.pub").write_text(key)

    device = subprocess.Popen(
        [sys.executable, "device.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sub = wait_until(
            lambda: json.loads((tmp_path / "subscription.json").read_text()),
            timeout=30,
            message="device.py wrote subscription.json",
            ignore=(OSError, ValueError),
        )
        assert set(sub) == {"endpoint", "expirationTime", "keys"}
        pushed = run(sys.executable, "push.py")
        assert re.fullmatch(rf"201 {re.escape(sub['endpoint'])}/messages/\S+\n", pushed), pushed
        out, err = device.communicate(timeout=timeout)
    finally:
        if device.poll() is None:
            device.kill()
            device.wait()
    assert device.returncode == 0, out + err
    assert out.splitlines()[-1] == "high order-1234 Your order has shipped", out
    assert out.startswith(f"subscribed: {sub['endpoint']}\n"), out
    assert stat_mode(tmp_path / "webpush-keys.json") == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
