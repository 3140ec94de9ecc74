"""Architecture guard: pinrelay.core is pure (no I/O, no event loop)."""

from __future__ import annotations

from tests.freshimports import SRC, modules_after

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


def all_core_modules() -> list[str]:
    core = SRC / "pinrelay" / "core"
    found = sorted(f"pinrelay.core.{p.stem}" for p in core.glob("*.py") if p.stem != "__init__")
    return CORE_MODULES + [m for m in found if m not in CORE_MODULES]


def test_core_imports_no_io_modules() -> None:
    modules = all_core_modules()
    held = modules_after(modules)
    loaded = [m for m in held if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert [m for m in modules if m in held] == modules
    assert loaded == [], f"pinrelay.core pulled in {loaded}"


def test_listed_modules_exist() -> None:
    core = SRC / "pinrelay" / "core"
    for name in CORE_MODULES[1:]:
        assert (core / f"{name.rsplit('.', 1)[1]}.py").is_file(), name
