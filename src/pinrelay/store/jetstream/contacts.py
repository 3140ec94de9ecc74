"""A device's contacts on the cluster (core/social.py): one KV record per device.

**Records.**  ``<bucket_prefix>_contacts``, key the owner's PIN, value JSON
(:class:`~.records.ContactsRec`): the owner device's gen and its entries
``{other PIN: [state, since_ms]}``.  One record per device rather than a key per
pair: a device's list is one read, its limit a length, its deletion one purge, and
a send's consent check one cached lookup.  At MAX_CONTACTS (5,000) a record is about
190 KB of JSON, under NATS's 1 MB default payload.  A record carries the gen of the
device it was written for, as messages do (:mod:`.devices`): one left behind by a
deletion (a crash, or an action racing with it) counts as empty for a later device
with that PIN.

**Actions.**  :meth:`ContactLists.act` reads both records from the bucket's leader
(and the other PIN's device record, beside them: see "Same cost"),
asks :func:`~pinrelay.core.social.transition`, and, if either entry changes, writes
both records, each with compare-and-set on the revision it read:

- where the bucket takes atomic batches (nats-server 2.12+, :mod:`.setup`), both in
  one batch: the server checks both revisions and stores both records or neither,
  so nobody ever sees half an action (SQLite's one transaction, in effect);
- otherwise one after the other, B's ("theirs") first: a crash in between leaves
  B's entry new and A's old, from which the actor's retry ends where the first
  attempt meant to (core/social.py; every case in tests/core/test_social.py).

A lost compare-and-set (another action on either record, through this relay or
another) reads both again and recomputes, after a short random pause, at most
:data:`MAX_ATTEMPTS` times (then 503).  A write retried after its acknowledgement
was lost finds the records holding exactly what it wrote: that counts as done, not
as a conflict (a remove would otherwise answer "no such contact" to its own
success).  Within one relay, actions on the same records take turns (locks in PIN
order), so compare-and-set settles races between relays only.

Both records, even one whose entry stays (unless its PIN has no device): the
last action to write a pair then wrote both of its entries, from one reading of
both, so no interleaving of actions through several relays leaves a pair half one
action's and half another's.  Writing only what changed, two crossing invitations
written one by one each finished its own side from the other's half-written state,
and both ended "invited" (tests/store/test_jetstream_social.py).

**Same cost whether the other PIN is a device or not** (PROTOCOL "Contacts": no
PIN enumeration, by the answer's timing either).  An action costs two round trips in
series: the reads, all at once, then the writes and the notice, at once.

- The other PIN's device record is read from the leader beside the contacts
  records, never from the cache: a PIN with no device is never cached, so a cached
  device would otherwise answer a request sooner.
- A write that changes only the actor's record (the other PIN has no device) is
  padded with a second write of the same record, so it is two messages, as a
  pair's batch is (one after the other without atomic batches, as B's then A's).
- The notice is published at the same time as the records' batch (the store's
  ``tell``), not after it; an invitation that tells nothing (no device, or one
  that blocked the actor) publishes a decoy instead (:meth:`.appends.Appender.decoy`),
  a message of the same size in the same stream, which the feed brings every relay
  as it does a notice, no device reads, and which expires in a second.  A retry
  after a lost compare-and-set publishes again only if what it tells changed (then
  under the next message id), so a stranger's decoy is not repeated either.
- The price of telling concurrently: a notice can be stored for an attempt whose
  compare-and-set then lost (another action on the pair won in between), or whose
  write failed.  The device is then told of an invitation that the records may not
  hold (the other action replaced it: a block, crossing invitations); its contact
  list, read from the records, is the truth, and a notice is a hint to read it, as
  a retried action's repeated notice already was (core/social.py).  Counted and
  timed in DECISIONS 45.

**Limits.**  An actor holding MAX_CONTACTS entries gets CONFLICT for a new one, as
on SQLite.  B's record is bounded too: while it is full, or B has no device, B's
entry is not added and B is told nothing (an invitation is kept on A's side alone,
answered as one to a PIN with no device, so full lists cannot be probed).

**Reads.**  :meth:`ContactLists.state` is a chat send's consent check: records are
cached per relay and kept right by a watch (:mod:`.watch`), as device records are,
so a send usually costs no request, and a change through another relay is seen
within the watch's lag.  A device without a record is cached as an empty one at
revision 0, which any write replaces.  The cache is bounded by weight, a record
weighing one plus one per entry (:data:`CACHE_WEIGHT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import msgspec

from pinrelay.core import social
from pinrelay.core.chat import contact_data
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import next_message_id
from pinrelay.core.model import Accepted, NewMessage
from pinrelay.core.social import Action, Event, State, Transition
from pinrelay.store.base import MAX_CONTACTS, AppendResult, Contact, StoreClosed, to_results
from pinrelay.store.jetstream.appends import Appender, Outgoing, send_batch
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.kv import Entry, KeyedLocks, Kv, cas_pause
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import (
    SAFE_TOKEN,
    ContactsRec,
    DeviceRec,
    contacts_dec,
    json_enc,
)
from pinrelay.store.jetstream.watch import Cached, RecordCache, Watch

#: Attempts of one action before its records are declared too busy (StoreClosed).
MAX_ATTEMPTS = 20
#: Cached records' weight at most: one per record and one per entry.  Decoded, an
#: entry takes 160-210 bytes and a record about 200 more (tracemalloc): ~50 MB at most.
CACHE_WEIGHT = 200_000

Entries = Mapping[str, tuple[State, int]]
#: A :class:`Write`'s revision when it repeats the write before it (module doc).
PAD = -1
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Side:
    """One device's record as an action read it."""

    pin: str
    #: The device's gen; None: no such device (its record is never written).
    gen: str | None
    #: Its entries (none if the record is another gen's).
    entries: Entries
    #: The revision a compare-and-set names (0: no record).
    revision: int = 0
    #: The record as stored (None: no record): recognises an action's own write.
    raw: bytes | None = None
    #: The device's record (None: no such device).
    device: DeviceRec | None = None


