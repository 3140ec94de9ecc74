"""The feed: every new message of the cluster, in stream order, to every relay.

Before issue 12 a push was followed by a wake-up sent to the relay holding the
device's link (a route lookup), which then read the message back (a Direct Get
with its own inbox): two round trips and a read per message, and wake-ups that
could arrive out of cursor order, so a read was always needed.  Now each relay
follows every message stream with one ordered consumer (new messages only, no
acks, in memory on the server; it resumes after the last sequence it delivered
when a server or leader goes away).  For a device this relay *follows* (a link or
a long-poll here) the message is handed to the router as it arrives: in stream
order, so in cursor order for each device, with no gap, and with its payload, so
an online device gets it with no read at all.  Messages of devices not followed
here are dropped after one look at their subject.

What a relay learns this way also guards reads (``Reader``): once followed, the
newest cursor the feed delivered for a device is the point a batched Direct Get
from a follower must reach before its "no more messages" is believed.

Cost: every relay receives every message (about 25 µs of relay CPU each, measured
in bench/RESULTS.md), so this suits a handful of relays; OPERATIONS.md has the
sizing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import nats.js.errors
from nats.aio.msg import Msg as NatsMsg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from pinrelay import faults
from pinrelay.core.model import StoredMessage
from pinrelay.store.jetstream.layout import Layout
from pinrelay.store.jetstream.records import DeviceRec, decode_msg, stored
from pinrelay.store.jetstream.watch import RecordCache

log = logging.getLogger(__name__)

#: Seconds between the feed consumers' idle heartbeats; two missed ones re-create
#: the consumer from where it stopped.
FEED_HEARTBEAT_S = 1.0

#: Called with a followed device's new messages in cursor order, or None when they
#: could not be checked here (the link should read the store).
Deliver = Callable[[str, list[StoredMessage] | None], None]


def stream_sequence(msg: NatsMsg) -> int:
    """The stream sequence of a consumer's delivery, from its reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.…`` (9 tokens), or with a
    domain and account hash (12 or more): parsed here because nats-py's
    ``Msg.metadata`` builds a whole object per message, a cost every relay pays for
    every message of the cluster.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 12:
        return int(tokens[7])
    return msg.metadata.sequence.stream


