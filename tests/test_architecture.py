"""Architecture guards over all of src/pinrelay (STYLE, "What we leave behind").

- No module grows past :data:`MAX_LINES` (nats.py's 2,400-line client is what we
  leave behind; issue 11 split the 1,388-line JetStream engine).  A module over it
  must be listed in :data:`OVERSIZED` with the issue that splits it.
- No code reads a private attribute of nats-py's objects (``kv._name``,
  ``js._prefix``, ``nc._...``): they change without notice.  Precisely: no
  attribute access ``x._name`` (or ``getattr(x, "_name")``) on anything but
  ``self``/``cls`` where ``_name`` is a private attribute or method nats-py defines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import nats

SRC = Path(__file__).resolve().parents[1] / "src" / "pinrelay"
NATS_SRC = Path(nats.__file__).resolve().parent

MAX_LINES = 800
#: Modules allowed over MAX_LINES for now, each with the issue that will split it.
#: Empty: after issue 11 every module is under it (cluster.py is the largest, 721).
OVERSIZED: dict[str, str] = {}


def modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_oversized() -> None:
    too_long = {
        str(p.relative_to(SRC)): n
        for p in modules(SRC)
        if (n := line_count(p)) > MAX_LINES and str(p.relative_to(SRC)) not in OVERSIZED
    }
    assert too_long == {}, (
        f"modules over {MAX_LINES} lines: split them by concern (as store/jetstream/ was), "
        "or list them in OVERSIZED with the issue that will"
    )


def test_oversized_exceptions_are_still_needed() -> None:
    for name in OVERSIZED:
        path = SRC / name
        assert path.is_file(), f"{name} is gone: drop it from OVERSIZED"
        assert line_count(path) > MAX_LINES, f"{name} is short now: drop it from OVERSIZED"


def nats_private_names() -> set[str]:
    """Every ``_name`` nats-py sets on ``self`` or defines as a method or class attribute."""
    names: set[str] = set()
    for path in modules(NATS_SRC):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_reads(source: str, private: set[str]) -> Iterator[tuple[int, str]]:
    """(line, text) of each read of a name in ``private`` on anything but self/cls."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in private:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            yield node.lineno, ast.unparse(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
        ):
            yield node.lineno, ast.unparse(node)


def test_nats_private_names_are_found() -> None:
    private = nats_private_names()
    # The ones this codebase once used (issue 11), so the check keeps its teeth.
    assert {"_name", "_prefix", "_js"} <= private


def test_the_check_catches_a_private_read() -> None:
    private = nats_private_names()
    bad = 'prefix = f"$KV.{kv._name}."\nx = getattr(js, "_prefix")\nself._name = 1\n'
    assert sorted(line for line, _ in private_reads(bad, private)) == [1, 2]


def test_no_private_attribute_of_nats_py_is_used() -> None:
    private = nats_private_names()
    found = [
        f"{p.relative_to(SRC)}:{line}: {text}"
        for p in modules(SRC)
        for line, text in private_reads(p.read_text(encoding="utf-8"), private)
    ]
    assert found == [], "use nats-py's public API, or keep the value yourself"
