"""One way in: every edge hands the messages it accepts here (DESIGN, "ingest").

An edge (an HTTP push, a batch, later a link ``send``, Web Push, broadcasts,
incident notices, mail) parses its own format into :class:`Draft` values and calls
:meth:`Ingest.accept`.  Ingest builds ids and expiry, applies the ttl=0 rule, appends
to the store (the only caller of ``Store.append``: a test checks it), wakes the
router and counts.  It depends on the store, the router, the clock, the limits and
the metrics, never on the whole relay, so every edge gets the same guarantees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import msgspec
from msgspec import Struct

from pinrelay.core.chat import contact_data
from pinrelay.core.ids import RandomPool, new_message_id
from pinrelay.core.model import Accepted, Kind, Limits, NewMessage, StoredMessage
from pinrelay.core.social import Action, Transition
from pinrelay.metrics import Metrics
from pinrelay.router.base import Router
from pinrelay.store.base import (
    DROPPED_OFFLINE,
    UNKNOWN_DEVICE,
    IdempotencyKey,
    Rejected,
    Store,
    Unread,
)

#: Message ids need uniqueness, not secrecy, but come from the OS's CSPRNG anyway.
_ids_random = RandomPool(os.urandom)


class Draft(Struct, frozen=True, kw_only=True):
    """A message an edge accepted, before it has an id, an expiry or a cursor.

    ``data`` is the message's JSON, already checked to be valid UTF-8 (PROTOCOL,
    "data").  ``ttl`` is in seconds: 0 means "only if the device is online now";
    a fraction is rounded up to a whole second, the stores' resolution (PROTOCOL,
    "ttl"), so a tiny ttl is never stored already expired.
    """

    to: str
    data: bytes
    ttl: float
    kind: Kind = "push"
    topic: str | None = None
    urgency: str = "normal"
    sender: str | None = None
    #: The message id, when the edge gives one (a group message: the same for every
    #: member's copy, so each member's receipts name what the sender was told).
    id: str | None = None
    #: The message's name for de-duplication (``Message.dedup``: receipts).
    dedup: str | None = None


def expiry_ms(now_ms: int, ttl: float, ttl0_grace_s: float) -> int:
    """When a message sent at ``now_ms`` with ``ttl`` expires."""
    if ttl == 0:
        return now_ms + int(ttl0_grace_s * 1000)
    return now_ms + math.ceil(ttl) * 1000


class Ingest:
    def __init__(
        self,
        store: Store,
        router: Router,
        clock: Callable[[], float],
        limits: Limits,
        metrics: Metrics,
        on_stored: Callable[[str, Sequence[NewMessage]], None] | None = None,
    ) -> None:
        #: Told of what a tenant's keys stored (its stored_bytes quota's ledger).
        self.on_stored = on_stored
        self.store = store
        self.router = router
        self.clock = clock
        self.limits = limits
        self.metrics = metrics

    def _message(self, draft: Draft, now: float) -> NewMessage:
        now_ms = int(now * 1000)
        return NewMessage(
            pin=draft.to,
            id=draft.id or new_message_id(now, _ids_random),
            data=draft.data,
            topic=draft.topic,
            urgency=draft.urgency,
            sent_at_ms=now_ms,
            expires_at_ms=expiry_ms(now_ms, draft.ttl, self.limits.ttl0_grace_s),
            kind=draft.kind,
            sender=draft.sender,
            dedup=draft.dedup,
        )

    async def accept(
        self,
        drafts: Sequence[Draft],
        idem: IdempotencyKey | None = None,
        tenant: str | None = None,
        unread: Sequence[Unread] = (),
        read: Sequence[Unread] = (),
    ) -> list[Accepted | Rejected]:
        """Store the drafts atomically; one result per draft, in order.

        A ttl=0 message for an offline device is dropped, not stored (PROTOCOL,
        "ttl"); the drop goes to the store as a Rejected so an idempotent replay
        repeats it.  ``tenant``: the sender's (an API key's); a device it may not
        reach is an unknown device (Store.append).  ``unread``, ``read``: stored
        with them (Store.append: receipts).  Raises what the store raises
        (StoreClosed: nothing stored).
        """
        results, _ = await self.accept_once(drafts, idem, tenant, unread, read)
        return results

    async def _reachable(self, pin: str, tenant: str | None) -> bool:
        """Whether ``pin`` is a device ``tenant`` may push to (None: any device).
        Another tenant's device and a PIN with no device cost the same two reads, so
        the answer's timing does not tell them apart either (PROTOCOL "Tenants")."""
        device = await self.store.get_device(pin)
        if tenant is None or (device is not None and device.tenant == tenant):
            return device is not None
        grants = await self.store.grants_of(pin)  # [] for no device, read all the same
        return device is not None and tenant in grants

    async def accept_once(
        self,
        drafts: Sequence[Draft | Rejected],
        idem: IdempotencyKey | None = None,
        tenant: str | None = None,
        unread: Sequence[Unread] = (),
        read: Sequence[Unread] = (),
    ) -> tuple[list[Accepted | Rejected], bool]:
        """:meth:`accept`, and whether ``idem`` named an earlier call (a replay:
        nothing was stored, the first call's results came back).  A Rejected the
        edge made (a broadcast's member that refused it) goes along as it is, so a
        replay repeats it."""
        now = self.clock()
        batch: list[NewMessage | Rejected] = []
        built: dict[tuple[str, str], NewMessage] = {}
        for draft in drafts:
            if isinstance(draft, Rejected):
                batch.append(draft)
                continue
            message = self._message(draft, now)
            if draft.ttl == 0 and not self.router.is_online(draft.to):
                # "Dropped" would tell another tenant the device exists.
                known = await self._reachable(draft.to, tenant)
                reason = DROPPED_OFFLINE if known else UNKNOWN_DEVICE
                batch.append(Rejected(draft.to, reason, message.id))
            else:
                batch.append(message)
                built[message.pin, message.id] = message
        results, replay = await self.store.append(batch, idem, tenant, unread, read)
        if not replay:
            self._wake(results, built)
            if tenant is not None and self.on_stored is not None:
                stored = [
                    m
                    for r in results
                    if isinstance(r, Accepted) and (m := built.get((r.pin, r.id))) is not None
                ]
                self.on_stored(tenant, stored)
        return results, replay

    async def contact(
        self, actor: str, other: str, action: Action, notice_ttl_s: float
    ) -> Transition:
        """A contact action, with the ``contact`` notice it implies for ``other``
        stored in the same write (Store.contact_action)."""
        now = self.clock()
        template = self._message(
            Draft(to=other, data=b"", ttl=notice_ttl_s, kind="contact", sender=actor), now
        )
        step, accepted = await self.store.contact_action(
            actor, other, action, int(now * 1000), template
        )
        if accepted is not None and step.notify is not None:
            notice = msgspec.structs.replace(template, data=contact_data(step.notify))
            self._wake([accepted], {(other, notice.id): notice})
        return step

    def _wake(
        self, results: list[Accepted | Rejected], built: dict[tuple[str, str], NewMessage]
    ) -> None:
        """Wake each device once, with what it got, in cursor order (DESIGN "router").

        None: the store answered with a message this call did not build (an
        idempotent takeover): no hand-off, the link reads the store.
        """
        fresh: dict[str, list[StoredMessage] | None] = {}
        accepted = 0
        for result in results:
            if isinstance(result, Accepted):
                accepted += 1
                message = built.get((result.pin, result.id))
                got = fresh.setdefault(result.pin, [])
                if message is None:
                    fresh[result.pin] = None
                elif got is not None:
                    got.append(message.with_cursor(result.cursor))
            elif result.reason == DROPPED_OFFLINE:
                self.metrics.dropped.inc()
        for pin, messages in fresh.items():
            self.router.wake(pin, messages)
        self.metrics.accepted_push.inc(accepted)
