"""What a fresh interpreter holds after importing some of pinrelay's modules.

Shared by the import guards (tests/core/test_purity.py, tests/test_cli_imports.py):
each import runs in a new ``python`` with ``src/`` first on its PYTHONPATH, so what
this test process already imported cannot hide a module pulled in.
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
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def modules_after(modules: list[str]) -> list[str]:
    """Every module (sorted) a fresh interpreter holds after importing ``modules``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(modules)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    held: list[str] = json.loads(proc.stdout)
    return held
