"""Failed receipts on the cluster: a chat message's expiry, scheduled by JetStream.

Messages leave the stream by their ``Nats-TTL``, which tells nobody.  So every chat
message is published with a *schedule* (nats-server 2.12+, ADR-51) in the same
atomic batch, on a subject of its own outside the devices' subjects::

    <prefix>-expiry[.<partition>].s.<recipient PIN>.<message id>

``Nats-Schedule: @at <expiry + FIRE_GRACE_MS>``, ``Nats-Schedule-Target:
<prefix>-expiry[.<partition>].f.<recipient PIN>``, its payload an
:class:`ExpiryRec` (recipient, id, sender, expiry).  Then:

- Delivered: the delivered receipt is published with a *cancel* beside it, an empty
  message on the schedule's subject: the last message of a subject holds its
  schedule, so the schedule is off.  The cancel goes by a 1 s TTL, the schedule
  message by its own (the chat's: removal by TTL is cheap, a purge or a rollup is
  not; DECISIONS 34).  In one atomic batch when the recipient's and the
  sender's partitions are the same stream (always, unpartitioned); else the cancel
  goes first, so a crash in between costs a delivered receipt (the message would come
  again if not expired), never a failed one for a delivered chat.
- Not delivered: at expiry + grace the server publishes the payload to the target
  subject (with a TTL of :data:`FIRED_TTL`) and removes the schedule.  One durable
  pull consumer per stream, :data:`CONSUMER`, shared by every relay, with explicit
  acks, hands each such notice to one relay (:meth:`Expiries.due`), whose
  ``Chat.expire`` stores the failed receipt under an Idempotency-Key of its own and
  then acknowledges the notice (:meth:`Expiries.done`).  A relay killed in between:
  the notice comes again after :data:`ACK_WAIT_S` to any relay, and the key stores
  the receipt once.

Why a schedule and not a tracker whose expiry leaves a subject delete marker: markers
are a stream-wide setting, so every device subject whose last message expires would
get one too (messages the reader and the feed must skip); the marker lands on the
tracker's own subject, so the consumer would see every tracker twice; and a
delivered chat's tracker would still expire into a marker to check.  Here a delivered
chat costs two more messages (its schedule, its cancel), each in a batch sent anyway,
and only undelivered ones cost a delivery (DECISIONS 41).

The grace covers an ack in flight at the moment of expiry: reads stop handing a chat
out at its expiry, so only an ack later than the grace can cross the notice (both
receipts then reach the sender; the SDK keeps the furthest state).

The subjects live outside ``<prefix>.>`` so that the feed, the readers and the
purges never see them.  Nothing here does I/O but :class:`Expiries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg as NatsMsg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from pinrelay.core.chat import ReceiptData
from pinrelay.core.model import NewMessage, StoredMessage
from pinrelay.store.jetstream.layout import Layout
from pinrelay.store.jetstream.records import SAFE_TOKEN

log = logging.getLogger(__name__)

#: The durable consumer of each stream's expiry notices, shared by every relay.
CONSUMER = "pinrelay-chat-expiry"
#: How long after its expiry a chat's schedule fires: an ack in flight then lands first.
FIRE_GRACE_MS = 1000
#: A notice not acknowledged this long after it was handed out goes to a relay again.
ACK_WAIT_S = 5.0
#: How long a fired notice stays if no relay takes it (all down): a day, as long as
#: the Idempotency-Key of its receipt.
FIRED_TTL = "24h"
#: How long a cancel stays: it only has to replace the schedule.
CANCEL_TTL = "1"
#: Notices handed to one relay at once, per stream, at most.
MAX_PENDING = 10_000


class ExpiryRec(msgspec.Struct, array_like=True):
    """What a schedule carries to its notice: whom to tell, about what."""

    pin: str
    id: str
    sender: str
    expires_ms: int


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(ExpiryRec)
_receipt_dec = msgspec.json.Decoder(ReceiptData)


def at_spec(ms: int) -> str:
    """``@at`` and an RFC 3339 UTC time with milliseconds (the server keeps them)."""
    when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return "@at " + when.replace("+00:00", "Z")


def schedule(
    layout: Layout, m: NewMessage, msg_id: str, ttl: str
) -> tuple[str, bytes, dict[str, str]]:
    """A chat message's schedule, kept ``ttl`` (the message's own ``Nats-TTL``, past
    the firing): (subject, payload, headers), or ValueError."""
    if m.sender is None or not (SAFE_TOKEN.match(m.pin) and SAFE_TOKEN.match(m.id)):
        raise ValueError("no sender, or an id unfit for a subject")
    payload = _enc.encode(ExpiryRec(m.pin, m.id, m.sender, m.expires_at_ms))
    headers = {
        "Nats-Msg-Id": msg_id,
        "Nats-TTL": ttl,
        "Nats-Schedule": at_spec(m.expires_at_ms + FIRE_GRACE_MS),
        "Nats-Schedule-Target": layout.fired_subject(m.pin),
        "Nats-Schedule-TTL": FIRED_TTL,
    }
    return layout.schedule_subject(m.pin, m.id), payload, headers


def cancel(layout: Layout, m: NewMessage) -> tuple[str, dict[str, str]] | None:
    """What cancels the schedule a delivered receipt answers: (subject, headers), or
    None for any other message."""
    if m.kind != "receipt" or m.sender is None:
        return None
    try:
        receipt = _receipt_dec.decode(m.data)
    except msgspec.DecodeError:
        return None
    # "read" follows "delivered", which cancelled already.
    if receipt.state != "delivered" or not (
        SAFE_TOKEN.match(m.sender) and SAFE_TOKEN.match(receipt.id)
    ):
        return None
    headers = {"Nats-TTL": CANCEL_TTL}
    return layout.schedule_subject(m.sender, receipt.id), headers


def consumer_config(layout: Layout, part: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=CONSUMER,
        filter_subject=layout.fired_filter(part),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=-1,
        max_ack_pending=MAX_PENDING,
    )


class Expiries:
    """Expiry notices, from every stream's shared consumer (see the module doc)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        #: Whether chats are scheduled (the streams take schedules; set by open).
        self.enabled = False
        self._subs: list[JetStreamContext.PullSubscription] = []
        #: Notices handed out and not acknowledged yet: (PIN, sequence) → message.
        self._held: dict[tuple[str, int], NatsMsg] = {}

    async def start(self, js: JetStreamContext) -> None:
        if not self.enabled:
            return
        for part in range(self.layout.partitions):
            stream = self.layout.stream_name(part)
            self._subs.append(await js.pull_subscribe_bind(CONSUMER, stream))

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        self._held.clear()  # not acknowledged: they come again, to some relay
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def due(self, now_ms: int, limit: int, wait: float) -> list[StoredMessage]:
        """Chats whose schedule fired and that expired by ``now_ms``, as messages
        (cursor: the notice's sequence, a key for :meth:`done`), waiting up to
        ``wait`` s for the first."""
        if not self._subs:
            await asyncio.sleep(wait)
            return []
        batch = max(1, limit // len(self._subs))
        loop = asyncio.get_running_loop()
        began = loop.time()
        got = await asyncio.gather(*(self._fetch(sub, batch, wait) for sub in self._subs))
        # The fetch may have waited up to ``wait`` s: judge notices by the clock as it
        # is now, or a notice that fired during the wait would be put back for that long.
        now_ms += int((loop.time() - began) * 1000)
        out: list[StoredMessage] = []
        for msgs in got:
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                try:
                    rec = _dec.decode(msg.data)
                except msgspec.DecodeError:
                    log.warning("expiry notice %d is not ours: dropped", seq)
                    await msg.term()
                    continue
                if rec.expires_ms > now_ms:  # not by the caller's clock: again then
                    await msg.nak(delay=max(0.1, (rec.expires_ms - now_ms) / 1000))
                    continue
                self._held[rec.pin, seq] = msg
                out.append(
                    StoredMessage(
                        rec.pin,
                        rec.id,
                        b"",
                        None,
                        "normal",
                        0,
                        rec.expires_ms,
                        "chat",
                        rec.sender,
                        seq,
                    )
                )
        return out

    async def done(self, keys: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """The failed receipts of these notices are stored: acknowledge them.  The
        keys that name no notice handed out here (messages): returned."""
        rest: list[tuple[str, int]] = []
        for key in keys:
            msg = self._held.pop(key, None)
            if msg is None:
                rest.append(key)
            else:
                await msg.ack()
        return rest

    @staticmethod
    async def _fetch(
        sub: JetStreamContext.PullSubscription, batch: int, wait: float
    ) -> list[NatsMsg]:
        try:
            return await sub.fetch(batch, timeout=wait)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("fetching expiry notices failed: %r", exc)
            await asyncio.sleep(wait)
            return []
