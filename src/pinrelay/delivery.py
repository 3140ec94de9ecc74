"""One place owns a device's delivery (DESIGN, "delivery").

Reading the backlog from a cursor, the in-flight window, expiry on the way out
(the store never returns an expired message) and acks that let the store forget.
The WebSocket link drives a :class:`Delivery`; the long-poll inbox uses
:func:`fetch` and :func:`acknowledge`.  Neither re-implements them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from pinrelay.core import frames
from pinrelay.core.errors import ErrorCode, RemoteProtocolError
from pinrelay.core.model import StoredMessage
from pinrelay.core.timefmt import rfc3339
from pinrelay.core.window import Window
from pinrelay.metrics import Metrics
from pinrelay.store.base import Store

log = logging.getLogger(__name__)
Clock = Callable[[], float]


def msg_frame(m: StoredMessage) -> frames.Msg:
    """The ``msg`` frame for a stored message (the link and the inbox send the same)."""
    return frames.Msg(
        id=m.id,
        cursor=m.cursor,
        kind=m.kind,
        data=msgspec.Raw(m.data),
        topic=m.topic,
        urgency=m.urgency,
        sent_at=rfc3339(m.sent_at_ms),
        expires_at=rfc3339(m.expires_at_ms),
        sender=m.sender,
    )


async def fetch(store: Store, pin: str, after: int, limit: int, now: float) -> list[StoredMessage]:
    return await store.read(pin, after, limit, int(now * 1000))


async def acknowledge(store: Store, pin: str, cursor: int, last_cursor: int) -> None:
    """A cumulative ack from a device; a cursor never handed out is refused.

    The body is well formed but contradicts the device's state: 409, not 422.
    """
    if cursor > last_cursor:
        raise RemoteProtocolError(
            f"cursor {cursor} is beyond the device's last message ({last_cursor})",
            ErrorCode.CONFLICT,
        )
    await store.ack(pin, cursor)


class Delivery:
    """Feeds one link: at most ``window`` unacked messages, in cursor order."""

    def __init__(
        self,
        store: Store,
        pin: str,
        *,
        acked: int,
        window: int,
        send: Callable[[StoredMessage], None],
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.pin = pin
        self.window = Window(window, acked)
        self._send = send
        self._clock = clock
        self._metrics = metrics
        self._pump_task: asyncio.Task[None] | None = None
        self._again = False
        self._ack_target = acked
        self._ack_task: asyncio.Task[None] | None = None
        self.closed = False
        #: While the transport's buffer is full the pump waits (resume() restarts it).
        self.paused = False

    def wake(self) -> None:
        """New messages may be stored, or room opened up: pump when possible."""
        if self.closed or self.paused:
            return
        if self._pump_task is not None:
            self._again = True
            return
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                self._again = False
                while not self.closed and not self.paused and self.window.room:
                    batch = await fetch(
                        self.store, self.pin, self.window.sent, self.window.room, self._clock()
                    )
                    if self.closed:
                        return
                    for message in batch:
                        self.window.sent_one(message.cursor)
                        self._send(message)
                    self._metrics.delivered.inc(len(batch))
                    if len(batch) == 0:
                        break
                if not self._again or self.closed:
                    return
        except Exception:
            log.exception("delivery to %s failed", self.pin)
        finally:
            self._pump_task = None

    def ack(self, cursor: int) -> None:
        """A cumulative ack from the link; raises RemoteProtocolError if bogus."""
        in_flight = self.window.in_flight
        if not self.window.ack(cursor):
            return
        self._metrics.acked.inc(in_flight - self.window.in_flight)
        self._ack_target = cursor
        if self._ack_task is None:
            self._ack_task = asyncio.get_running_loop().create_task(self._flush_acks())
        self.wake()

    async def _flush_acks(self) -> None:
        # Coalesce: one store write per burst of acks, for the newest cursor.
        try:
            done = 0
            while done < self._ack_target:
                target = self._ack_target
                await self.store.ack(self.pin, target)
                done = target
        except Exception:
            log.exception("storing ack for %s failed (it will be redelivered)", self.pin)
        finally:
            self._ack_task = None

    def close(self) -> None:
        self.closed = True
