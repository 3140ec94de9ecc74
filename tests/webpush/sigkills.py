"""A sender's work run while another thread SIGKILLs the relay (the crash tests).

The killer waits until ``done()`` (the sender's answered count) passes each of
``kills`` marks spread evenly over ``total``, each moved at random by up to
``jitter``, then SIGKILLs the relay and starts it again on the same data.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable

from tests.relayproc import RelayProc


class SigKills:
    """:meth:`run` the work; :attr:`failures`: the killer's, for the work to stop on."""

    def __init__(
        self, relay: RelayProc, done: Callable[[], int], *, total: int, kills: int, jitter: int
    ) -> None:
        self.relay = relay
        self.done = done
        self.total = total
        self.kills = kills
        self.jitter = jitter
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._rng = random.Random()

    def _killer(self) -> None:
        try:
            for k in range(self.kills):
                mark = (k + 1) * self.total // (self.kills + 1)
                mark += self._rng.randint(-self.jitter, self.jitter)
                while self.done() < mark and not self._stop.is_set():
                    time.sleep(0.001)
                self.relay.kill()
                self.relay.start(timeout=30)
        except BaseException as exc:
            self.failures.append(exc)

    async def run(self, work: Callable[[], None]) -> None:
        """``work`` in a thread of its own while the relay is killed; then no killer
        may have failed."""
        thread = threading.Thread(target=self._killer)
        thread.start()
        try:
            await asyncio.to_thread(work)
        finally:
            self._stop.set()
            thread.join()
        assert not self.failures, self.failures
