"""Broadcast fan-out: a channel's members get the broadcast, once each (core/channels.py).

The API stores a broadcast's record (its 201) and hands it here.  The fan-out
walks the channel's members in PIN order, a page at a time: the page's members
are fixed in the record, its consent (refusals, the daily marketing cap) is
settled by the store, then the page goes through ingest as one append with an
idempotency key named by the broadcast and the page's start, and the record's
progress is written together with the next page's members.  A relay that dies
between the append and the progress leaves a page that, done again by whichever
relay resumes it, replays the first append's results: no member gets it twice.

A make-good (core/makegood.py) is a broadcast too: its members are its tenant's
devices, and each one's message carries a code of its own (makegood.py).

Every relay looks for broadcasts whose progress stood still for ``takeover_s``
(their relay died) and resumes them; two relays resuming the same one are safe
for the same reason.  Relays also count the sends and acks of broadcast
messages and add them to the store's counts every second, and once an hour
forget broadcasts done and expired for ``keep_s`` and audit lines older than
``audit_keep_s`` (a store that grew for years would slow every listing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
from collections import Counter
from collections.abc import Callable

import msgspec

from pinrelay import faults
from pinrelay.core.channels import (
    FANOUT_PAGE,
    Broadcast,
    BroadcastCounts,
    Channel,
    day_of,
    member_data,
)
from pinrelay.core.makegood import MAKEGOOD_CHANNEL
from pinrelay.core.model import Accepted
from pinrelay.ingest import Draft, Ingest
from pinrelay.makegood import makegood_drafts
from pinrelay.store.base import IdempotencyKey, Rejected, Store, StoreClosed

log = logging.getLogger(__name__)

#: A member skipped for its consent (it refused the class, or had its day's
#: marketing): the reason its Rejected carries.
SKIPPED = "skipped: the device refused this class or reached its daily cap"


#: Done and expired broadcasts are kept this long by default (their records and counts).
KEEP_BROADCASTS_S = 90 * 86_400.0
#: Audit lines are kept this long by default.
KEEP_AUDIT_S = 400 * 86_400.0
#: Seconds between two prunes, and what one store call forgets at most.
PRUNE_EVERY_S = 3600
PRUNE_BATCH = 1000


class Broadcaster:
    def __init__(
        self,
        store: Store,
        ingest: Ingest,
        clock: Callable[[], float],
        node: str,
        *,
        marketing_cap: int,
        takeover_s: float = 30.0,
        page: int = FANOUT_PAGE,
        keep_s: float = KEEP_BROADCASTS_S,
        audit_keep_s: float = KEEP_AUDIT_S,
    ) -> None:
        """``keep_s``: how long a done and expired broadcast's record and counts are
        kept; ``audit_keep_s``: how long audit lines are (both pruned hourly)."""
        self.store = store
        self.ingest = ingest
        self.clock = clock
        self.node = node
        self.marketing_cap = marketing_cap
        self.takeover_s = takeover_s
        self.page = page
        self.keep_s = keep_s
        self.audit_keep_s = audit_keep_s
        self._running: dict[str, asyncio.Task[None]] = {}
        self._scanner: asyncio.Task[None] | None = None
        self._delivered: Counter[str] = Counter()
        self._acked: Counter[str] = Counter()
        #: A batch of counts whose write failed: (its name, the counts), sent again as
        #: it was before any other (its answer may have been lost after it was stored).
        self._unsent: tuple[str, dict[str, BroadcastCounts]] | None = None

    # --- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._scanner = asyncio.get_running_loop().create_task(self._scan_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._scanner, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()
        with contextlib.suppress(Exception):
            await self._flush_counts()

    def submit(self, broadcast: Broadcast) -> None:
        """Fan out a broadcast whose record is stored (in the background)."""
        if broadcast.id not in self._running:
            task = asyncio.get_running_loop().create_task(self._run(broadcast))
            self._running[broadcast.id] = task
            task.add_done_callback(lambda _t: self._running.pop(broadcast.id, None))

    async def _scan_forever(self) -> None:
        """Every second: write the counts; now and then, resume stalled fan-outs."""
        scans = 0
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._flush_counts()
                scans += 1
                if scans % 5 == 1:
                    await self._resume_stalled()
                if scans % PRUNE_EVERY_S == 30:
                    await self.prune()
            except Exception as exc:  # the store away: next time
                log.warning("broadcast upkeep failed: %r", exc)

    async def prune(self) -> tuple[int, int]:
        """Forget broadcasts and audit lines past their keeping (every relay does, the
        same ones: harmless); how many of each, a batch at a time."""
        now_ms = int(self.clock() * 1000)
        gone = [0, 0]
        for n, (keep_s, prune) in enumerate(
            (
                (self.keep_s, self.store.prune_broadcasts),
                (self.audit_keep_s, self.store.prune_audit),
            )
        ):
            while (got := await prune(now_ms - int(keep_s * 1000), PRUNE_BATCH)) > 0:
                gone[n] += got
                if got < PRUNE_BATCH:
                    break
        if any(gone):
            log.info("forgot %d broadcasts and %d audit lines past their keeping", *gone)
        return gone[0], gone[1]

    async def _resume_stalled(self) -> None:
        now_ms = int(self.clock() * 1000)
        for b in await self.store.unfinished_broadcasts():
            stalled = now_ms - max(b.updated_ms, b.created_ms) >= self.takeover_s * 1000
            if stalled and b.id not in self._running:
                log.warning("resuming broadcast %s after %s", b.id, b.after or "the start")
                self.submit(b)

    # --- fan-out ----------------------------------------------------------------
    async def _run(self, broadcast: Broadcast) -> None:
        b: Broadcast | None = broadcast
        try:
            while b is not None and b.done_ms is None:
                b = await self._step(b)
        except Exception:
            # The store away or failing: the record says how far it got; this relay
            # (or another) resumes it once it has stood still for takeover_s.
            log.exception("broadcast %s stopped at %s", broadcast.id, broadcast.after)

    async def _step(self, b: Broadcast) -> Broadcast | None:
        """One page of members; the record after it (None: another relay is ahead)."""
        # A make-good (core/makegood.py) goes to its tenant's devices, not a channel's.
        makegood = b.channel == MAKEGOOD_CHANNEL
        channel = None if makegood else await self.store.get_channel(b.channel)
        now_ms = int(self.clock() * 1000)
        gone = not makegood and (channel is None or not channel.live)
        if gone or b.expires_ms <= now_ms:
            return await self._save(msgspec.structs.replace(b, done_ms=now_ms, updated_ms=now_ms))
        if not b.pending:
            members = await self._members(b, b.after)
            if not members:
                done = msgspec.structs.replace(b, done_ms=now_ms, updated_ms=now_ms)
                return await self._save(done)
            # The page is fixed before it is written: whoever does it again after a
            # crash sends the same members the same append (an idempotent replay).
            fixed = await self._save(
                msgspec.structs.replace(b, pending=tuple(members), updated_ms=now_ms)
            )
            if fixed is None or fixed.pending != tuple(members):
                return fixed
            b = fixed
        results = await self._deliver(b, channel, list(b.pending), now_ms)
        stored = sum(isinstance(r, Accepted) for r in results)
        after = b.pending[-1]
        # The progress and the next page's members in one write (one record write a
        # page, not two); none left: done.
        following = tuple(await self._members(b, after))
        done = msgspec.structs.replace(
            b,
            after=after,
            members=b.members + len(results),
            stored=b.stored + stored,
            skipped=b.skipped + len(results) - stored,
            updated_ms=now_ms,
            pending=following,
            done_ms=None if following else now_ms,
        )
        return await self._save(done)

    async def _members(self, b: Broadcast, after: str) -> list[str]:
        """The next page of ``b``'s members after ``after``: its channel's, or for a
        make-good its tenant's devices."""
        if b.channel == MAKEGOOD_CHANNEL:
            return await self.store.tenant_devices(b.tenant, after, self.page)
        return await self.store.channel_members(b.channel, after, self.page)

    async def _deliver(
        self, b: Broadcast, channel: Channel | None, members: list[str], now_ms: int
    ) -> list[Accepted | Rejected]:
        # A make-good counts as marketing for the device's refusals, but not
        # against its daily cap (PROTOCOL "Making good").
        klass = "marketing" if channel is None else channel.klass
        cap = self.marketing_cap if channel is not None and klass == "marketing" else None
        admitted = set(await self.store.admit(members, klass, b.id, day_of(b.created_ms), cap))
        ttl = max(1, math.ceil((b.expires_ms - now_ms) / 1000))
        drafts: dict[str, Draft] = {}
        if channel is None:
            taking = [p for p in members if p in admitted]
            drafts = await makegood_drafts(self.store, b, taking, ttl, now_ms)
        else:
            for pin in admitted:
                drafts[pin] = Draft(
                    to=pin,
                    data=member_data(channel, pin, b.data),
                    ttl=ttl,
                    kind="broadcast",
                    topic=b.topic,
                    urgency=b.urgency,
                    sender=channel.id,
                    id=b.id,
                )
        items: list[Draft | Rejected] = [
            drafts[pin] if pin in drafts else Rejected(pin, SKIPPED, b.id) for pin in members
        ]
        # Named by where the page starts, fingerprinted by its members: the same
        # page done again (a crash before the progress was written) replays the
        # first append's results.
        page = hashlib.sha256(",".join(members).encode()).hexdigest()
        idem = IdempotencyKey(f"broadcast {b.id} {b.after}", page, b.created_ms)
        results, _ = await self.ingest.accept_once(items, idem, b.tenant)
        return results

    async def _save(self, b: Broadcast) -> Broadcast | None:
        if await self.store.put_broadcast(b):
            return b
        # Another relay got further (it resumed this one): go on from there.
        ahead = await self.store.get_broadcast(b.id)
        return ahead if ahead is not None and ahead.after > b.after else None

    # --- counts -----------------------------------------------------------------
    def sent(self, broadcast_id: str) -> None:
        self._delivered[broadcast_id] += 1

    def acked(self, broadcast_ids: list[str]) -> None:
        self._acked.update(broadcast_ids)

    async def _flush_counts(self) -> None:
        """Write the counts since the last flush as one named batch.  A batch that
        failed goes again first, under its name: the store adds a batch once, so an
        answer lost after the write does not count it twice (DECISIONS 62)."""
        if self._unsent is not None:
            await self._count(*self._unsent)
            self._unsent = None
        if not self._delivered and not self._acked:
            return
        delivered, acked = self._delivered, self._acked
        self._delivered, self._acked = Counter(), Counter()
        counts = {
            bid: BroadcastCounts(delivered[bid], acked[bid]) for bid in delivered.keys() | acked
        }
        self._unsent = (secrets.token_hex(8), counts)
        await self._count(*self._unsent)
        self._unsent = None

    async def _count(self, batch: str, counts: dict[str, BroadcastCounts]) -> None:
        await self.store.count_broadcasts(self.node, counts, batch)
        if faults.active("count-answer-lost"):
            raise StoreClosed("injected fault count-answer-lost: stored, but no answer came")
