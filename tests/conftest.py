"""Fixtures shared by the process-level tests: real relays on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.relayproc import RelayProc

RelayFactory = Callable[..., RelayProc]


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """Start relays on demand; every one is stopped by pid, even when a test fails."""
    started: list[RelayProc] = []

    def start(name: str = "relay", **kwargs: object) -> RelayProc:
        proc = RelayProc(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        try:
            proc.stop()
        finally:
            proc.kill()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProc:
    return relay_factory()
