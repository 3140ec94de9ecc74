"""The Matrix push gateway (PROTOCOL "Matrix push gateway"): a homeserver's
``notify`` becomes one ``matrix`` message per device whose pushkey is a live Web
Push subscription here.

It goes the Web Push way: the subscription is looked up and the rate limits counted
by :class:`pinrelay.webpush.WebPush` (a gateway push counts against the same
per-subscription limit as a Web Push one), and the messages are stored by ingest,
all of one request in one atomic write, so the 200 means every device's copy is
durable.
"""

from __future__ import annotations

from pinrelay.core import matrix as wire
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.ingest import Draft
from pinrelay.store.base import IdempotencyKey, Rejected, Subscription
from pinrelay.webpush import WebPush


class MatrixGateway:
    def __init__(self, webpush: WebPush) -> None:
        self.webpush = webpush

    async def _subscription(self, target: wire.Target, source: str) -> Subscription | None:
        """The live subscription a device's pushkey names, None if it names none
        (unknown, deleted), or one restricted to a VAPID key: the gateway carries
        no VAPID signature, so it must not open a door the device closed."""
        if target.subscription is None:
            return None
        try:
            # A miss counts against the address, as a Web Push to a wrong endpoint
            # does: the gateway is no cheaper way to guess ids.
            sub = await self.webpush.live(target.subscription, source)
        except PinrelayError as exc:
            if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.GONE):
                return None
            raise
        return None if sub.vapid_key is not None else sub

    async def notify(self, notify: wire.Notify, source: str) -> list[str]:
        """Store the notification for each device it can reach; the pushkeys it
        cannot (Matrix's ``rejected``: the homeserver removes those pushers)."""
        rejected: list[str] = []
        found: list[tuple[wire.Target, Subscription]] = []
        for target in notify.targets:
            sub = await self._subscription(target, source)
            if sub is None:
                rejected.append(target.pushkey)
            else:
                found.append((target, sub))
        if not found:
            return rejected
        now = self.webpush.clock()
        self.webpush.admit([s.id for _, s in found], f"a {source}", now)
        drafts = [
            Draft(
                to=sub.pin,
                data=wire.matrix_data(sub.id, notify, target),
                ttl=min(wire.TTL_S, self.webpush.ingest.limits.max_ttl_s),
                kind="matrix",
                urgency=notify.urgency,
            )
            for target, sub in found
        ]
        idem = None
        if notify.event_id is not None:
            key = wire.idempotency_key(notify.event_id, [s.id for _, s in found])
            # The key is the fingerprint too: a retry whose counts changed is still
            # the same notification, answered as the first was.
            idem = IdempotencyKey(key, key, int(now * 1000))
        results = await self.webpush.ingest.accept(drafts, idem)
        for (target, _), result in zip(found, results, strict=True):
            if isinstance(result, Rejected):  # its device was deleted (the TTL is not 0)
                rejected.append(target.pushkey)
        return rejected
