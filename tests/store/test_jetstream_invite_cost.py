"""An invitation costs the same NATS traffic whether the other PIN is a device or not
(issue 13: no PIN enumeration, by the answer's timing either; store/jetstream/contacts.py,
"Same cost").  Counted, not timed: what a store's NATS connection sends for one action
(requests, messages) and how many of its requests are in series (a request that starts
after another one's reply came is one round trip later), on the 3-node cluster.

Before the change, an invitation to a device cost 2 round trips of writes in series
(the records' batch, then the notice), one to a PIN with no device 1: this test failed.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

from pinrelay.core.social import Action
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.wait import wait_until_async

from .test_contract import NOW, A, B, C, add_devices, msg, read_all
from .test_jetstream import OpenStore, open_store, subject_counts

__all__ = ["OpenStore", "open_store"]  # test_jetstream's fixture, shared on

#: PINs that are no device.
NOBODY, NOBODY2 = "0E0E0E0E", "0F0F0F0F"
ATOMIC = pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "one-by-one"])


class Rounds:
    """What a store's NATS connection sends: requests, messages (requests included,
    and an atomic batch's messages before its commit), and round trips in series.

    A request's depth is one more than the deepest request whose reply had come when
    it started; the deepest is the number of round trips in series.  Requests sent at
    once (asyncio.gather) all start before any reply is read, so they share a depth.
    """

    def __init__(self, store: JetStreamStore, monkeypatch: pytest.MonkeyPatch) -> None:
        nc, _ = store.connection
        self.requests = self.messages = self.deepest = self.done = 0
        request, publish = nc.request, nc.publish

        async def counted_request(*args: Any, **kwargs: Any) -> Any:
            self.requests += 1
            depth = self.done + 1
            self.deepest = max(self.deepest, depth)
            try:
                return await request(*args, **kwargs)
            finally:
                self.done = max(self.done, depth)

        async def counted_publish(*args: Any, **kwargs: Any) -> Any:
            self.messages += 1  # nats-py's request publishes too
            return await publish(*args, **kwargs)

        monkeypatch.setattr(nc, "request", counted_request)
        monkeypatch.setattr(nc, "publish", counted_publish)

    async def cost(self, action: Awaitable[object]) -> dict[str, int]:
        """What ``action`` sends, counted from nothing."""
        self.requests = self.messages = self.deepest = self.done = 0
        await action
        return {"requests": self.requests, "messages": self.messages, "series": self.deepest}


async def invite(store: JetStreamStore, actor: str, other: str, action: Action) -> None:
    notice = msg(other, 0, kind="contact", sender=actor, sent_ms=NOW)
    await store.contact_action(actor, other, action, NOW, notice)


@ATOMIC
async def test_an_invitation_costs_the_same_whether_the_pin_is_a_device_or_not(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch, atomic: bool
) -> None:
    store = await open_store(atomic=atomic)
    other_relay = await open_store(atomic=atomic)
    await add_devices(store, A, B)
    await add_devices(other_relay, C)  # a device this relay has not read yet
    await store.get_device(B)  # ... and one it has cached
    rounds = Rounds(store, monkeypatch)
    costs = {
        "first, to a device (cached)": await rounds.cost(invite(store, A, B, Action.INVITE)),
        "first, to a device (not cached)": await rounds.cost(invite(store, A, C, Action.INVITE)),
        "first, to no device": await rounds.cost(invite(store, A, NOBODY, Action.INVITE)),
    }
    again = {
        "again, to a device": await rounds.cost(invite(store, A, B, Action.INVITE)),
        "again, to no device": await rounds.cost(invite(store, A, NOBODY, Action.INVITE)),
    }
    # Blocked by the invitee: told nothing, as no device tells nothing.
    await invite(other_relay, C, A, Action.BLOCK)
    blocked = {
        "to a device that blocked me": await rounds.cost(invite(store, A, C, Action.INVITE)),
        "to no device": await rounds.cost(invite(store, A, NOBODY2, Action.INVITE)),
    }
    blocks = {
        "block a device": await rounds.cost(invite(store, A, B, Action.BLOCK)),
        "block no device": await rounds.cost(invite(store, A, NOBODY, Action.BLOCK)),
    }
    for group in (costs, again, blocked, blocks):
        for what, cost in group.items():
            print(f"{what}: {cost}")
        assert len({tuple(c.items()) for c in group.values()}) == 1, group
    # Reads at once (both contacts records, the other's device record); then the
    # records (a batch of two, or two puts in a row) at the same time as the notice.
    writes = (
        {"requests": 1, "messages": 2, "series": 1}
        if atomic
        else {"requests": 2, "messages": 2, "series": 2}
    )
    first = next(iter(costs.values()))
    assert first == {
        "requests": 3 + writes["requests"] + 1,
        "messages": 3 + writes["messages"] + 1,
        "series": 1 + writes["series"],
    }
    assert next(iter(again.values())) == {"requests": 4, "messages": 4, "series": 2}

    # What was stored: B was told (twice: an invitation repeated tells again), C
    # once (before it blocked A), the PINs with no device nothing; the decoys expire.
    assert [m.kind for m in await read_all(store, B)] == ["contact"] * 2
    assert [m.kind for m in await read_all(store, C)] == ["contact"]
    decoys = store.layout.decoy_subject(NOBODY)

    async def decoys_gone() -> bool:
        counts = await subject_counts(store.servers, store.layout.stream_of(NOBODY), decoys)
        return not counts

    await wait_until_async(decoys_gone, 10, 0.2, "the decoys to expire (1 s TTL)")
    await add_devices(store, NOBODY)  # a device made later finds nothing for it
    assert await read_all(store, NOBODY) == []
