"""Fixtures of the Web Push tests.

One relay per module (``relay``): every test makes devices and subscriptions of its
own, so they need no relay of their own; a test that needs flags starts one with
``relay_factory``.  ``links`` is the chat tests' (links closed before relays stop).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chat.conftest import links
from tests.relayproc import RelayProc

__all__ = ["links", "relay"]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProc]:
    proc = RelayProc(tmp_path_factory.mktemp("relay"))
    try:
        yield proc.start()
    finally:
        try:
            proc.stop()
        finally:
            proc.kill()
