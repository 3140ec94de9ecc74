"""PIN-to-PIN messaging on the durable path (PROTOCOL, "Contacts" and "Chat").

Every edge (the link's ``send`` and ``read`` frames, the HTTP chat routes) calls
:class:`Chat`, which checks consent and bounds, then hands messages to ingest: a
chat message, a receipt and a contact notice are messages like a push, stored until
their device acknowledges them.  Receipts are made here too, from the acks that
delivery reports (:meth:`Chat.delivered`) and from ``read`` frames.

Order of writes, so that a crash repeats rather than loses: a delivered receipt and
its unread entry are stored before the ack that caused them; a read receipt before
(SQLite: with) its entry is marked read.  The entry also says that the receipt is
stored.  On SQLite a delivered receipt whose entry exists, or a read one whose entry
is read, is not stored again (Store.append: one transaction), so no receipt repeats
there.  On the cluster the entry goes after its receipt, and an ack of chats that
were not sent on its link (a hello's cursor) stores no receipt for those that have
one (:meth:`Chat.delivered`).  Each receipt is named (reader, message, state,
``Draft.dedup``), and the cluster stores a name once in 2 minutes: a relay that died
between the receipt and its entry leaves one receipt if the ack comes again within
that time; later, clients drop the repeat (the SDK's states only move forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from msgspec.structs import replace

from pinrelay.core import chat as wire
from pinrelay.core.chat import ChatLimits, Delivered, Refused, new_group_id
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import RandomPool, new_message_id
from pinrelay.core.model import Accepted, StoredMessage
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.core.social import Action, Transition, may_send
from pinrelay.ingest import Draft, Ingest
from pinrelay.store.base import MAX_GROUP, Group, IdempotencyKey, Rejected, Unread

#: How long a client_id is remembered (as an Idempotency-Key is).
CLIENT_ID_TTL_MS = 24 * 3600 * 1000
#: A send's fingerprint is this and its ``to``: a client_id used again answers the
#: first ``sent`` whatever the text, and with the first ``to`` (PROTOCOL "Chat").
#: Records written before the ``to`` was added (gone 24 h after) hold this alone.
_SEND_FINGERPRINT = "send"
#: How long the store remembers a message read once its read receipt is stored (a
#: delivered receipt asked for again after a crash is known for that long).
READ_KEEP_MS = 24 * 3600 * 1000
#: The fingerprint of a failed receipt's Idempotency-Key.
_FAILED_FINGERPRINT = "failed"
#: Message ids, as ingest's: one getrandom per ~400 sends, not one per send.
_ids_random = RandomPool(os.urandom)
#: The invitation budget's period (ChatLimits.invites_per_hour).
_HOUR_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class SentMessage:
    id: str
    to: str
    #: An earlier send with the same client_id: nothing was stored this time.
    replay: bool = False


def _no_group() -> PinrelayError:
    return PinrelayError("no such group (or you are not in it)", ErrorCode.NOT_FOUND)


def _added_notice(group: Group) -> bytes:
    return wire.contact_data("group_added", group.id, group.name)


@dataclass(slots=True)
class _Reserved:
    """Bytes counted against a device's budget, until given back (once)."""

    limiter: FailureLimiter
    device: str
    size: int

    def refund(self) -> None:
        self.limiter.refund(self.device, cost=self.size)
        self.size = 0


