"""One place owns a device's delivery (DESIGN, "delivery").

Reading the backlog from a cursor, the in-flight window, expiry on the way out
(the store never returns an expired message) and acks that let the store forget.
The WebSocket link drives a :class:`Delivery`; the long-poll inbox uses
:func:`fetch` and :func:`acknowledge`.  Neither re-implements them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import msgspec

from pinrelay.core import frames, strictjson
from pinrelay.core.chat import Delivered, delivered
from pinrelay.core.errors import ErrorCode, RemoteProtocolError
from pinrelay.core.ledger import COUNTED
from pinrelay.core.model import StoredMessage
from pinrelay.core.timefmt import rfc3339
from pinrelay.core.webpush import receipt_wanted
from pinrelay.core.window import Window
from pinrelay.metrics import Metrics
from pinrelay.store.base import Store

log = logging.getLogger(__name__)
Clock = Callable[[], float]
#: Told of tracked messages (chat, Web Push with receipts) a device acknowledged,
#: before the ack is stored (Relay.acked).
OnAcked = Callable[[str, Sequence[Delivered]], Awaitable[None]]
#: Told of the id of each tracked message sent to the device (a broadcast's, counted).
OnSent = Callable[[str], None]
#: Told of the (bytes, expiry) of each counted message acknowledged (the tenant's
#: stored_bytes ledger, pinrelay/storedbytes.py).
OnGone = Callable[[list[tuple[int, int]]], None]
#: Messages read per step when an ack covers messages this delivery did not send.
SETTLE_PAGE = 256

#: The first wait before a pump whose store read failed tries again; it doubles up
#: to PUMP_RETRY_MAX_S while the link stays open.
PUMP_RETRY_S = 0.1
PUMP_RETRY_MAX_S = 5.0

#: How long acks wait to be written together (DECISIONS 28).
ACK_DELAY_S = 0.01


def msg_frame(m: StoredMessage) -> frames.Msg:
    """The ``msg`` frame for a stored message (the link and the inbox send the same)."""
    return frames.Msg(
        id=m.id,
        cursor=m.cursor,
        kind=m.kind,
        # Stored by an older version, a message may not be UTF-8: never a bad text frame.
        data=msgspec.Raw(strictjson.valid_utf8(m.data)),
        topic=m.topic,
        urgency=m.urgency,
        sent_at=rfc3339(m.sent_at_ms),
        expires_at=rfc3339(m.expires_at_ms),
        sender=m.sender,
    )


async def fetch(store: Store, pin: str, after: int, limit: int, now: float) -> list[StoredMessage]:
    return await store.read(pin, after, limit, int(now * 1000))


async def beyond_limit(store: Store, pin: str, cursor: int, last_cursor: int) -> int | None:
    """The device's cursor limit if ``cursor`` (a hello's, an ack's) is beyond it,
    else None.  ``last_cursor``, the device record's, is cheap but may lag (a cluster
    writes no record per message): only the store's limit refuses, asked only then."""
    if cursor <= last_cursor:
        return None
    limit = await store.cursor_limit(pin)
    return limit if cursor > limit else None


def tracked(m: StoredMessage) -> Delivered | None:
    """What a device's ack of ``m`` must report before it is stored: a chat message's
    receipt, a Web Push receipt its sender asked for, a broadcast's count; None for
    everything else."""
    if m.kind == "chat":
        return delivered(m.id, m.sender, m.data, m.cursor)
    if m.kind == "webpush":
        return receipt_wanted(m.id, m.data, m.cursor)
    if m.kind == "broadcast":
        return Delivered(m.id, "", None, m.cursor, broadcast=True)
    return None


async def settle(
    store: Store, pin: str, after: int, upto: int, now: float, on_acked: OnAcked | None
) -> None:
    """Tell ``on_acked`` of the chat messages in (``after``, ``upto``]: an ack that
    covers messages no delivery of this relay tracked (a hello's cursor, the inbox)."""
    if on_acked is None:
        return
    while after < upto:
        page = await fetch(store, pin, after, SETTLE_PAGE, now)
        covered = [m for m in page if m.cursor <= upto]
        chats = [replace(c, again=True) for m in covered if (c := tracked(m)) is not None]
        if chats:
            await on_acked(pin, chats)
        if len(covered) < SETTLE_PAGE:
            return
        after = covered[-1].cursor