#: What an action's attempt publishes for the other device, given its transition and
#: the other side as read: an awaitable run at the same time as the records' write,
#: or None (nothing).
Tell = Callable[[Transition, Side], Awaitable[T] | None]


class Write(NamedTuple):
    """A record to write, if it is still at ``revision`` (:data:`PAD`: the same as
    the write before it, written again: see "Same cost" in the module doc)."""

    pin: str
    rec: ContactsRec
    raw: bytes
    revision: int


def _weigh(rec: ContactsRec) -> int:
    return 1 + len(rec.entries)


def plan(action: Action, mine: Side, theirs: Side, now_ms: int) -> tuple[Transition, list[Write]]:
    """The transition of ``mine.pin``'s ``action`` about ``theirs.pin`` and the
    writes it takes: none if neither entry changes, else both records (B's first;
    if B is no device, A's twice).  Pure.  Raises as :func:`social.transition` does,
    and CONFLICT for an actor's entry past MAX_CONTACTS."""
    m, t = mine.entries.get(theirs.pin), theirs.entries.get(mine.pin)
    m_state, t_state = (None if m is None else m[0]), (None if t is None else t[0])
    # B's entry can be added only to a device's list that has room (module doc).
    reachable = theirs.gen is not None and (t is not None or len(theirs.entries) < MAX_CONTACTS)
    step = social.transition(action, m_state, t_state, reachable)
    if not reachable and step.theirs != t_state:
        step = Transition(step.mine, t_state)
    if m is None and step.mine is not None and len(mine.entries) >= MAX_CONTACTS:
        raise PinrelayError(f"a device holds at most {MAX_CONTACTS} contacts", ErrorCode.CONFLICT)
    writes: list[Write] = []
    if (step.mine, step.theirs) == (m_state, t_state):
        return step, writes
    for side, key, before, after in (
        (theirs, mine.pin, t_state, step.theirs),
        (mine, theirs.pin, m_state, step.mine),
    ):
        if side.gen is None:  # no device: its entry never changes (above)
            continue
        entries = dict(side.entries)
        if after is None:
            entries.pop(key, None)
        elif after != before:
            entries[key] = (after, now_ms)  # a new state: since now
        rec = ContactsRec(side.gen, entries)
        writes.append(Write(side.pin, rec, json_enc.encode(rec), side.revision))
    if len(writes) == 1:  # B is no device: as many messages as for a pair
        writes.append(writes[0]._replace(revision=PAD))
    return step, writes


