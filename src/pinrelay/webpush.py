"""The Web Push service (PROTOCOL "Web Push"): subscriptions, and pushes to them.

Every edge that speaks Web Push (``POST /push/{id}``; the subscription routes and
the link's ``subscribe`` frame) calls :class:`WebPush`, which checks the
subscription, the sender's VAPID token and the rate limits, then hands a ``webpush``
message to ingest: stored durably like any message, delivered in the device's
cursor order, acknowledged by the device.  The relay never decrypts a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pinrelay.core import webpush as wire
from pinrelay.core.chat import Delivered
from pinrelay.core.errors import ErrorCode, PinrelayError, RateLimited
from pinrelay.core.model import Accepted
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.core.timefmt import rfc3339
from pinrelay.ingest import Draft, Ingest
from pinrelay.store.base import (
    PUSH_RECEIPT_KEEP_MS,
    UNKNOWN_DEVICE,
    PushReceipt,
    Rejected,
    Subscription,
)
from pinrelay.vapid import VapidVerifier, auth_secret, p256_point


@dataclass(frozen=True, slots=True)
class Pushed:
    """A push the relay took: where its message resource is, the TTL it kept, and
    its receipt subscription (RFC 8030 §6.2: the message's delivery, long-polled)."""

    location: str
    ttl: int
    receipt: str
    #: TTL 0 and the device offline: nothing stored, no receipt will ever come.
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class ReceiptAnswer:
    """What a receipt subscription says: delivered (with when), or still pending."""

    delivered_ms: int | None


def _not_found(sub_id: str) -> PinrelayError:
    return PinrelayError(f"no push subscription {sub_id[:40]}", ErrorCode.NOT_FOUND)


#: How often a receipt long-poll looks at the store (a delivery on another relay of
#: a cluster wakes no waiter here).
RECEIPT_POLL_S = 1.0


@dataclass(slots=True)
class _Waiter:
    """The receipt long-polls of one message on this relay (removed with the last)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


def _resource(resource: str) -> tuple[str, int]:
    """``{message id}.{cursor}`` of a message resource; cursor 0 if malformed."""
    message_id, _, cursor_text = resource.partition(".")
    if not cursor_text.isdigit() or not 0 < int(cursor_text) < 2**53:
        return message_id, 0
    return message_id, int(cursor_text)


def _no_receipt() -> PinrelayError:
    return PinrelayError(
        "no such message, or it will never be delivered (deleted, replaced or expired)",
        ErrorCode.NOT_FOUND,
    )


def _same_key(a: str, b: str) -> bool:
    if a == b:  # as nearly every sender writes it: no decoding on every push
        return True
    try:
        return wire.b64url_decode(a) == wire.b64url_decode(b)
    except ValueError:
        return False


class WebPush:
    def __init__(
        self,
        ingest: Ingest,
        clock: Callable[[], float],
        origin: str,
        limits: wire.WebPushLimits | None = None,
    ) -> None:
        self.ingest = ingest
        self.store = ingest.store
        self.clock = clock
        #: The endpoints' origin (``scheme://host[:port]``): VAPID's audience.
        self.origin = origin.rstrip("/")
        self.limits = limits or wire.WebPushLimits()
        self.verifier = VapidVerifier()
        self._per_sub = FailureLimiter(limit=self.limits.per_subscription, period=60.0)
        self._per_sender = FailureLimiter(limit=self.limits.per_sender, period=60.0)
        #: Tokens that failed to verify, by source address (VAPID keys are claims
        #: until verified: their budgets count only good tokens).
        self._bad_tokens = FailureLimiter(limit=self.limits.per_sender, period=60.0)
        self._misses = FailureLimiter(limit=self.limits.unknown_per_minute, period=60.0)
        #: Receipt long-polls waiting on this relay, by receipt key.
        self._waiters: dict[str, _Waiter] = {}

    # --- subscriptions ---------------------------------------------------------
    def endpoint(self, sub_id: str) -> str:
        return f"{self.origin}/push/{sub_id}"

    def view(self, sub: Subscription) -> wire.SubscriptionView:
        return wire.SubscriptionView(
            id=sub.id,
            endpoint=self.endpoint(sub.id),
            keys=wire.SubscriptionKeys(p256dh=sub.p256dh, auth=sub.auth),
            applicationServerKey=sub.vapid_key,
            created_at=rfc3339(sub.created_ms),
        )

    async def subscribe(self, pin: str, fields: wire.SubscribeFields) -> Subscription:
        """A new subscription for ``pin``'s device; 422 for a bad key, 409 past 100."""
        keys = fields.keys or wire.SubscriptionKeys()
        if (keys.p256dh is None) != (keys.auth is None):
            raise PinrelayError("give keys.p256dh and keys.auth together", ErrorCode.INVALID)
        if keys.p256dh is not None and keys.auth is not None:
            p256_point(keys.p256dh, "keys.p256dh")
            auth_secret(keys.auth)
        if fields.applicationServerKey is not None:
            p256_point(fields.applicationServerKey, "applicationServerKey")
        sub = Subscription(
            id=wire.new_subscription_id(os.urandom),
            pin=pin,
            created_ms=int(self.clock() * 1000),
            p256dh=keys.p256dh,
            auth=keys.auth,
            vapid_key=fields.applicationServerKey,
        )
        await self.store.create_subscription(sub)
        return sub

    async def unsubscribe(self, pin: str, sub_id: str) -> None:
        if not await self.store.delete_subscription(pin, sub_id, int(self.clock() * 1000)):
            raise _not_found(sub_id)

    async def live(self, sub_id: str, source: str = "") -> Subscription:
        """The subscription pushes go to: 404 if none, 410 if deleted.

        Misses count against ``source`` (an address): past ``unknown_per_minute`` of
        them it gets 429 before any lookup, so guessing ids costs the store nothing
        and cannot flush the cluster's subscription cache."""
        now = self.clock()
        wait = self._misses.retry_after(source, now)
        if wait > 0:
            raise RateLimited("too many pushes to unknown endpoints; slow down", wait)
        try:
            if not wire.SUBSCRIPTION_ID_RE.fullmatch(sub_id):
                raise _not_found(sub_id)
            sub = await self.store.get_subscription(sub_id)
            if sub is None:
                raise _not_found(sub_id)
            if sub.deleted_ms is not None:
                raise PinrelayError("this push subscription was deleted", ErrorCode.GONE)
        except PinrelayError:
            self._misses.failed(source, now)
            raise
        return sub

    # --- pushing ---------------------------------------------------------------
    async def push(
        self,
        sub_id: str,
        headers: wire.PushHeaders,
        vapid: wire.VapidToken | None,
        body: bytes,
        source: str,
        receipt: bool = False,
    ) -> Pushed:
        """Store one encrypted message for the subscription's device (RFC 8030 §5).

        Checked in order of cost: the subscription, the rate limits (before any
        signature check), then VAPID.  A VAPID key's budget is spent only by tokens
        that verify: anyone may name a key, and pushes naming it must not use up its
        holder's budget.  Tokens that fail spend a budget of their address's, checked
        before the signature, so a flood of bad tokens costs little ECDSA.
        """
        sub = await self.live(sub_id, source)
        now = self.clock()
        sender = f"k {vapid.key}" if vapid is not None else f"a {source}"
        checks = [(self._per_sub, sub.id), (self._per_sender, sender)]
        if vapid is not None:
            checks.append((self._bad_tokens, source))
        for limiter, key in checks:
            wait = limiter.retry_after(key, now)
            if wait > 0:
                raise RateLimited("too many pushes; slow down", wait)
        self._per_sub.failed(sub.id, now)
        if vapid is not None:
            try:
                self.verifier.verify(vapid, self.origin, now)
            except PinrelayError:
                self._bad_tokens.failed(source, now)
                raise
        self._per_sender.failed(sender, now)
        if sub.vapid_key is not None:
            if vapid is None:
                raise PinrelayError(
                    "this subscription takes only VAPID-signed pushes (RFC 8292): "
                    "Authorization: vapid t=<JWT>, k=<key>",
                    ErrorCode.UNAUTHORIZED,
                )
            if not _same_key(vapid.key, sub.vapid_key):
                raise PinrelayError(
                    "the VAPID key is not the one this subscription was made for",
                    ErrorCode.FORBIDDEN,
                )
        draft = Draft(
            to=sub.pin,
            data=wire.webpush_data(body, sub.id, headers.topic, receipt),
            ttl=headers.ttl,
            kind="webpush",
            topic=None if headers.topic is None else wire.topic_key(sub.id, headers.topic),
            urgency=headers.urgency,
        )
        [result] = await self.ingest.accept([draft])
        if isinstance(result, Rejected):
            if result.reason == UNKNOWN_DEVICE:
                raise PinrelayError("this push subscription's device was deleted", ErrorCode.GONE)
            dropped = self._pushed(sub.id, result.id or "", 0, headers.ttl)
            return dataclasses.replace(dropped, dropped=True)
        assert isinstance(result, Accepted)
        return self._pushed(sub.id, result.id, result.cursor, headers.ttl)

    def admit(self, sub_ids: Sequence[str], sender: str, now: float) -> None:
        """Count one push to each subscription and one from ``sender`` (an address:
        the Matrix gateway's pushes carry no VAPID token); 429 if any is over its
        limit, and then nothing is counted."""
        keys = [(self._per_sub, s) for s in sub_ids] + [(self._per_sender, sender)]
        for limiter, key in keys:
            wait = limiter.retry_after(key, now)
            if wait > 0:
                raise RateLimited("too many pushes; slow down", wait)
        for limiter, key in keys:
            limiter.failed(key, now)

    def _pushed(self, sub_id: str, message_id: str, cursor: int, ttl: int) -> Pushed:
        resource = f"{message_id}.{cursor}"
        base = self.endpoint(sub_id)
        return Pushed(f"{base}/messages/{resource}", ttl, f"{base}/receipts/{resource}")

    async def delete_message(self, sub_id: str, resource: str, source: str = "") -> None:
        """Remove a message not delivered yet (RFC 8030 §6.4): 404 if it was
        delivered, expired, replaced, or is another subscription's."""
        sub = await self.live(sub_id, source)
        message_id, cursor = _resource(resource)
        if cursor == 0 or not await self._pending(
            sub, message_id, cursor, int(self.clock() * 1000)
        ):
            raise PinrelayError("no such undelivered message", ErrorCode.NOT_FOUND)
        # The read above may come from a follower that has not seen an earlier
        # delete yet (cluster): the delete's own answer decides.
        if not await self.store.forget([(sub.pin, cursor)]):
            raise PinrelayError("no such undelivered message", ErrorCode.NOT_FOUND)

    # --- receipts (RFC 8030 §6) ---------------------------------------------------
    async def delivered(self, items: Sequence[Delivered]) -> None:
        """A device acknowledged Web Push messages whose senders asked for receipts:
        keep the receipts (before the ack is stored), and wake who waits for them."""
        now_ms = int(self.clock() * 1000)
        keys = [wire.receipt_key(i.subscription or "", i.id) for i in items]
        await self.store.put_push_receipts(
            [PushReceipt(k, "delivered", now_ms, now_ms + PUSH_RECEIPT_KEEP_MS) for k in keys]
        )
        for key in keys:
            waiter = self._waiters.get(key)
            if waiter is not None:
                waiter.event.set()

    async def receipt(self, sub_id: str, resource: str, wait: float) -> ReceiptAnswer:
        """The delivery of a message (``{message id}.{cursor}``), waiting up to
        ``wait`` seconds for it; 404 if the message will never be delivered (deleted,
        replaced, expired) or is not this subscription's."""
        if not wire.SUBSCRIPTION_ID_RE.fullmatch(sub_id):
            raise _no_receipt()
        sub = await self.store.get_subscription(sub_id)
        message_id, cursor = _resource(resource)
        if sub is None or cursor == 0:
            raise _no_receipt()
        key = wire.receipt_key(sub.id, message_id)
        deadline = self.clock() + wait
        waiter = self._waiters.setdefault(key, _Waiter())
        waiter.count += 1
        try:
            while True:
                now = self.clock()
                got = await self.store.get_push_receipt(key, int(now * 1000))
                if got is not None:
                    return ReceiptAnswer(got.at_ms)
                if not await self._pending(sub, message_id, cursor, int(now * 1000)):
                    # The ack may have been stored just after the receipt was looked up.
                    got = await self.store.get_push_receipt(key, int(now * 1000))
                    if got is not None:
                        return ReceiptAnswer(got.at_ms)
                    raise _no_receipt()
                if now >= deadline:
                    return ReceiptAnswer(None)
                # Woken by this relay's delivery; another relay's is seen by polling.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), min(RECEIPT_POLL_S, deadline - now))
        finally:
            waiter.count -= 1
            if waiter.count == 0 and self._waiters.get(key) is waiter:
                del self._waiters[key]

    async def _pending(self, sub: Subscription, message_id: str, cursor: int, now_ms: int) -> bool:
        """Whether the message is stored and not acknowledged yet."""
        found = await self.store.read(sub.pin, cursor - 1, 1, now_ms)
        if not found or found[0].cursor != cursor or found[0].id != message_id:
            return False
        return found[0].kind == "webpush" and wire.subscription_of(found[0].data) == sub.id
