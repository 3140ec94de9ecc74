"""The feed's lag and restart (store/jetstream/feed.py; DECISIONS 63), on real
nats-server processes: a feed whose consumers stopped delivering while appends are
stored is seen behind, for longer and longer; restarted, it resumes after the last
message it saw, every message once, in order."""

from __future__ import annotations

import time
from pathlib import Path

from pinrelay.core.model import StoredMessage
from pinrelay.testing.wait import wait_until_async
from tests.natsproc import NatsCluster

from .test_contract import HOUR, A, B, add_devices, append_ok, msg
from .test_jetstream import OpenStore, open_store  # noqa: F401  (a fixture)

PARTITIONS = 3


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_stopped_feed_is_seen_behind_and_resumes_where_it_stopped_once_restarted(
    open_store: OpenStore,  # noqa: F811
    nats_cluster: NatsCluster,
    tmp_path: Path,
) -> None:
    store = await open_store(partitions=PARTITIONS)
    await add_devices(store, A, B)
    feed = store.feed
    handed: dict[str, list[StoredMessage | None]] = {A: [], B: []}

    def deliver(pin: str, messages: list[StoredMessage] | None) -> None:
        handed[pin].extend(messages if messages is not None else [None])

    feed.deliver = deliver
    feed.follow(A)
    feed.follow(B)
    sent = now_ms()

    async def append(pin: str, n: int) -> int:
        [accepted] = await append_ok(store, msg(pin, n, sent_ms=sent, ttl_ms=HOUR))
        return accepted.cursor

    first = [await append(A, 0), await append(B, 0)]
    await wait_until_async(lambda: [feed.known(A), feed.known(B)] == first, 10, 0.02)
    await feed.check(now_ms())
    assert feed.lag_ms(now_ms()) == 0

    # The consumers stop delivering (as one the server lost, or whose re-creation
    # failed), while appends still succeed.
    for sub in feed._subs:
        await sub.unsubscribe()
    later = {A: [await append(A, n) for n in range(1, 4)], B: [await append(B, 1)]}
    t0 = now_ms()
    await feed.check(t0)
    assert feed.lag_ms(t0) == 0  # behind from now on
    await feed.check(t0 + 1_000)  # not advancing: still counted from t0
    assert feed.lag_ms(t0 + 2_500) == 2_500
    assert [feed.known(A), feed.known(B)] == first  # nothing handed meanwhile
    assert await feed.restart(5_000, t0 + 2_500) == []  # not behind that long yet
    restarted = await feed.restart(2_000, t0 + 2_500)
    assert restarted and set(restarted) <= set(store.layout.streams)
    assert await feed.restart(2_000, t0 + 3_000) == []  # once per 2 s at most
    await wait_until_async(
        lambda: [feed.known(A), feed.known(B)] == [later[A][-1], later[B][-1]], 10, 0.02
    )
    for pin, before in zip((A, B), first, strict=True):
        # In order, each once, none skipped (each with its message: the device
        # records are at hand, so no "read the store" instead).
        assert [m and m.cursor for m in handed[pin]] == [before, *later[pin]], handed
    await feed.check(now_ms())
    assert feed.lag_ms(now_ms()) == 0
    assert feed.restarts == len(restarted)