class ContactLists:
    """Every device's contacts: cached reads, actions on pairs of records."""

    def __init__(self, kv: Kv, bucket: Bucket, devices: Devices) -> None:
        self.kv = kv
        self.bucket = bucket
        self.devices = devices
        #: Both records of an action in one atomic batch (set by the store's open).
        self.atomic = False
        self.cache: RecordCache[ContactsRec] = RecordCache(
            contacts_dec.decode, CACHE_WEIGHT, _weigh
        )
        self.watch = Watch(bucket, self.cache)
        self._locks = KeyedLocks()

    # --- reads ---------------------------------------------------------------------
    async def state(self, owner: str, other: str) -> State | None:
        """``owner``'s entry for ``other`` (cached: usually no request)."""
        got = (await self._entries(owner)).get(other)
        return None if got is None else got[0]

    async def listing(self, owner: str) -> list[Contact]:
        """``owner``'s entries, by PIN (cached)."""
        entries = await self._entries(owner)
        return [Contact(pin, state, since) for pin, (state, since) in sorted(entries.items())]

    async def _gen(self, pin: str) -> str | None:
        got = await self.devices.get(pin)  # cached; None for a PIN unfit for a key
        return None if got is None else got.rec.gen

    async def _entries(self, owner: str) -> Entries:
        gen = await self._gen(owner)
        if gen is None:
            return {}

        async def load() -> Cached[ContactsRec]:
            got = await self.kv.get(self.bucket, owner)
            if got is None:
                return Cached(ContactsRec(""), 0)  # no record: cached as empty
            return Cached(contacts_dec.decode(got.value), got.revision)

        got = await self.cache.through(owner, load)
        return got.value.entries if got is not None and got.value.gen == gen else {}

    async def _fresh(self, pin: str, *, other: bool = False) -> Side:
        """``pin``'s record from the bucket's leader (for a compare-and-set); the
        ``other`` side's device record from the leader too, at the same time (module
        doc, "Same cost"), the actor's from the cache."""
        if other:
            found, got = await asyncio.gather(self.devices.get_fresh(pin), self._read(pin))
        else:
            found = await self.devices.get(pin)
            got = None if found is None else await self._read(pin)
        if found is None:
            return Side(pin, None, {})
        gen = found.rec.gen
        if got is None:
            return Side(pin, gen, {}, device=found.rec)
        rec = contacts_dec.decode(got.value)
        entries = rec.entries if rec.gen == gen else {}
        return Side(pin, gen, entries, got.revision, got.value, found.rec)

    async def _read(self, pin: str) -> Entry | None:
        return await self.kv.get(self.bucket, pin) if SAFE_TOKEN.match(pin) else None

    # --- actions -------------------------------------------------------------------
    async def act(
        self,
        actor: str,
        other: str,
        action: Action,
        now_ms: int,
        tell: Tell[T] | None = None,
    ) -> tuple[Transition, T | None]:
        """Apply ``actor``'s ``action`` about ``other`` to both records, running what
        ``tell`` gives at the same time as their write (module doc); the transition
        and what the last ``tell`` that ran returned."""
        self.kv.api.check_open()
        if actor == other:
            raise PinrelayError("a device cannot be its own contact", ErrorCode.INVALID)
        first, second = sorted((actor, other))
        async with self._locks.hold(first), self._locks.hold(second):
            tried: tuple[Transition, list[Write]] | None = None
            told: T | None = None
            for attempt in range(MAX_ATTEMPTS):
                mine, theirs = await asyncio.gather(
                    self._fresh(actor), self._fresh(other, other=True)
                )
                if tried is not None and _landed(tried[1], mine, theirs):
                    # A retried write found its own, whose answer was lost: the cache
                    # takes it now, as from an answered write (the watch may lag).
                    for w in tried[1]:
                        side = mine if w.pin == mine.pin else theirs
                        self.cache.put(w.pin, w.rec, side.revision)
                    return tried[0], told
                if mine.gen is None:
                    raise PinrelayError(f"no device {actor}", ErrorCode.NOT_FOUND)
                step, writes = plan(action, mine, theirs, now_ms)
                telling = None if tell is None else tell(step, theirs)
                written, result = await _together(self._write(writes) if writes else None, telling)
                if telling is not None:
                    told = result
                if written:
                    return step, told
                tried = (step, writes)
                await cas_pause(attempt)
        raise StoreClosed(f"contacts of {actor} and {other}: too many concurrent changes")

    async def act_telling(
        self,
        actor: str,
        other: str,
        action: Action,
        now_ms: int,
        notice: NewMessage,
        appender: Appender,
    ) -> tuple[Transition, Accepted | None]:
        """Store.contact_action: :meth:`act`, and at the same time ``notice`` for
        ``other`` if the transition tells it something; an invitation that tells
        nothing publishes a decoy instead, so that it costs the same ("Same cost"
        above).  Two streams, so not in one write: a crash after the
        records loses the notice until the actor retries, which tells ``other`` again
        (core/social.py: notices are recomputed from the resulting state)."""
        #: What attempts published, in order: an event, or None for a decoy.
        published: list[Event | None] = []

        def tell(step: Transition, theirs: Side) -> Awaitable[list[AppendResult]] | None:
            device = theirs.device
            event = step.notify if device is not None else None
            if event is None and action is not Action.INVITE:
                return None
            if published and published[-1] == event:
                return None  # a retry after a lost compare-and-set: told already
            told = sum(e is not None for e in published)
            published.append(event)
            nonce = uuid.uuid4().hex
            if event is None or device is None:
                return appender.decoy(notice, nonce)
            message_id = notice.id
            for _ in range(told):  # a notice that differs from one stored: its own id
                message_id = next_message_id(message_id)
            message = msgspec.structs.replace(notice, id=message_id, data=contact_data(event))
            return appender.append_known([message], nonce, {other: device})

        step, results = await self.act(actor, other, action, now_ms, tell)
        accepted = [r for r in to_results(results or []) if isinstance(r, Accepted)]
        return step, accepted[0] if accepted else None

    async def _write(self, writes: list[Write]) -> bool:
        """Compare-and-set ``writes`` (in order); False if a record moved on."""
        if self.atomic and len(writes) > 1:
            return await self._write_batch(writes)
        last = 0
        for w in writes:
            padding = w.revision == PAD
            revision = await self.kv.put(self.bucket, w.pin, w.raw, last if padding else w.revision)
            if revision is None:
                if padding:  # the record is written; the pad only had to cost a write
                    continue
                return False
            self.cache.put(w.pin, w.rec, revision)
            last = revision
        return True

    async def _write_batch(self, writes: list[Write]) -> bool:
        items = [
            Outgoing(
                n,
                self.bucket.subject(w.pin),
                w.raw,
                # A pad has no check of its own: the batch's first write checks.
                {}
                if w.revision == PAD
                else {"Nats-Expected-Last-Subject-Sequence": str(w.revision)},
            )
            for n, w in enumerate(writes)
        ]

        # A batch id per attempt: a retry is a new batch, checked anew.  A moved
        # record (either one): the server stored neither.
        top = await self.kv.api.unless_moved(
            lambda: send_batch(self.kv.api, items, uuid.uuid4().hex), f"write {self.bucket.name}"
        )
        if top is None:
            return False
        first = top - len(writes) + 1  # an atomic batch is stored in one run
        for k, w in enumerate(writes):
            self.cache.put(w.pin, w.rec, first + k)
        return True

    async def remove(self, pin: str) -> None:
        """Remove ``pin``'s record (its device is deleted)."""
        async with self._locks.hold(pin):
            await self.kv.remove(self.bucket, pin)
            self.cache.forget(pin)
            with contextlib.suppress(Exception):  # best effort: see .watch
                await self.watch.announce_removal(self.kv.api.nc, pin)


async def _together(
    write: Awaitable[bool] | None, tell: Awaitable[T] | None
) -> tuple[bool, T | None]:
    """``write`` (True if none) and ``tell`` at once; if the write raises, the tell is
    cancelled (it may have been stored: module doc) and the write's error raised."""
    if tell is None:
        return (True if write is None else await write), None
    if write is None:
        return True, await tell
    telling = asyncio.ensure_future(tell)
    try:
        written = await write
    except BaseException:
        telling.cancel()
        await asyncio.wait([telling])
        if not telling.cancelled():
            telling.exception()  # retrieved: the write's error is the answer
        raise
    return written, await telling


def _landed(writes: list[Write], mine: Side, theirs: Side) -> bool:
    """Whether both records now hold exactly what ``writes`` wrote."""
    now = {mine.pin: mine.raw, theirs.pin: theirs.raw}
    return all(now[w.pin] == w.raw for w in writes)