class Feed:
    """Follows the message streams; hands a followed device's messages to ``deliver``."""

    def __init__(
        self,
        layout: Layout,
        devices: RecordCache[DeviceRec],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.devices = devices
        self.clock = clock
        self.deliver: Deliver | None = None
        #: Called with a PIN no longer followed here (its held ack is written).
        self.on_unfollow: Callable[[str], None] = lambda pin: None
        #: PIN → how many followers (a link, long-polls) this relay has for it.
        self._follows: dict[str, int] = {}
        #: PIN → the newest cursor the feed delivered since it was followed.
        self._fed: dict[str, int] = {}
        self._pending: dict[str, list[StoredMessage] | None] = {}
        self._scheduled = False
        #: One ordered consumer per stream (partition), and its stream's last
        #: sequence the feed saw (any device's message: all of them reach it).
        self._subs: list[JetStreamContext.PushSubscription] = []
        self._seen: list[int] = []
        self._js: JetStreamContext | None = None
        #: Partition → (since when it is behind, the newest sequence seen then).
        self._behind: dict[int, tuple[int, int]] = {}
        #: Partition → when its consumer was last restarted (ms).
        self._restarted: dict[int, int] = {}
        #: Consumers restarted (metrics, tests).
        self.restarts = 0
        #: Messages received, and of those for devices followed here (metrics, tests).
        self.received = 0
        self.handed = 0

    async def start(self, js: JetStreamContext) -> None:
        self._js = js
        self._seen = []  # a start after a failed one begins again
        for part in range(self.layout.partitions):
            stream = self.layout.stream_name(part)
            # nats-py re-creates an ordered consumer that has delivered nothing yet
            # from sequence 1: what was stored before we started is skipped here, by
            # sequence, rather than handed over again.
            self._seen.append((await js.stream_info(stream)).state.last_seq)
            self._subs.append(await self._subscribe(js, part, None))

    async def _subscribe(
        self, js: JetStreamContext, part: int, start: int | None
    ) -> JetStreamContext.PushSubscription:
        """An ordered consumer of partition ``part``'s messages: new ones, or those
        from sequence ``start`` on."""

        async def on_msg(msg: NatsMsg) -> None:
            await self._on_msg(msg, part)

        config = None
        if start is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            )
        return await js.subscribe(
            f"{self.layout.part_prefix(part)}.>",
            stream=self.layout.stream_name(part),
            cb=on_msg,
            config=config,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW if start is None else None,
            idle_heartbeat=FEED_HEARTBEAT_S,
        )

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        self._js = None
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- lag (DECISIONS 63) ------------------------------------------------------------
    async def check(self, now_ms: int) -> None:
        """Compare each stream's newest device message with the last the feed saw:
        one request per stream (the last message on its device subjects: the expiry
        schedules beside them never reach the feed).  Behind, the feed counts as
        late from the first check that saw it behind until it reaches the newest
        message of that check; one that keeps up with a busy stream reaches it by
        the next check, and counts from then."""
        js = self._js
        if js is None:
            return
        heads = await asyncio.gather(*(self._head(js, p) for p in range(len(self._seen))))
        for part, head in enumerate(heads):
            seen = self._seen[part]
            behind = self._behind.get(part)
            if head <= seen:
                self._behind.pop(part, None)
            elif behind is None or seen >= behind[1]:
                self._behind[part] = (now_ms, head)

    async def _head(self, js: JetStreamContext, part: int) -> int:
        subject = f"{self.layout.part_prefix(part)}.>"
        try:
            return (await js.get_last_msg(self.layout.stream_name(part), subject)).seq or 0
        except nats.js.errors.NotFoundError:
            return 0

    def lag_ms(self, now_ms: int) -> int:
        """How long the feed has been behind a stream without catching up (0: not)."""
        return max((now_ms - since for since, _ in self._behind.values()), default=0)

    async def restart(self, behind_ms: int, now_ms: int) -> list[str]:
        """Re-create the consumer of each stream the feed has been behind for
        ``behind_ms`` or more (and not restarted in the last ``behind_ms``), from the
        message after the last it saw: a consumer that stopped delivering (deleted,
        stuck, its re-creation failed) resumes where it stopped, none skipped.  The
        streams restarted."""
        js = self._js
        if js is None:
            return []
        done: list[str] = []
        for part, (since, _) in list(self._behind.items()):
            if now_ms - since < behind_ms or now_ms - self._restarted.get(part, 0) < behind_ms:
                continue
            self._restarted[part] = now_ms
            old = self._subs[part]
            with contextlib.suppress(Exception):
                await old.unsubscribe()
            self._subs[part] = await self._subscribe(js, part, self._seen[part] + 1)
            self.restarts += 1
            done.append(self.layout.stream_name(part))
        return done

    # --- interest ------------------------------------------------------------------
    def follow(self, pin: str) -> None:
        """From now on, hand ``pin``'s new messages over (call before reading its backlog)."""
        self._follows[pin] = self._follows.get(pin, 0) + 1

    def unfollow(self, pin: str) -> None:
        n = self._follows.get(pin, 0) - 1
        if n > 0:
            self._follows[pin] = n
            return
        self._follows.pop(pin, None)
        # What was fed while followed says nothing once messages may pass unseen.
        self._fed.pop(pin, None)
        self.on_unfollow(pin)

    def followed(self, pin: str) -> bool:
        return pin in self._follows

    def known(self, pin: str) -> int:
        """The newest cursor delivered for ``pin`` since it was followed (0: none)."""
        return self._fed.get(pin, 0)

    # --- messages ------------------------------------------------------------------
    def resync(self) -> None:
        """The feed may have dropped a message (a slow consumer): every followed
        device reads the store once, so no hand-off can skip past what was lost."""
        for pin in self._follows:
            self._pending[pin] = None
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            # Everything that arrived in this turn of the loop goes out together.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _on_msg(self, msg: NatsMsg, part: int = 0) -> None:
        if faults.active("feed-stall"):
            await faults.hold("feed-stall")
        seq = stream_sequence(msg)
        if seq <= self._seen[part]:
            # Seen already: stored before the feed began (a consumer re-created from
            # 1), or handed on before a restart from an earlier sequence.
            return
        self._seen[part] = seq
        self.received += 1
        try:
            pin = self.layout.pin_of(msg.subject)
        except IndexError:
            return  # not a device subject
        if pin not in self._follows:
            return
        m = decode_msg(seq, msg.data)
        if m is None:
            return
        self._fed[pin] = max(self._fed.get(pin, 0), seq)
        self.handed += 1
        pending = self._pending.get(pin, [])
        cached = self.devices.get(pin)
        if (
            cached is None
            or pending is None
            or m.gen != cached.value.gen
            or m.expires_ms <= self.clock() * 1000
        ):
            # Not sure here (the device's gen not at hand or changed, an earlier
            # message of this turn already sent it to the store, expiry by another
            # clock): the link reads the store, which decides.
            self._pending[pin] = None
            if cached is not None and m.gen != cached.value.gen:
                self.devices.drop(pin)  # the store reads the record again
        else:
            pending.append(stored(pin, seq, m))
            self._pending[pin] = pending
        self._schedule()

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        deliver = self.deliver
        if deliver is None:
            return
        for pin, messages in pending.items():
            if messages is None or messages:
                try:
                    deliver(pin, messages)
                except Exception:
                    log.exception("handing %s its new messages failed", pin)
