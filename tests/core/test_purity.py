"""Architecture guard: pinrelay.core is pure (no I/O, no event loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

#: Imported explicitly; any other module found in src/pinrelay/core is checked too.
CORE_MODULES = [
    "pinrelay.core",
    "pinrelay.core.errors",
    "pinrelay.core.ids",
    "pinrelay.core.frames",
    "pinrelay.core.model",
    "pinrelay.core.window",
    "pinrelay.core.session",
    "pinrelay.core.timefmt",
    "pinrelay.core.strictjson",
]
FORBIDDEN = ["asyncio", "sqlite3", "socket", "starlette", "uvicorn", "websockets", "nats"]

SCRIPT = """
import importlib, json, sys
modules, forbidden = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in modules:
    importlib.import_module(name)
loaded = sorted(
    m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)
)
print(json.dumps({"loaded": loaded, "imported": [m for m in modules if m in sys.modules]}))
"""


def all_core_modules() -> list[str]:
    core = SRC / "pinrelay" / "core"
    found = sorted(f"pinrelay.core.{p.stem}" for p in core.glob("*.py") if p.stem != "__init__")
    return CORE_MODULES + [m for m in found if m not in CORE_MODULES]


def test_core_imports_no_io_modules() -> None:
    modules = all_core_modules()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(modules), json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["imported"] == modules
    assert result["loaded"] == [], f"pinrelay.core pulled in {result['loaded']}"


def test_listed_modules_exist() -> None:
    core = SRC / "pinrelay" / "core"
    for name in CORE_MODULES[1:]:
        assert (core / f"{name.rsplit('.', 1)[1]}.py").is_file(), name