async def acknowledge(
    store: Store,
    pin: str,
    cursor: int,
    device_cursors: tuple[int, int],
    now: float,
    on_acked: OnAcked | None = None,
) -> None:
    """A cumulative ack from a device; a cursor never handed out is refused.

    ``device_cursors``: the device record's (last, acked) cursors.  The body is well
    formed but contradicts the device's state: 409, not 422.
    """
    last_cursor, acked_cursor = device_cursors
    limit = await beyond_limit(store, pin, cursor, last_cursor)
    if limit is not None:
        raise RemoteProtocolError(
            f"cursor {cursor} is beyond the device's last message ({limit})",
            ErrorCode.CONFLICT,
        )
    await settle(store, pin, acked_cursor, cursor, now, on_acked)
    await store.ack(pin, cursor)


class AckWriter:
    """Acks of every link of a relay, written to the store together.

    A cumulative ack only needs its newest cursor per device, and losing one in a
    crash only means a redelivery the SDK drops: so acks are coalesced across
    devices, and held up to ``delay`` seconds, into one ``Store.ack_many``
    (docs/DECISIONS.md, "Acks"; 28 for the delay).  Without the delay, paced
    pushes to online devices each cost a store round trip of their own for the ack.
    """

    def __init__(self, store: Store, delay: float = ACK_DELAY_S) -> None:
        self.store = store
        self.delay = delay
        self._pending: dict[str, int] = {}
        #: The batch being written.
        self._writing: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def cursor(self, pin: str) -> int:
        """The newest ack of ``pin`` this writer holds or is writing (0: none): the
        device is done with what it covers, whatever the store says yet."""
        return max(self._pending.get(pin, 0), self._writing.get(pin, 0))

    def submit(self, pin: str, cursor: int) -> None:
        if cursor > self._pending.get(pin, 0):
            self._pending[pin] = cursor
        if self._timer is None and self._task is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._task is None and self._pending:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            batch, self._pending = self._pending, {}
            self._writing = batch
            await self.store.ack_many(list(batch.items()))
        except Exception:
            log.exception("storing acks failed (those messages will be redelivered)")
        finally:
            self._writing = {}
            self._task = None
            # What came in meanwhile waits its own delay: looping here at once would
            # go back to a round trip per ack at a steady trickle.
            if self._pending and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.delay, self._start)

    async def flush(self) -> None:
        """Write what is pending now (before the store closes)."""
        while self._pending or self._task is not None:
            if self._timer is not None:  # no waiting out the delay
                self._timer.cancel()
                self._timer = None
            task = self._task
            if task is None:
                task = self._task = asyncio.get_running_loop().create_task(self._run())
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we were cancelled, not the write
                # The write itself was cancelled: a failed batch, as in _run.


