"""Architecture guard: one way in (DESIGN, "ingest") and engines behind protocols.

- Only ``pinrelay/ingest.py`` appends to a store: every edge goes through ingest.
- No module asks which engine it was given (``isinstance`` on an engine class).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pinrelay"
ENGINES = {"SqliteStore", "JetStreamStore", "LocalRouter", "NatsRouter"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def store_appends(source: str) -> list[int]:
    """Lines that call ``append`` on something named like a store."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "append"
            and "store" in _name(node.func.value).lower()
        ):
            found.append(node.lineno)
    return found


def engine_checks(source: str) -> list[int]:
    """Lines with ``isinstance(x, <engine class>)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _name(node.func) == "isinstance" and len(node.args) == 2:
            kinds = node.args[1]
            names = (
                [_name(e) for e in kinds.elts] if isinstance(kinds, ast.Tuple) else [_name(kinds)]
            )
            if ENGINES.intersection(names):
                found.append(node.lineno)
    return found


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_guards_see_what_they_look_for() -> None:
    assert store_appends("async def f(relay):\n    await relay.store.append([], None)\n") == [2]
    assert store_appends("self.store.append(x)\nstore.append(y)\nitems.append(z)\n") == [1, 2]
    assert engine_checks("if isinstance(self.router, NatsRouter): pass\n") == [1]
    assert engine_checks("isinstance(s, (int, JetStreamStore))\nisinstance(x, dict)\n") == [1]


def test_only_ingest_appends_to_the_store() -> None:
    offenders = {
        str(path.relative_to(SRC)): lines
        for path in _modules()
        if path.parent.name != "store"  # the engines themselves
        and path.name != "ingest.py"
        and (lines := store_appends(path.read_text()))
    }
    assert offenders == {}, f"Store.append outside pinrelay/ingest.py: {offenders}"
    assert store_appends((SRC / "ingest.py").read_text()), "ingest no longer appends?"


def test_no_module_asks_which_engine_it_has() -> None:
    offenders = {
        str(path.relative_to(SRC)): lines
        for path in _modules()
        if (lines := engine_checks(path.read_text()))
    }
    assert offenders == {}, f"isinstance on an engine class: {offenders}"
