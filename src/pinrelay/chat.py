"""PIN-to-PIN messaging on the durable path (PROTOCOL, "Contacts" and "Chat").

Every edge (the link's ``send`` and ``read`` frames, the HTTP chat routes) calls
:class:`Chat`, which checks consent and bounds, then hands messages to ingest: a
chat message, a receipt and a contact notice are messages like a push, stored until
their device acknowledges them.  Receipts are made here too, from the acks that
delivery reports (:meth:`Chat.delivered`) and from ``read`` frames.

Order of writes, so that a crash repeats rather than loses: a delivered receipt and
its unread entry are stored before the ack that caused them; a read receipt before
its unread entry is dropped.  A repeated receipt is dropped by clients (the SDK's
states only move forward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pinrelay.core import chat as wire
from pinrelay.core.chat import ChatLimits, Delivered, Refused
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.core.social import Action, Transition, may_send
from pinrelay.ingest import Draft, Ingest
from pinrelay.store.base import IdempotencyKey, Rejected, Unread

#: How long a client_id is remembered (as an Idempotency-Key is).
CLIENT_ID_TTL_MS = 24 * 3600 * 1000
#: The fingerprint of every send: a client_id used again answers the first ``sent``
#: whatever the text (PROTOCOL "Chat").
_SEND_FINGERPRINT = "send"


@dataclass(frozen=True, slots=True)
class SentMessage:
    id: str
    to: str
    #: An earlier send with the same client_id: nothing was stored this time.
    replay: bool = False


class Chat:
    def __init__(
        self, ingest: Ingest, clock: Callable[[], float], limits: ChatLimits | None = None
    ) -> None:
        self.ingest = ingest
        self.store = ingest.store
        self.clock = clock
        self.limits = limits or ChatLimits()
        self._invites = FailureLimiter(limit=self.limits.invites_per_hour, period=3600.0)
        self._sends = FailureLimiter(limit=self.limits.sends_per_minute, period=60.0)

    # --- contacts ------------------------------------------------------------
    async def contact(self, actor: str, other: str, action: Action) -> Transition:
        """Apply ``actor``'s action about ``other`` and tell ``other`` what it implies.

        An invitation answers the same whether ``other`` is a device or not (no PIN
        enumeration), and costs one store write either way (Store.contact_action).
        """
        now = self.clock()
        if action is Action.INVITE:
            wait = self._invites.retry_after(actor, now)
            if wait > 0:
                raise Refused("rate_limited", "too many invitations; try later", wait)
            self._invites.failed(actor, now)  # counted: every invitation, not failures
        return await self.ingest.contact(actor, other, action, self.limits.notice_ttl_s)

    # --- sending -------------------------------------------------------------
    async def send(
        self, sender: str, to: str, text: str, client_id: str, ttl: float | None
    ) -> SentMessage:
        """Store a chat message for its recipient; raises :class:`Refused`."""
        ttl = wire.check_send(to, text, client_id, ttl, self.ingest.limits.max_ttl_s)
        if wire.is_group_id(to):
            raise Refused("unknown_group", "no such group")
        now = self.clock()
        wait = self._sends.retry_after(sender, now)
        if wait > 0:
            raise Refused("rate_limited", "sending too fast; slow down", wait)
        # A block is answered as a stranger is: the sender cannot tell them apart.
        if to == sender or not may_send(await self.store.contact_state(to, sender)):
            raise Refused("not_contact", f"{to} is not a contact that accepted you")
        idem = IdempotencyKey(f"chat {sender} {client_id}", _SEND_FINGERPRINT, int(now * 1000))
        draft = Draft(to=to, data=wire.chat_data(text), ttl=ttl, kind="chat", sender=sender)
        results, replay = await self.ingest.accept_once([draft], idem)
        result = results[0]
        if isinstance(result, Rejected):
            # The recipient's device was deleted since it accepted.
            raise Refused("not_contact", f"{to} is not a contact that accepted you")
        if not replay:
            self._sends.failed(sender, now)
        return SentMessage(result.id, to, replay)

    # --- receipts ------------------------------------------------------------
    async def delivered(self, reader: str, chats: Sequence[Delivered]) -> None:
        """``reader`` acknowledged these chat messages: tell each sender, and remember
        them until read.  Done before the ack is stored (see the module's doc)."""
        if not chats:
            return
        now_ms = int(self.clock() * 1000)
        keep_ms = now_ms + self.limits.notice_ttl_s * 1000
        await self.store.put_unread(
            [Unread(reader, c.id, c.sender, keep_ms, c.group) for c in chats]
        )
        await self.ingest.accept(
            [self._receipt(reader, c.sender, c.id, "delivered") for c in chats]
        )

    async def read(self, reader: str, ids: Sequence[str]) -> int:
        """``reader`` read these messages: one read receipt each, for those delivered
        to it and not read before; how many."""
        found = await self.store.find_unread(
            reader, list(dict.fromkeys(ids)), int(self.clock() * 1000)
        )
        if not found:
            return 0
        await self.ingest.accept([self._receipt(reader, u.sender, u.id, "read") for u in found])
        await self.store.drop_unread(reader, [u.id for u in found])
        return len(found)

    async def expire(self, limit: int = 500) -> int:
        """Chat messages that expired undelivered: a ``failed`` receipt to each sender,
        then the message goes (a crash in between repeats the receipt); how many."""
        now = self.clock()
        expired = await self.store.expired_chats(int(now * 1000), limit)
        if not expired:
            return 0
        receipts = [
            self._receipt(m.pin, m.sender, m.id, "failed") for m in expired if m.sender is not None
        ]
        await self.ingest.accept(receipts)
        await self.store.forget([(m.pin, m.cursor) for m in expired])
        return len(expired)

    def _receipt(
        self, reader: str, sender: str, message_id: str, state: wire.ReceiptState
    ) -> Draft:
        return Draft(
            to=sender,
            data=wire.receipt_data(message_id, state),
            ttl=self.limits.notice_ttl_s,
            kind="receipt",
            sender=reader,
        )
