"""The Web Push service (PROTOCOL "Web Push"): subscriptions, and pushes to them.

Every edge that speaks Web Push (``POST /push/{id}``; the subscription routes and
the link's ``subscribe`` frame) calls :class:`WebPush`, which checks the
subscription, the sender's VAPID token and the rate limits, then hands a ``webpush``
message to ingest: stored durably like any message, delivered in the device's
cursor order, acknowledged by the device.  The relay never decrypts a body.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from pinrelay.core import webpush as wire
from pinrelay.core.errors import ErrorCode, PinrelayError, RateLimited
from pinrelay.core.model import Accepted
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.core.timefmt import rfc3339
from pinrelay.ingest import Draft, Ingest
from pinrelay.store.base import UNKNOWN_DEVICE, Rejected, Subscription
from pinrelay.vapid import VapidVerifier, auth_secret, p256_point


@dataclass(frozen=True, slots=True)
class Pushed:
    """A push the relay took: where its message resource is, the TTL it kept."""

    location: str
    ttl: int


def _not_found(sub_id: str) -> PinrelayError:
    return PinrelayError(f"no push subscription {sub_id[:40]}", ErrorCode.NOT_FOUND)


_data_dec = msgspec.json.Decoder(wire.WebPushData)


def _subscription_of(data: bytes) -> str | None:
    try:
        return _data_dec.decode(data).subscription
    except msgspec.DecodeError:
        return None


def _same_key(a: str, b: str) -> bool:
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

    async def live(self, sub_id: str) -> Subscription:
        """The subscription pushes go to: 404 if none, 410 if deleted."""
        if not wire.SUBSCRIPTION_ID_RE.fullmatch(sub_id):
            raise _not_found(sub_id)
        sub = await self.store.get_subscription(sub_id)
        if sub is None:
            raise _not_found(sub_id)
        if sub.deleted_ms is not None:
            raise PinrelayError("this push subscription was deleted", ErrorCode.GONE)
        return sub

    # --- pushing ---------------------------------------------------------------
    async def push(
        self,
        sub_id: str,
        headers: wire.PushHeaders,
        vapid: wire.VapidToken | None,
        body: bytes,
        source: str,
    ) -> Pushed:
        """Store one encrypted message for the subscription's device (RFC 8030 §5).

        Checked in order of cost: the subscription, the rate limits (before any
        signature check, so a flood of bad tokens costs no ECDSA), then VAPID.
        """
        sub = await self.live(sub_id)
        now = self.clock()
        sender = f"k {vapid.key}" if vapid is not None else f"a {source}"
        for limiter, key in ((self._per_sub, sub.id), (self._per_sender, sender)):
            wait = limiter.retry_after(key, now)
            if wait > 0:
                raise RateLimited("too many pushes; slow down", wait)
        self._per_sub.failed(sub.id, now)
        self._per_sender.failed(sender, now)
        if vapid is not None:
            self.verifier.verify(vapid, self.origin, now)
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
            data=wire.webpush_data(body, sub.id, headers.topic),
            ttl=headers.ttl,
            kind="webpush",
            topic=None if headers.topic is None else wire.topic_key(sub.id, headers.topic),
            urgency=headers.urgency,
        )
        [result] = await self.ingest.accept([draft])
        if isinstance(result, Rejected):
            if result.reason == UNKNOWN_DEVICE:
                raise PinrelayError("this push subscription's device was deleted", ErrorCode.GONE)
            return Pushed(self._location(sub.id, result.id or "", 0), headers.ttl)
        assert isinstance(result, Accepted)
        return Pushed(self._location(sub.id, result.id, result.cursor), headers.ttl)

    async def delete_message(self, sub_id: str, resource: str) -> None:
        """Remove a message not delivered yet (RFC 8030 §6.4): 404 if it was
        delivered, expired, replaced, or is another subscription's."""
        sub = await self.live(sub_id)
        message_id, _, cursor_text = resource.partition(".")
        gone = PinrelayError("no such undelivered message", ErrorCode.NOT_FOUND)
        if not cursor_text.isdigit() or not 0 < int(cursor_text) < 2**53:
            raise gone
        cursor = int(cursor_text)
        now_ms = int(self.clock() * 1000)
        found = await self.store.read(sub.pin, cursor - 1, 1, now_ms)
        if not found or found[0].cursor != cursor or found[0].id != message_id:
            raise gone
        message = found[0]
        if message.kind != "webpush" or _subscription_of(message.data) != sub.id:
            raise gone
        await self.store.forget([(sub.pin, cursor)])

    def _location(self, sub_id: str, message_id: str, cursor: int) -> str:
        return f"{self.endpoint(sub_id)}/messages/{message_id}.{cursor}"
