"""The webhook sender: every incident event, to every subscription that may see it,
durable until the receiver answers 2xx (PROTOCOL "Webhooks"; DECISIONS 56).

How it goes (core/webhooks.py's rules):

1. Every relay listens on its incident board (``on_event``) and enqueues one outbox
   entry per subscription that hears the incident, keyed by (subscription,
   incident, revision): all relays enqueue the same entries and the store keeps one
   of each, so the crash of the relay that wrote the incident loses nothing.
2. One worker task per subscription.  It takes the subscription's lease in the
   store (``lease_s``, renewed while it works); only the holder sends.  A relay
   that dies leaves its leases to expire, and another relay's worker takes over.
3. The holder sends the pending entries one at a time in key order; an entry is
   marked done on a 2xx, and the next is not sent before.  Anything else (an
   error status, a refused connection, a timeout) waits :func:`backoff` and sends
   the same entry again, with the same id.
4. When the store cannot be reached, what the board hears is kept in memory and
   sent from there by every relay that heard it (no lease: each may send it, with
   the same id); once the store answers again, it is written to the outbox
   (done if it was answered 2xx meanwhile) and the store's copy takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from pinrelay.api.incidents import status_view
from pinrelay.core.incidents import Incident
from pinrelay.core.webhooks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    Event,
    OutboxEntry,
    Webhook,
    backoff,
    entry_for,
    one_line,
    signature,
)
from pinrelay.store.base import Store

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("pinrelay.webhooks")

#: Seconds one delivery may take: connect, send, answer (at most half the lease,
#: so the holder renews it between two attempts).
TIMEOUT_S = 10.0
#: Most bytes of an answer read (for the log); the rest is dropped.
MAX_ANSWER = 4096
#: Entries one read of an outbox returns.
PAGE = 16
#: Done entries are kept this long (a relay that hears a revision late cannot
#: enqueue it again), then pruned.
KEEP_DONE_MS = 86_400_000
PRUNE_EVERY_S = 600.0
#: Most entries kept in memory while the store is away (the oldest are dropped).
MAX_MEMORY = 10_000

_enc = msgspec.json.Encoder()


def body_of(hook: Webhook, entry: OutboxEntry) -> bytes:
    """What is posted to ``hook`` for ``entry``, by the subscription's kind."""
    if hook.kind == "sms":
        return _enc.encode({"to": hook.to, "text": one_line(entry.incident, entry.event)})
    if hook.kind == "chat":
        return _enc.encode({"text": one_line(entry.incident, entry.event)})
    return _enc.encode(
        {"event": entry.event, "incident": status_view(entry.incident), "id": entry.id}
    )


#: How long a store call may take here before the store counts as away (rule 4): a
#: store without its quorum answers nothing for its whole request timeout.
STORE_WAIT_S = 2.0
#: Incidents whose deliveries a relay keeps for reports, and deliveries per incident.
REPORTED = 1000
REPORTED_PER_INCIDENT = 500


