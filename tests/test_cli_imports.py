"""Guard: the ``pinrelay`` command imports what a command uses when it runs.

Every relay and every CLI call is a new process that pays for its imports (tests
start hundreds): the link SDK (websockets' client, cryptography, http-ece), httpx and
rich's tables load in the commands that use them, and nats-py (with aiohttp) only
for a relay on the cluster store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = """
import importlib, json, sys
modules, absent = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in modules:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in absent if m in sys.modules)))
"""


def loaded(modules: list[str], absent: list[str]) -> list[str]:
    """Which of ``absent`` a fresh interpreter holds after importing ``modules``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(modules), json.dumps(absent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: list[str] = json.loads(proc.stdout)
    return result


def test_the_cli_module_loads_no_client_sdk() -> None:
    heavy = [
        "asyncio",
        "httpx",
        "websockets",
        "cryptography",
        "rich.table",
        "pinrelay.client.device",
        "pinrelay.client.http",
        "pinrelay.relay",
        "nats",
    ]
    assert loaded(["pinrelay.cli"], heavy) == []


def test_a_relay_on_sqlite_loads_no_nats() -> None:
    heavy = ["nats", "aiohttp", "httpx", "pinrelay.store.jetstream", "pinrelay.router.nats"]
    assert loaded(["pinrelay.cli", "pinrelay.relay"], heavy) == []