class Delivery:
    """Feeds one link: at most ``window`` unacked messages, in cursor order.

    Two ways in: the pump reads the store after ``window.sent`` (on link, after a
    gap, when room opens); and the hand-off, for messages just committed, when the
    delivery is caught up: they are exactly the next ones, because they arrive in
    cursor order with no gap (SQLite's commits wake devices in cursor order; the
    cluster's feed follows the stream), so they go out with no read at all.
    """

    def __init__(
        self,
        store: Store,
        pin: str,
        *,
        acked: int,
        window: int,
        send: Callable[[list[StoredMessage]], None],
        clock: Clock,
        metrics: Metrics,
        acks: AckWriter,
        on_acked: OnAcked | None = None,
        on_broken: Callable[[], None] | None = None,
        on_sent: OnSent | None = None,
        on_gone: OnGone | None = None,
        tenant: str | None = None,
    ) -> None:
        self.store = store
        self.pin = pin
        #: The device's tenant: its messages' waits count for its delay target too.
        self.tenant = tenant
        self.window = Window(window, acked)
        self._send = send
        self._clock = clock
        self._metrics = metrics
        self._acks = acks
        self._pump_task: asyncio.Task[None] | None = None
        self._again = False
        #: True while the store holds nothing after ``window.sent`` (as far as we know).
        self._caught_up = False
        self.closed = False
        #: While the transport's buffer is full the pump waits (resume() restarts it).
        self.paused = False
        self._on_acked = on_acked
        #: Chat messages sent and not acknowledged yet, in cursor order (at most a
        #: window's worth, without their text).
        self._chats: deque[Delivered] = deque()
        #: Acks waiting for their receipts to be stored, in order: (cursor, the chats
        #: it covers, or the cursor after which to read them from the store).
        self._settling: deque[tuple[int, list[Delivered] | int]] = deque()
        self._settle_task: asyncio.Task[None] | None = None
        #: Called when receipts could not be stored: the link must close, so that the
        #: messages come again (with their receipts) rather than be acked without.
        self._on_broken = on_broken
        self._on_sent = on_sent
        #: Told of the (bytes, expiry) of counted messages acknowledged (the ledger).
        self._on_gone = on_gone
        #: Counted messages sent and not acknowledged yet: (cursor, bytes, expiry).
        self._counted: deque[tuple[int, int, int]] = deque()
        #: Since when the device is linked: a message's wait counts from then at the
        #: earliest (what it waited offline is not the relay's delay).
        self._since_ms = int(clock() * 1000)
        #: Since when the relay owes this device a message and has not sent it (None:
        #: it owes nothing, or the window is full); in ``metrics.owed`` meanwhile.
        self._owed_since: int | None = None

    def wake(self, fresh: list[StoredMessage] | None = None) -> None:
        """Messages were stored (``fresh``: just committed, in cursor order, with no
        gap since the last ones handed over), or room opened up: send them now if
        they are the next ones, else pump the store."""
        if self.closed:
            return
        if fresh is not None:
            # A read may have sent some already (the cluster's feed can lag a read).
            fresh = [m for m in fresh if m.cursor > self.window.sent]
            if not fresh:
                return
        if (
            fresh
            and self._caught_up
            and self._pump_task is None
            and not self.paused
            and len(fresh) <= self.window.room
        ):
            for message in fresh:
                self.window.sent_one(message.cursor)
            self._track(fresh)
            self._send(fresh)
            self._metrics.delivered.inc(len(fresh))
            return
        self._caught_up = False
        if self.paused:
            return
        if fresh and self.window.room:
            # Stored for it, and room to send: owed from now until a pump sends it.
            self._owe(int(self._clock() * 1000))
        if self._pump_task is not None:
            self._again = True
            return
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        # A read that fails (a store briefly away, a leader election) is tried again
        # while the link is open, after a back-off that doubles up to PUMP_RETRY_MAX_S:
        # otherwise the device would wait for the next wake-up, which may never come
        # (nothing more is pushed to it, or, caught up, a hand-off skips the read),
        # and what it is owed would sit in the store while it stays linked.
        delay = PUMP_RETRY_S
        failures = 0
        try:
            while True:
                started_ms = int(self._clock() * 1000)
                try:
                    await self._pump_rounds()
                except Exception as exc:
                    if self.closed:
                        return
                    self._owe(started_ms)
                    failures += 1
                    if failures == 1:
                        log.exception("delivery to %s failed; retrying", self.pin)
                    else:
                        log.debug("delivery to %s failed again: %r", self.pin, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, PUMP_RETRY_MAX_S)
                    if self.closed:
                        return
                    continue
                if failures:
                    log.warning("delivery to %s works again after %d failures", self.pin, failures)
                return
        finally:
            self._pump_task = None

    async def _pump_rounds(self) -> None:
        while True:
            self._again = False
            while not self.closed and not self.paused and self.window.room:
                room = self.window.room
                batch = await fetch(self.store, self.pin, self.window.sent, room, self._clock())
                if self.closed:
                    break
                if batch:
                    for message in batch:
                        self.window.sent_one(message.cursor)
                    self._track(batch)
                    self._send(batch)  # one write for the whole batch
                    self._metrics.delivered.inc(len(batch))
                if len(batch) < room:
                    self._caught_up = True  # drained; until the next wake-up
                    break
            if not self._again or self.closed:
                # Caught up, or the window full (a device that does not ack holds
                # itself up: not the relay's lag), paused, or closed: nothing owed.
                self._paid()
                return

    def _owe(self, since_ms: int) -> None:
        """The relay owes this device a message since ``since_ms`` (Metrics.owed)."""
        if self._owed_since is None and not self.closed:
            self._owed_since = since_ms
            self._metrics.owed.start(self, since_ms)

    def _paid(self) -> None:
        if self._owed_since is not None:
            self._owed_since = None
            self._metrics.owed.stop(self)

    def _track(self, batch: list[StoredMessage]) -> None:
        now_ms, since, waits = int(self._clock() * 1000), self._since_ms, self._metrics.waits
        for message in batch:
            waits.observe(now_ms - max(message.sent_at_ms, since), self.tenant)
        if self._on_gone is not None:
            for message in batch:
                if message.kind in COUNTED:
                    self._counted.append((message.cursor, len(message.data), message.expires_at_ms))
        if self._on_acked is not None:
            for message in batch:
                if (chat := tracked(message)) is not None:
                    self._chats.append(chat)
                    if chat.broadcast and self._on_sent is not None:
                        self._on_sent(chat.id)

    def ack(self, cursor: int) -> None:
        """A cumulative ack from the link; raises RemoteProtocolError if bogus."""
        in_flight = self.window.in_flight
        if not self.window.ack(cursor):
            return
        self._metrics.acked.inc(in_flight - self.window.in_flight)
        counted = self._counted
        if counted and counted[0][0] <= cursor and self._on_gone is not None:
            gone: list[tuple[int, int]] = []
            while counted and counted[0][0] <= cursor:
                _, nbytes, expires_ms = counted.popleft()
                gone.append((nbytes, expires_ms))
            self._on_gone(gone)
        chats = self._chats
        covered: list[Delivered] = []
        while chats and chats[0].cursor <= cursor:
            covered.append(chats.popleft())
        if covered or self._settling:
            # Receipts first, then the ack: a crash in between repeats them.
            self._queue_settle(cursor, covered)
        else:
            self._acks.submit(self.pin, cursor)
        if not self._caught_up:
            self.wake()  # room opened and the store may hold more

    async def settled(self) -> None:
        """Until the acks received so far are settled (their receipts stored): a
        ``read`` after an ack must find what that ack delivered."""
        while self._settle_task is not None:
            await asyncio.shield(self._settle_task)

    def settle_from(self, after: int, upto: int) -> None:
        """A hello acknowledged (``after``, ``upto``], sent by an earlier link: their
        receipts, read from the store, then the ack."""
        self._queue_settle(upto, after)

    def _queue_settle(self, cursor: int, chats: list[Delivered] | int) -> None:
        self._settling.append((cursor, chats))
        if self._settle_task is None:
            self._settle_task = asyncio.get_running_loop().create_task(self._settle())

    async def _settle(self) -> None:
        try:
            while self._settling:
                cursor, chats = self._settling[0]
                taken = 1
                if isinstance(chats, int):
                    await settle(self.store, self.pin, chats, cursor, self._clock(), self._on_acked)
                else:
                    # The acks queued behind this one while its receipts were stored:
                    # theirs go in one write, so a slow commit is not followed by one
                    # commit per waiting ack (the round trip's tail).
                    batch = list(chats)
                    for later, more in itertools.islice(self._settling, 1, None):
                        if isinstance(more, int):
                            break
                        batch += more
                        cursor = later
                        taken += 1
                    if batch and self._on_acked is not None:
                        await self._on_acked(self.pin, batch)
                for _ in range(taken):
                    self._settling.popleft()
                self._acks.submit(self.pin, cursor)
        except Exception:
            # Not stored: the ack is not either, so the messages come again later
            # (on the next link) and their receipts with them.
            log.exception("storing receipts for %s failed", self.pin)
            self._settling.clear()
            self.close()
            if self._on_broken is not None:
                self._on_broken()
        finally:
            self._settle_task = None

    def close(self) -> None:
        self.closed = True
        self._paid()