class WebhookSender:
    """Sends incident events to subscriptions (module doc)."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        owner: str,
        *,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 300.0,
        lease_s: float = 15.0,
        poll_s: float = 1.0,
        observe: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.lease_s = lease_s
        self.poll_s = min(poll_s, lease_s / 3)
        #: Told the result of each attempt (True: answered 2xx): the relay's metrics.
        self.observe = observe
        #: The subscriptions as last read (used while the store is away).
        self._hooks: dict[str, Webhook] = {}
        #: Entries heard while the store was away: (webhook, key) → entry.
        self._memory: dict[tuple[str, str], OutboxEntry] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._pruned_at = 0.0
        #: When this relay last took or renewed each subscription's lease (loop time).
        self._leased: dict[str, float] = {}
        #: Deliveries answered 2xx by this relay (for tests and metrics).
        self.sent = 0
        #: Per incident, what this relay delivered: (answered at ms, event, webhook
        #: id), for the incident's report; the newest REPORTED incidents only.
        self._delivered: dict[str, list[tuple[int, Event, str]]] = {}

    def delivered(self, incident_id: str) -> list[tuple[int, Event, str]]:
        """What this relay delivered about ``incident_id`` (answered 2xx), oldest first."""
        return list(self._delivered.get(incident_id, ()))

    def _record(self, entry: OutboxEntry, now_ms: int) -> None:
        done = self._delivered.setdefault(entry.incident.id, [])
        if len(done) < REPORTED_PER_INCIDENT:
            done.append((now_ms, entry.event, entry.webhook))
        while len(self._delivered) > REPORTED:
            del self._delivered[next(iter(self._delivered))]

    @property
    def working(self) -> list[str]:
        """The subscriptions this relay has a worker for."""
        return list(self._workers)

    @property
    def known(self) -> int:
        """The subscriptions as last read: those this relay can still deliver while
        the store is away (one made a moment before an outage may be missing)."""
        return len(self._hooks)

    @property
    def in_memory(self) -> int:
        """Deliveries heard while the store was away, not written to it yet (rule 4)."""
        return len(self._memory)

    # --- hearing events (rule 1) --------------------------------------------
    async def heard(self, event: Event, incident: Incident) -> None:
        """An ``on_event`` listener of the incident board."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._read_hooks(), STORE_WAIT_S)
        entries = [entry_for(h, event, incident) for h in self._hooks.values() if h.hears(incident)]
        if not entries:
            return
        try:
            await asyncio.wait_for(self.store.enqueue_webhooks(entries), STORE_WAIT_S)
        except Exception as exc:  # rule 4
            log.warning(
                "webhooks: store away (%r): %d deliveries kept in memory", exc, len(entries)
            )
            for e in entries:
                self._memory[(e.webhook, e.key)] = e
            while len(self._memory) > MAX_MEMORY:
                del self._memory[min(self._memory, key=lambda k: k[1])]
        for e in entries:
            if (wake := self._wake.get(e.webhook)) is not None:
                wake.set()

    async def _read_hooks(self) -> None:
        self._hooks = {h.id: h for h in await self.store.list_webhooks()}

    # --- the loop -----------------------------------------------------------
    def start(self) -> None:
        import httpx  # here: a relay imports no HTTP client until it runs (test_cli_imports)

        timeout = min(TIMEOUT_S, self.lease_s / 2)
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # logged already
                await task
        self._task, self._workers = None, {}
        await self._release()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _release(self) -> None:
        """Let the leases this relay holds expire now: another relay takes over at
        once rather than after ``lease_s`` (a relay that dies cannot, and need not)."""
        held, self._leased = list(self._leased), {}
        now_ms = int(self.clock() * 1000)
        for wid in held:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.lease_webhook(wid, self.owner, now_ms, 0), 1.0)

    async def _forever(self) -> None:
        while True:
            try:  # bounded: the workers are kept going while the store is away
                await asyncio.wait_for(self._read_hooks(), STORE_WAIT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store away: keep the workers we have
                log.debug("webhooks: store unreadable: %r", exc)
            self._keep_workers()
            try:
                await self._flush_memory()
                await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store away: written on a later turn
                log.debug("webhooks: store unwritable: %r", exc)
            await asyncio.sleep(self.poll_s)

    def _keep_workers(self) -> None:
        """One worker per known subscription (rule 2), none for a deleted one."""
        for wid in list(self._workers):
            if wid not in self._hooks:
                self._workers.pop(wid).cancel()
                self._wake.pop(wid, None)
        for wid, task in list(self._workers.items()):
            if task.done():  # a bug; say so and start it again
                del self._workers[wid]
                if not task.cancelled() and (failure := task.exception()) is not None:
                    log.error("webhook %s: worker failed", wid, exc_info=failure)
        for wid in self._hooks:
            if wid not in self._workers:
                self._wake[wid] = asyncio.Event()
                self._workers[wid] = asyncio.get_running_loop().create_task(self._work(wid))

    async def _flush_memory(self) -> None:
        """Rule 4: the store is back; write what was heard meanwhile."""
        if not self._memory:
            return
        kept = list(self._memory.values())
        # Done ones are added done: the holder of the lease never sends them again.
        await self.store.enqueue_webhooks([e for e in kept if e.webhook in self._hooks])
        for e in kept:  # one another relay had enqueued, pending: done now
            if e.done_ms is not None:
                await self.store.webhook_done(e.webhook, e.key, e.done_ms)
            self._memory.pop((e.webhook, e.key), None)

    async def _prune(self) -> None:
        now = self.clock()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            await self.store.prune_webhooks(int(now * 1000) - KEEP_DONE_MS)

    # --- one subscription (rules 2 and 3) -------------------------------------
    async def _work(self, wid: str) -> None:
        attempts = 0
        while True:
            hook = self._hooks.get(wid)
            if hook is None:
                return
            try:
                held = await self._lease(wid)
                pending = (
                    await asyncio.wait_for(self.store.pending_webhooks(wid, PAGE), STORE_WAIT_S)
                    if held
                    else []
                )
                from_memory = False
            except asyncio.CancelledError:
                raise
            except Exception:  # rule 4
                held, from_memory = True, True
                pending = sorted(
                    (e for e in self._memory.values() if e.webhook == wid and e.done_ms is None),
                    key=lambda e: e.key,
                )
            if not held or not pending:
                await self._idle(wid)
                continue
            for entry in pending:
                if not from_memory and not await self._still_held(wid):
                    break
                ok = await self._post(hook, entry)
                if self.observe is not None:
                    self.observe(ok)
                if ok:
                    attempts = 0
                    self.sent += 1
                    now_ms = int(self.clock() * 1000)
                    self._record(entry, now_ms)
                    if from_memory:
                        self._memory[(wid, entry.key)] = _done(entry, now_ms)
                    else:
                        with contextlib.suppress(Exception):  # not marked: sent again, same id
                            done = self.store.webhook_done(wid, entry.key, now_ms)
                            await asyncio.wait_for(done, STORE_WAIT_S)
                    continue
                attempts += 1
                delay = backoff(
                    attempts, random.random(), base_s=self.retry_base_s, cap_s=self.retry_cap_s
                )
                await self._wait_holding(wid, delay, from_memory)
                break

    async def _lease(self, wid: str) -> bool:
        """Take or renew the lease; a lease renewed less than a third of its life ago
        is still held (no store write: an idle subscription costs one write per
        ``lease_s / 3``)."""
        loop = asyncio.get_running_loop()
        renewed = self._leased.get(wid)
        if renewed is not None and loop.time() - renewed < self.lease_s / 3:
            return True
        now_ms = int(self.clock() * 1000)
        self._leased.pop(wid, None)
        lease = self.store.lease_webhook(wid, self.owner, now_ms, int(self.lease_s * 1000))
        if await asyncio.wait_for(lease, STORE_WAIT_S):
            self._leased[wid] = loop.time()
            return True
        return False

    async def _still_held(self, wid: str) -> bool:
        try:
            return await self._lease(wid)
        except Exception:
            return False

    async def _idle(self, wid: str) -> None:
        wake = self._wake.get(wid)
        if wake is None:
            await asyncio.sleep(self.poll_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), self.poll_s)
        wake.clear()

    async def _wait_holding(self, wid: str, delay: float, from_memory: bool) -> None:
        """Sleep ``delay`` seconds, renewing the lease meanwhile (rule 2)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while (left := until - loop.time()) > 0:
            await asyncio.sleep(min(left, self.lease_s / 3))
            if not from_memory and loop.time() < until:
                with contextlib.suppress(Exception):
                    if not await self._lease(wid):
                        return

    async def _post(self, hook: Webhook, entry: OutboxEntry) -> bool:
        """One attempt: True on a 2xx answer."""
        import httpx

        assert self._client is not None
        body = body_of(hook, entry)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(hook.secret, int(self.clock()), body),
            IDEMPOTENCY_HEADER: entry.id,
            "User-Agent": "pinrelay-webhooks",
        }
        try:
            async with self._client.stream("POST", hook.url, content=body, headers=headers) as r:
                answer = await _bounded(r)
                if 200 <= r.status_code < 300:
                    return True
                log.info(
                    "webhook %s: %s answered %d %r", hook.id, entry.id, r.status_code, answer[:200]
                )
                return False
        except (httpx.HTTPError, OSError, ValueError) as exc:
            log.info("webhook %s: %s failed: %r", hook.id, entry.id, exc)
            return False


async def _bounded(response: httpx.Response) -> bytes:
    got = b""
    async for chunk in response.aiter_raw():
        got += chunk[: MAX_ANSWER - len(got)]
        if len(got) >= MAX_ANSWER:
            break
    return got


def _done(entry: OutboxEntry, now_ms: int) -> OutboxEntry:
    return msgspec.structs.replace(entry, done_ms=now_ms)
