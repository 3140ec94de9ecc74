"""A real relay process for tests: moved to :mod:`pinrelay.testing.relayproc`.

Re-exported here so ``from tests.relayproc import RelayProc, free_port,
TIMEOUT_FACTOR`` keeps working.
"""

from __future__ import annotations

from pinrelay.testing.ports import free_port
from pinrelay.testing.relayproc import RelayProc
from pinrelay.testing.wait import TIMEOUT_FACTOR, wait_until, wait_until_async

__all__ = ["TIMEOUT_FACTOR", "RelayProc", "free_port", "wait_until", "wait_until_async"]