class Chat:
    def __init__(
        self, ingest: Ingest, clock: Callable[[], float], limits: ChatLimits | None = None
    ) -> None:
        self.ingest = ingest
        self.store = ingest.store
        self.clock = clock
        self.limits = limits or ChatLimits()
        self._sends = FailureLimiter(limit=self.limits.sends_per_minute, period=60.0)
        self._bytes = FailureLimiter(limit=self.limits.bytes_per_minute, period=60.0)

    # --- contacts ------------------------------------------------------------
    async def contact(self, actor: str, other: str, action: Action) -> Transition:
        """Apply ``actor``'s action about ``other`` and tell ``other`` what it implies.

        An invitation answers the same whether ``other`` is a device or not (no PIN
        enumeration), and costs the same either way (Store.contact_action: one SQLite
        transaction; on the cluster the same requests and round trips).
        """
        if actor == other:
            raise PinrelayError("a device cannot be its own contact", ErrorCode.INVALID)
        now = self.clock()
        # An accept of an accepted contact tells ``other`` again (a retry must: on the
        # cluster the notice may be what a crash lost), so repeats are counted with
        # invitations, or one device could fill another's queue with notices.
        repeat = action is Action.ACCEPT and (
            await self.store.contact_state(actor, other) == "accepted"
        )
        if action is Action.INVITE or repeat:
            # In the store, not in memory: every relay of a cluster counts against the
            # same budget, and a restart forgets none of it.  Every invitation counts.
            wait_ms = await self.store.take_budget(
                f"invites_{actor}", self.limits.invites_per_hour, _HOUR_MS, int(now * 1000)
            )
            if wait_ms > 0:
                what = "accepts of an accepted contact" if repeat else "invitations"
                raise Refused("rate_limited", f"too many {what}; try later", wait_ms / 1000)
        return await self.ingest.contact(actor, other, action, self.limits.notice_ttl_s)

    # --- sending -------------------------------------------------------------
    async def send(
        self, sender: str, to: str, text: str, client_id: str, ttl: float | None
    ) -> SentMessage:
        """Store a chat message for its recipient, or for every other member of a
        group in one write with one id; raises :class:`Refused`."""
        ttl = wire.check_send(to, text, client_id, ttl, self.ingest.limits.max_ttl_s)
        now = self.clock()
        idem = IdempotencyKey(
            f"chat {sender} {client_id}", f"{_SEND_FINGERPRINT} {to}", int(now * 1000)
        )
        try:
            return await self._send(sender, to, text, ttl, idem, now)
        except Refused as exc:
            # A retry of a message that was stored (its answer lost) is answered as the
            # first send was, even where the send would be refused now: the contact
            # removed, the group left.  A refusal that says "later" stands: the retry
            # after it gets the first answer.
            if exc.reason not in ("not_contact", "unknown_group"):
                raise
            earlier = await self._earlier(idem, to)
            if earlier is None:
                raise
            return earlier
        except PinrelayError as exc:
            if exc.code is not ErrorCode.CONFLICT:
                raise
            # The client_id was used for a message to another ``to``.
            earlier = await self._earlier(idem, to)
            if earlier is None:  # that one stored nothing: nothing to answer again
                detail = f"client_id {client_id!r} was used for another message today"
                raise Refused("invalid", detail) from None
            return earlier

    async def _earlier(self, idem: IdempotencyKey, to: str) -> SentMessage | None:
        """The first answer to the send stored under ``idem``'s key, if any."""
        found = await self.store.earlier_append(idem.key, idem.created_ms)
        if found is None:
            return None
        fingerprint, results = found
        head, _, first_to = fingerprint.partition(" ")
        stored = [r for r in results if isinstance(r, Accepted)]
        if head != _SEND_FINGERPRINT or not stored:
            return None
        # An older record names no ``to``: its one recipient, or this send's for a group.
        if not first_to:
            first_to = stored[0].pin if len(results) == 1 else to
        return SentMessage(stored[0].id, first_to, replay=True)

    async def _send(
        self, sender: str, to: str, text: str, ttl: float, idem: IdempotencyKey, now: float
    ) -> SentMessage:
        wait = self._sends.retry_after(sender, now)
        if wait > 0:
            raise Refused("rate_limited", "sending too fast; slow down", wait)
        if wire.is_group_id(to):
            group = await self.store.get_group(to)
            if group is None or sender not in group.members:
                raise Refused("unknown_group", "no such group (or you are not in it)")
            others = [m for m in group.members if m != sender]
            # A member that blocked the sender gets none of its messages, in a group
            # too; the sender is not told (``sent``, stored for the others).  Cached
            # reads on the cluster; point reads of one index on SQLite.
            states = await asyncio.gather(*(self.store.contact_state(m, sender) for m in others))
            recipients = [m for m, st in zip(others, states, strict=True) if st != "blocked"]
            data = wire.chat_data(text, to)
        else:
            # A block is answered as a stranger is: the sender cannot tell them apart.
            if to == sender or not may_send(await self.store.contact_state(to, sender)):
                raise Refused("not_contact", f"{to} is not a contact that accepted you")
            recipients, data = [to], wire.chat_data(text)
        message_id = new_message_id(now, _ids_random)
        if not recipients:
            # A group whose other members all blocked the sender (or left): ``sent``,
            # stored for nobody, and no write (on either store, so no record of the
            # client_id either), unless it is the retry of a send that was stored.
            earlier = await self._earlier(idem, to)
            if earlier is not None:
                return earlier
            self._sends.failed(sender, now)
            return SentMessage(message_id, to)
        size = wire.stored_bytes(data, len(recipients))
        drafts = [
            Draft(to=r, data=data, ttl=ttl, kind="chat", sender=sender, id=message_id)
            for r in recipients
        ]
        with self._bytes_reserved(sender, size, now) as reserved:
            results, replay = await self.ingest.accept_once(drafts, idem)
            stored = [r for r in results if not isinstance(r, Rejected)]
            if not stored and not wire.is_group_id(to):
                # The recipient's device was deleted since it accepted.
                raise Refused("not_contact", f"{to} is not a contact that accepted you")
            if replay:
                reserved.refund()  # the first send paid
            else:
                self._sends.failed(sender, now)
        return SentMessage(stored[0].id if stored else message_id, to, replay)

    @contextlib.contextmanager
    def _bytes_reserved(self, device: str, size: int, now: float) -> Iterator[_Reserved]:
        """Count ``size`` against ``device``'s byte budget (ChatLimits.bytes_per_minute)
        before the store is awaited, so that a device's concurrent requests (HTTP
        has nothing ordering them) see each other; refuse it if over; give it back if
        the block raises (nothing was stored)."""
        wait = self._bytes.retry_after(device, now, cost=size)
        if wait > 0:
            raise Refused(
                "rate_limited",
                f"this would store {size} bytes for its recipients, more than is left of"
                f" this device's {self.limits.bytes_per_minute} a minute",
                wait,
            )
        self._bytes.failed(device, now, cost=size)
        reserved = _Reserved(self._bytes, device, size)
        try:
            yield reserved
        except BaseException:
            reserved.refund()
            raise

    # --- groups --------------------------------------------------------------
    async def create_group(
        self, creator: str, name: str, members: Sequence[str]
    ) -> tuple[Group, list[str]]:
        """A new group of ``creator`` and those of ``members`` who are its accepted
        contacts; the group, and the PINs left out.  Members are told."""
        wanted = list(dict.fromkeys(m for m in members if m != creator))
        if len(wanted) + 1 > MAX_GROUP:
            raise PinrelayError(f"a group has at most {MAX_GROUP} members", ErrorCode.INVALID)
        added, ignored = await self._contacts_of(creator, wanted)
        now = self.clock()
        group = Group(
            new_group_id(os.urandom), name, creator, sorted([creator, *added]), int(now * 1000)
        )
        # Its notices are a stored copy per member, as a group message's are.
        size = wire.stored_bytes(_added_notice(group), len(added))
        with self._bytes_reserved(creator, size, now):
            await self.store.create_group(group)
        await self._tell_added(group, added)
        return group, ignored

    async def add_members(
        self, actor: str, group_id: str, members: Sequence[str]
    ) -> tuple[Group, list[str]]:
        group = await self._own_group(actor, group_id)
        wanted = [m for m in dict.fromkeys(members) if m not in group.members]
        added, ignored = await self._contacts_of(actor, wanted)
        size = wire.stored_bytes(_added_notice(group), len(added))
        with self._bytes_reserved(actor, size, self.clock()):
            changed = await self.store.change_members(group_id, added, [])
            if changed is None:
                raise _no_group()
        await self._tell_added(changed, added)
        return changed, ignored

    async def remove_member(self, actor: str, group_id: str, member: str) -> None:
        group = await self._own_group(actor, group_id)
        if member not in group.members:
            raise PinrelayError(f"{member} is not in the group", ErrorCode.NOT_FOUND)
        await self.store.change_members(group_id, [], [member])

    async def leave(self, member: str, group_id: str) -> None:
        group = await self.store.get_group(group_id)
        if group is None or member not in group.members:
            raise _no_group()
        await self.store.change_members(group_id, [], [member])

    async def _own_group(self, actor: str, group_id: str) -> Group:
        group = await self.store.get_group(group_id)
        if group is None or actor not in group.members:
            raise _no_group()
        if group.creator != actor:
            raise PinrelayError("only the group's creator may do that", ErrorCode.FORBIDDEN)
        return group

    async def _contacts_of(self, owner: str, pins: Sequence[str]) -> tuple[list[str], list[str]]:
        accepted = {c.pin for c in await self.store.contacts(owner) if c.state == "accepted"}
        return [p for p in pins if p in accepted], [p for p in pins if p not in accepted]

    async def _tell_added(self, group: Group, added: Sequence[str]) -> None:
        if not added:
            return
        data = _added_notice(group)
        await self.ingest.accept(
            [
                Draft(
                    to=m,
                    data=data,
                    ttl=self.limits.notice_ttl_s,
                    kind="contact",
                    sender=group.creator,
                )
                for m in added
            ]
        )

    # --- receipts ------------------------------------------------------------
    async def delivered(self, reader: str, chats: Sequence[Delivered]) -> None:
        """``reader`` acknowledged these chat messages: tell each sender, and remember
        them until read.  Done before the ack is stored (see the module's doc)."""
        if not chats:
            return
        now_ms = int(self.clock() * 1000)
        keep_ms = now_ms + self.limits.notice_ttl_s * 1000
        if self.store.atomic_receipts:
            # One write for both: one SQLite transaction (one fsync on the round trip),
            # which stores a receipt only with a new entry (Store.append).
            await self.ingest.accept(
                [self._receipt(reader, c.sender, c.id, "delivered") for c in chats],
                unread=[Unread(reader, c.id, c.sender, keep_ms, c.group) for c in chats],
            )
            return
        # The cluster: a chat acknowledged again (a hello's cursor after its relay
        # died, with up to 5 s of acks held there) whose entry exists has its
        # receipt stored.  The entries go after the receipts, so an entry is proof:
        # a crash between them repeats a receipt (dropped by its name, if within
        # the stream's duplicate window), never loses one.
        again = [c.id for c in chats if c.again]
        if again:
            known = await self.store.find_unread(reader, again, now_ms, with_read=True)
            told = {u.id for u in known}
            chats = [c for c in chats if not (c.again and c.id in told)]
            if not chats:
                return
        await self.ingest.accept(
            [self._receipt(reader, c.sender, c.id, "delivered") for c in chats]
        )
        await self.store.put_unread(
            [Unread(reader, c.id, c.sender, keep_ms, c.group) for c in chats]
        )

    async def read(self, reader: str, ids: Sequence[str]) -> int:
        """``reader`` read these messages: one read receipt each, for those delivered
        to it and not read before; how many."""
        found = await self.store.find_unread(
            reader, list(dict.fromkeys(ids)), int(self.clock() * 1000)
        )
        if not found:
            return 0
        keep_ms = int(self.clock() * 1000) + READ_KEEP_MS
        read = [replace(u, expires_ms=min(u.expires_ms, keep_ms)) for u in found]
        results = await self.ingest.accept(
            [self._receipt(reader, u.sender, u.id, "read") for u in found], read=read
        )
        return sum(isinstance(r, Accepted) for r in results)

    async def expire(self, limit: int = 500) -> int:
        """Chat messages that expired undelivered: a ``failed`` receipt to each sender,
        then the store forgets them; how many.

        Each receipt is stored under an Idempotency-Key of its own (the recipient and
        the message), so a crash before the store forgets, or two relays handed the
        same expiry (the cluster, store/jetstream/expiry.py), store it once.
        """
        now = self.clock()
        now_ms = int(now * 1000)
        expired = await self.store.expired_chats(now_ms, limit)
        if not expired:
            return 0

        async def fail(m: StoredMessage) -> None:
            if m.sender is not None:
                idem = IdempotencyKey(f"failed {m.pin} {m.id}", _FAILED_FINGERPRINT, now_ms)
                await self.ingest.accept([self._receipt(m.pin, m.sender, m.id, "failed")], idem)

        await asyncio.gather(*(fail(m) for m in expired))
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
            # One receipt per reader, message and state: a repeat of it is dropped
            # by a store that cannot tell by the unread entry (the cluster).
            dedup=f"receipt.{reader}.{message_id}.{state}",
        )
