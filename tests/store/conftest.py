"""Fixtures for the Store contract suite.

To run the contract against another engine, add its name to the ``store``
fixture's ``params`` and a branch to :func:`make_store`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pinrelay.store.base import Store
from pinrelay.store.sqlite import SqliteStore

ENGINE = pytest.StashKey[str]()
Reopen = Callable[[], Awaitable[Store]]


def make_store(engine: str, directory: Path) -> Store:
    """A new, unopened store of ``engine`` keeping its data under ``directory``."""
    if engine == "sqlite":
        return SqliteStore(directory / "pinrelay.db")
    raise ValueError(f"unknown store engine {engine!r}")


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store on ``tmp_path``; closed after the test, whatever happens."""
    engine: str = request.param
    request.node.stash[ENGINE] = engine
    s = make_store(engine, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def reopen(
    request: pytest.FixtureRequest, store: Store, tmp_path: Path
) -> AsyncIterator[Reopen]:
    """Open a second store of the same engine on the same data as ``store``."""
    opened: list[Store] = []

    async def _reopen() -> Store:
        s = make_store(request.node.stash[ENGINE], tmp_path)
        opened.append(s)
        await s.open()
        return s

    try:
        yield _reopen
    finally:
        for s in opened:
            await s.close()
